"""`make bench-ingest`: events from RabbitMQ into DynamoDB and the S3 archive (moto server), beside the ceiling.

In one sitting, against the same moto server (its own process) and the local RabbitMQ:
  1. keyflow: publish N events (0.5 % poison, 0.5 % of unknown articles) to a fresh queue, then drain it with the
     ingestion's own code (parse, check against the cached article table, dedupe, write, archive, ack);
  2. the ceiling: a bare boto3 BatchWriteItem loop writing N items into a fresh table.
Then reads the sinks back to count lost and doubled events. Prints a table and one JSON line. Figures only.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import gzip
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def publish(queue: str, n: int) -> tuple[set[str], int, int]:
    """Publish n events; returns (ids expected to be stored, poison count, invalid count)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    ch = conn.channel()
    ch.queue_declare(queue=queue, durable=True)
    ch.queue_declare(queue=queue + "-dead", durable=True)
    t0 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    expected: set[str] = set()
    poison = invalid = 0
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(n):
        if i % 200 == 7:
            body = b'{"article_id": "a1", "user_id": '  # truncated JSON
            poison += 1
        else:
            article = "gone" if i % 200 == 13 else f"a{i % 500}"
            invalid += article == "gone"
            ts = (t0 + dt.timedelta(milliseconds=36 * i)).isoformat()
            body = json.dumps(
                {
                    "event_id": f"e{i}",
                    "ts": ts,
                    "article_id": article,
                    "user_id": f"u{i % 9973}",
                    "action": "impression",
                }
            ).encode()
            if article != "gone":
                expected.add(f"e{i}")
        ch.basic_publish("", queue, body, props)
    conn.close()
    return expected, poison, invalid


def ceiling(endpoint: str, n: int) -> float:
    """Seconds for a bare BatchWriteItem loop of n items (the same item shape) into a fresh table."""
    from tasks.io.aws import client, ensure_dynamodb_table

    ddb = client("dynamodb", "us-east-1", endpoint)
    table = f"bench_ceiling_{uuid.uuid4().hex[:8]}"
    ensure_dynamodb_table(ddb, table, [("event_id", "HASH")])
    items = [
        {
            "event_id": {"S": f"c{i}"},
            "ts": {"S": "2026-11-27T10:00:00+00:00"},
            "article_id": {"S": f"a{i % 500}"},
            "user_id": {"S": f"u{i % 9973}"},
            "action": {"S": "impression"},
            "received_at": {"S": "2026-11-27T10:00:01+00:00"},
            "archive_key": {"S": "events/archive/x.jsonl.gz"},
        }
        for i in range(n)
    ]
    started = time.perf_counter()
    for i in range(0, n, 25):
        pending: dict[str, Any] = {table: [{"PutRequest": {"Item": it}} for it in items[i : i + 25]]}
        while pending:
            pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()

    from harness import moto_server

    from config.loader import load_events, load_profile
    from tasks.ingest import drain, sinks_for
    from tasks.resources import event_source_for, object_store_for

    with moto_server(sys.executable) as endpoint, tempfile.TemporaryDirectory() as tmp:
        run = uuid.uuid4().hex[:8]
        queue = f"bench-events-{run}"
        folder = Path(tmp)
        (folder / "profiles").mkdir()
        (folder / "events").mkdir()
        (folder / "profiles" / "bench.yaml").write_text(
            "name: bench\nsource_url: sqlite:///unused.db\nwarehouse_url: unused.duckdb\n"
            f"aws_endpoint_url: {endpoint}\nbucket: bench-events-{run}\n"
        )
        (folder / "events" / "bench.yaml").write_text(
            "name: bench_events\n"
            f"source: {{kind: rabbitmq, queue: {queue}, dead_letter_queue: {queue}-dead, prefetch: 2000}}\n"
            f"reference: {{table: bench_articles_{run}}}\nevents_table: bench_events_{run}\n"
            "batch_size: 500\nidle_seconds: 2\n"
        )
        profile = load_profile(folder / "profiles" / "bench.yaml", environ={})
        job = load_events(folder / "events" / "bench.yaml")
        store = object_store_for(profile)
        store.ensure_bucket()
        sinks = sinks_for(job, profile)
        sinks.articles.put({f"a{i}": True for i in range(500)})

        t = time.perf_counter()
        expected, poison, invalid = publish(queue, args.events)
        print(f"published {args.events:,} events in {time.perf_counter() - t:.1f} s", flush=True)

        source = event_source_for(profile, job)
        started = time.perf_counter()
        try:
            summary = drain(job, sinks, source, args.events + 10, 3600)
        finally:
            source.close()
        seconds = time.perf_counter() - started - job.idle_seconds  # the final quiet wait is not work
        print(f"keyflow drained {summary.received:,} in {seconds:.2f} s", flush=True)

        stored_ids = sinks.table.scan_ids()
        archive: collections.Counter[str] = collections.Counter()
        for key in store.list_keys(job.archive_prefix + "/"):
            for line in gzip.decompress(store.get_bytes(key)).splitlines():
                archive[json.loads(line)["event_id"]] += 1
        lost = len(expected - set(stored_ids)) + len(expected - set(archive))
        duplicated = sum(c - 1 for c in archive.values() if c > 1) + (len(stored_ids) - len(set(stored_ids)))

        # The same server, emptied: moto slows down as it holds more, so each side starts from nothing.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=60)
        ceiling_s = ceiling(endpoint, args.events)
        print(f"ceiling: {args.events:,} items in {ceiling_s:.2f} s", flush=True)

    rate = summary.received / seconds
    ceiling_rate = args.events / ceiling_s
    print()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, moto server in its own process")
    print(f"{'':10} {'events':>9} {'seconds':>8} {'events/s':>9}")
    print(f"{'keyflow':10} {summary.received:>9,} {seconds:>8.2f} {rate:>9,.0f}")
    print(f"{'ceiling':10} {args.events:>9,} {ceiling_s:>8.2f} {ceiling_rate:>9,.0f}")
    print(
        f"stored {summary.stored:,}, rejected {summary.rejected:,} (published {invalid:,} invalid), "
        f"dead-lettered {summary.dead_lettered:,} (published {poison:,} poison), lost {lost}, duplicated {duplicated}"
    )
    print(
        json.dumps(
            {
                "events": summary.received,
                "events_per_s": round(rate),
                "ceiling_per_s": round(ceiling_rate),
                "ratio": round(rate / ceiling_rate, 3),
                "stored": summary.stored,
                "rejected": summary.rejected + summary.dead_lettered,
                "lost": lost,
                "duplicated": duplicated,
            }
        )
    )


if __name__ == "__main__":
    main()
