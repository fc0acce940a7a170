"""Event ingestion against the real RabbitMQ and the moto server: exactly once through crashes and throttling,
poison messages dead-lettered with their reason, invalid events archived with theirs."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import gzip
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pika
import pytest
from botocore.exceptions import ClientError

from flows.ingest_events import ingest_events
from tasks.ingest import drain, sinks_for
from tasks.resources import event_source_for, object_store_for
from tests.helpers.config_files import write_yaml
from tests.helpers.events import archived, crash_drain, event, ingestion
from tests.helpers.services import require_service


@pytest.fixture()
def amqp() -> Any:
    require_service(5672, "RabbitMQ")
    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    yield conn.channel()
    with contextlib.suppress(pika.exceptions.AMQPError):  # a broker restart in a test closes it
        conn.close()


@pytest.fixture()
def setup(amqp: Any, tmp_path: Path, names: dict[str, str], make_profile: Any) -> Any:
    queue = names["keys_table"] + "_q"
    source = {"kind": "rabbitmq", "queue": queue, "dead_letter_queue": queue + "_dead", "prefetch": 200}
    job_path, profile_path, job, profile, sinks = ingestion(tmp_path, names, make_profile(), source, batch_size=50)
    sinks.articles.put({"a1": True, "a2": True, "old": False})
    for q in (queue, queue + "_dead"):
        amqp.queue_declare(queue=q, durable=True)
    yield job_path, profile_path, job, profile, sinks
    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    ch = conn.channel()
    for q in (queue, queue + "_dead"):
        ch.queue_delete(queue=q)
    conn.close()


def publish(ch: Any, queue: str, bodies: list[bytes], message_ids: list[str | None] | None = None) -> None:
    for i, body in enumerate(bodies):
        mid = message_ids[i] if message_ids else None
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, message_id=mid))


def queue_depth(ch: Any, queue: str) -> int:
    return int(ch.queue_declare(queue=queue, durable=True, passive=True).method.message_count)


def wait_for_depth(ch: Any, queue: str, expected: int, seconds: float = 10) -> int:
    """The queue's ready messages once the broker has requeued a dead consumer's (it does so asynchronously)."""
    deadline = time.monotonic() + seconds
    depth = queue_depth(ch, queue)
    while depth != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        depth = queue_depth(ch, queue)
    return depth


@pytest.mark.usefixtures("prefect_harness")
def test_events_stored_once_poison_dead_lettered_invalid_rejected(amqp: Any, setup: Any) -> None:
    job_path, profile_path, job, profile, sinks = setup
    good = [event(i) for i in range(120)]
    three_field = [json.dumps({"article_id": "a2", "user_id": "u1", "action": "click"}).encode()]
    poison = [b"not json", b'{"article_id": "a1"}', b'{"article_id": ["x"], "user_id": "u", "action": "click"}', b"[1]"]
    invalid = [event(500, "nope"), event(501, "old")]
    bodies = good + [good[3]] + three_field + poison + invalid  # good[3] again: a producer's retry
    publish(amqp, job.source.queue, bodies, [None] * len(good) + [None, "m-three"] + [None] * 6)

    state = ingest_events(job=job_path, profile=profile_path, max_seconds=60, return_state=True)
    assert state.is_completed(), state.message
    row = state.result()
    assert row["received"] == len(bodies)
    assert (row["stored"], row["duplicates"], row["dead_lettered"], row["rejected"]) == (121, 1, 4, 2)
    assert row["received"] == row["stored"] + row["duplicates"] + row["dead_lettered"] + row["rejected"]

    ids = archived(profile, job)
    assert set(ids.values()) == {1} and len(ids) == 121
    assert sorted(sinks.table.scan_ids()) == sorted(ids)
    assert queue_depth(amqp, job.source.queue) == 0

    reasons = []
    for _ in range(4):
        method, props, body = amqp.basic_get(job.source.dead_letter_queue, auto_ack=True)
        reasons.append((body, props.headers["x-keyflow-reason"]))
    assert reasons[0][0] == b"not json" and reasons[0][1].startswith("not JSON: ")
    assert reasons[1][1] == "missing field(s): user_id, action"
    assert reasons[2][1] == "'article_id' must be a string, got list"
    assert reasons[3][1] == "not a JSON object: list"

    store = object_store_for(profile)
    rejected = [
        json.loads(line)
        for key in store.list_keys(job.rejected_prefix + "/")
        for line in gzip.decompress(store.get_bytes(key)).splitlines()
    ]
    assert sorted(r["reason"] for r in rejected) == ["article 'old' is not live", "unknown article 'nope'"]

    # The three-field form gets an id from its broker message id, so a redelivery keeps it.
    derived = [i for i in ids if i.startswith("kf-")]
    assert len(derived) == 1


@pytest.mark.parametrize("point", ["before_ack", "before_archive"])
def test_a_crash_before_the_ack_stores_every_event_exactly_once(amqp: Any, setup: Any, point: str) -> None:
    job_path, profile_path, job, profile, sinks = setup
    bodies = [event(i) for i in range(230)]
    publish(amqp, job.source.queue, bodies)
    crash_drain(job_path, profile_path, point)
    # The broker requeues a dead consumer's unacknowledged messages: all of them, or all but the first batch
    # (before_archive dies on the second batch's archive file, after the first batch was acknowledged).
    expected = 230 if point == "before_ack" else 180
    assert wait_for_depth(amqp, job.source.queue, expected) == expected
    assert sinks.table.scan_ids()  # ... though some of it was already stored

    source = event_source_for(profile, job)
    try:
        summary = drain(job, sinks_for(job, profile), source, 10_000, 60)
    finally:
        source.close()
    assert summary.received == expected and summary.stored + summary.duplicates == expected
    if point == "before_ack":
        assert summary.duplicates > 0  # the crashed batch was stored before the crash: skipped, not doubled
    ids = archived(profile, job)
    assert len(ids) == 230 and set(ids.values()) == {1}  # none lost, none doubled
    assert sorted(sinks.table.scan_ids()) == sorted(ids)
    assert queue_depth(amqp, job.source.queue) == 0


def test_throttling_and_unprocessed_items_lose_and_double_nothing(amqp: Any, setup: Any) -> None:
    job_path, profile_path, job, profile, sinks = setup
    publish(amqp, job.source.queue, [event(i) for i in range(140)])
    ddb = sinks.table._ddb
    real = ddb.batch_write_item
    calls = collections.Counter[str]()

    def flaky(RequestItems: dict[str, Any]) -> dict[str, Any]:
        # moto never throttles: refuse every third call outright, and hold back half of the others' items.
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "BatchWriteItem"
            )
        ((table, reqs),) = RequestItems.items()
        if len(reqs) > 1:
            real(RequestItems={table: reqs[: len(reqs) // 2]})
            calls["unprocessed"] += 1
            return {"UnprocessedItems": {table: reqs[len(reqs) // 2 :]}}
        return real(RequestItems=RequestItems)

    sinks.table._ddb = type(
        "Ddb", (), {"batch_write_item": staticmethod(flaky), "batch_get_item": ddb.batch_get_item}
    )()
    source = event_source_for(profile, job)
    try:
        summary = drain(job, sinks, source, 10_000, 60)
    finally:
        source.close()
    assert calls["unprocessed"] > 0 and calls["n"] >= 9
    assert (summary.received, summary.stored) == (140, 140)
    sinks.table._ddb = ddb
    ids = archived(profile, job)
    assert len(ids) == 140 and set(ids.values()) == {1}
    assert sorted(sinks.table.scan_ids()) == sorted(ids)


@pytest.mark.usefixtures("prefect_harness")
def test_drain_command_and_the_kill_switch(amqp: Any, setup: Any) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    job_path, profile_path, job, profile, sinks = setup
    runner = CliRunner()
    publish(amqp, job.source.queue, [event(i) for i in range(30)])
    assert runner.invoke(app, ["pause", "ingest"]).exit_code == 0
    try:
        paused = runner.invoke(app, ["events", "drain", "-j", job_path, "-p", profile_path, "--max-seconds", "5"])
        assert paused.exit_code == 3 and "paused" in paused.output
        assert queue_depth(amqp, job.source.queue) == 30
    finally:
        runner.invoke(app, ["resume", "ingest"])
    done = runner.invoke(app, ["events", "drain", "-j", job_path, "-p", profile_path, "--max-seconds", "5"])
    assert done.exit_code == 0, done.output
    assert "30 received: 30 stored, 0 duplicate(s), 0 rejected, 0 dead-lettered" in done.output
    assert len(archived(profile, job)) == 30


def test_a_broker_restart_mid_drain_loses_and_doubles_nothing(amqp: Any, setup: Any) -> None:
    from config.errors import RetryableError

    job_path, profile_path, job, profile, sinks = setup
    publish(amqp, job.source.queue, [event(i) for i in range(400)])
    real = sinks.store_batch
    calls = []

    def store_then_restart(messages: list, source: Any) -> Any:
        out = real(messages, source)
        calls.append(len(messages))
        if len(calls) == 3:  # the third batch is stored; the broker restarts before its ack
            for step in ("stop_app", "start_app"):
                subprocess.run(["rabbitmqctl", step], check=True, capture_output=True, timeout=120)
        return out

    sinks.store_batch = store_then_restart  # type: ignore[method-assign]
    source = event_source_for(profile, job)
    with pytest.raises(RetryableError, match="acknowledge on|read from broker"):
        drain(job, sinks, source, 10_000, 60)
    source.close()
    sinks.store_batch = real  # type: ignore[method-assign]
    assert len(calls) == 3

    # What the task's retry does: a new connection; the broker redelivers the unacknowledged batch.
    require_service(5672, "RabbitMQ")
    deadline = time.monotonic() + 60
    while True:
        try:
            source = event_source_for(profile, job)
            break
        except RetryableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        summary = drain(job, sinks, source, 10_000, 60)
    finally:
        source.close()
    assert summary.received == 400 - 100 and summary.duplicates == 50
    ids = archived(profile, job)
    assert len(ids) == 400 and set(ids.values()) == {1}
    assert sorted(sinks.table.scan_ids()) == sorted(ids)


@pytest.mark.usefixtures("prefect_harness")
def test_the_archive_feeds_trend_scoring(amqp: Any, pg: Any, setup: Any, tmp_path: Path, names: dict[str, str]) -> None:
    from flows.trend_scoring import trend_scoring
    from tasks.resources import trend_counts_for

    job_path, profile_path, job, profile, sinks = setup
    now = dt.datetime.now(dt.UTC)
    fresh = [
        json.dumps(
            {
                "event_id": f"f{i}",
                "ts": (now - dt.timedelta(seconds=i)).isoformat(),
                "article_id": "a1" if i % 2 else "a2",
                "user_id": f"u{i % 3}",
                "action": "click" if i % 10 == 0 else "impression",
            }
        ).encode()
        for i in range(90)
    ]
    publish(amqp, job.source.queue, fresh)
    source = event_source_for(profile, job)
    try:
        assert drain(job, sinks, source, 10_000, 60).stored == 90
    finally:
        source.close()
    object_store_for(profile).put_bytes(b"user_id,gender,segment_id\nu1,f,s1\nu2,m,s1\n", "reference/users.csv")
    trends_path = write_yaml(
        tmp_path / "trends" / "t.yaml",
        {
            "name": "pytest_from_archive",
            "archive_prefix": job.archive_prefix,
            "counts_schema": names["wh_schema"],
            "serving_table": names["keys_table"] + "_top",
        },
    )
    from config.loader import load_trends

    end = now + dt.timedelta(minutes=2)  # every window of these events has ended by then
    state = trend_scoring(job=str(trends_path), profile=profile_path, end=end, return_state=True)
    assert state.is_completed(), state.message
    data = state.result()
    # Received as they were sent (arrival = the drain's clock), so none is late: all 90 counted from the archive.
    assert (data["events"], data["counted"], data["late"]) == (90, 90, 0)
    counts = trend_counts_for(profile, load_trends(trends_path)).since(now - dt.timedelta(minutes=5), end)
    assert sum(counts["clicks"].to_pylist()) == 9 and sum(counts["impressions"].to_pylist()) == 81
    assert {(r["gender"], r["segment_id"]) for r in counts.to_pylist()} == {("f", "s1"), ("m", "s1"), (None, None)}
    with pg.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_after_compaction_pointers_hold_and_a_redelivered_event_is_not_archived_again(amqp: Any, setup: Any) -> None:
    from tasks.io.archive import FileReport as Report
    from tasks.io.archive import StoreSource, archived_file_exists, list_hour, read_archive_file
    from tasks.io.compaction import ArchivePlaces, compact_hour

    job_path, profile_path, job, profile, sinks = setup
    bodies = [event(i) for i in range(300)]  # 09:58 to 10:03: two hour partitions, many small files
    publish(amqp, job.source.queue, bodies)
    source = event_source_for(profile, job)
    try:
        assert drain(job, sinks, source, 10_000, 60).stored == 300
    finally:
        source.close()
    store = object_store_for(profile)
    places = ArchivePlaces(job.archive_prefix, job.rejected_prefix, "events/quarantine")
    hours = [dt.datetime(2026, 11, 27, h, tzinfo=dt.UTC) for h in (9, 10)]
    small = {h: len(list_hour(store, job.archive_prefix, h).files) for h in hours}
    assert all(n > 1 for n in small.values())
    for hour in hours:
        assert compact_hour(store, places, hour).files_out

    # Every stored event's pointer still leads to a file that exists and holds it.
    holders: dict[str, set[str]] = collections.defaultdict(set)
    for hour in hours:
        for f in list_hour(store, job.archive_prefix, hour).files:
            assert f.compacted
            for table in read_archive_file(StoreSource(store), f, Report(f)):
                for event_id in table["event_id"].to_pylist():
                    holders[event_id].add(f.name)
    assert len(holders) == 300 and all(len(names) == 1 for names in holders.values())
    items = sinks.table._ddb.scan(TableName=sinks.table.table)["Items"]
    assert len(items) == 300
    for item in items:
        key = item["archive_key"]["S"]
        assert not store.exists(key) and archived_file_exists(store, job.archive_prefix, key)
        hour = dt.datetime.fromisoformat(item["ts"]["S"]).replace(minute=0, second=0, microsecond=0)
        manifest = list_hour(store, job.archive_prefix, hour).manifest
        assert manifest is not None and holders[item["event_id"]["S"]] == {manifest.replaced[key.rsplit("/", 1)[1]]}

    # A redelivery of a stored event (a fresh drain process, no cache) is a duplicate, not a new archive file.
    before = sorted(store.list_keys(job.archive_prefix + "/"))
    publish(amqp, job.source.queue, [bodies[42]])
    fresh_sinks = sinks_for(job, profile)
    source = event_source_for(profile, job)
    try:
        again = drain(job, fresh_sinks, source, 10_000, 60)
    finally:
        source.close()
    assert (again.received, again.stored, again.duplicates, again.files) == (1, 0, 1, [])
    assert sorted(store.list_keys(job.archive_prefix + "/")) == before
