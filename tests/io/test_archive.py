"""The event archive and the user reference file on the moto server: streaming reads, ETag-driven reloads."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import threading
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from config.errors import ConfigError, KeyFailedError
from tasks.io.archive import (
    ArchiveFile,
    ArchiveScan,
    FileReport,
    StoreSource,
    UserDirectory,
    archive_files,
    archive_files_of,
    event_reader,
    hour_prefix,
    quarantine,
    read_archive_file,
    read_events,
)
from tasks.io.objectstore import S3ObjectStore
from tasks.transforms.trends import COUNT_INPUT_SCHEMA, EVENT_SCHEMA, count_events, count_stream, merge_counts

H10 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)


@pytest.fixture()
def store(aws_endpoint: str, names: dict[str, str]) -> S3ObjectStore:
    s = S3ObjectStore(names["bucket"], "us-east-1", aws_endpoint)
    s.ensure_bucket()
    return s


def jsonl_gz(rows: list[dict[str, Any]]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


def event(i: int, minute: int, action: str = "impression") -> dict[str, Any]:
    ts = (H10 + dt.timedelta(minutes=minute, seconds=i % 60)).isoformat()
    return {
        "event_id": f"e{i}",
        "ts": ts,
        "article_id": f"a{i % 3}",
        "user_id": f"u{i % 4}",
        "action": action,
        "extra": "ignored",
    }


def test_hourly_files_stream_in_batches_and_count(store: S3ObjectStore) -> None:
    rows = [event(i, i % 50, "click" if i % 7 == 0 else "impression") for i in range(3000)]
    store.put_bytes(jsonl_gz(rows[:2000]), hour_prefix("events", H10) + "part-0.jsonl.gz")
    buf = io.BytesIO()
    table = pa.Table.from_pylist(
        [{**r, "ts": dt.datetime.fromisoformat(r["ts"])} for r in rows[2000:]], schema=EVENT_SCHEMA
    )
    pq.write_table(table, buf)
    store.put_bytes(buf.getvalue(), hour_prefix("events", H10 + dt.timedelta(hours=1)) + "part-0.parquet")
    store.put_bytes(b"not an event file", hour_prefix("events", H10) + "README.txt")

    keys = archive_files(store, "events", H10 + dt.timedelta(minutes=30), H10 + dt.timedelta(hours=1, minutes=5))
    assert keys == ["events/dt=2026-11-27/hour=10/part-0.jsonl.gz", "events/dt=2026-11-27/hour=11/part-0.parquet"]
    batches = [b for k in keys for b in read_events(store, k, block_size=16_384)]
    assert len(batches) > 2 and sum(b.num_rows for b in batches) == 3000
    users = pa.table({"user_id": ["u0", "u1"], "gender": ["f", "m"], "segment_id": ["s1", "s1"]})
    counts = count_events(pa.concat_tables(batches), users).counts
    assert sum(counts["impressions"].to_pylist()) + sum(counts["clicks"].to_pylist()) == 3000


def test_a_corrupt_file_fails_with_its_name(store: S3ObjectStore) -> None:
    key = hour_prefix("events", H10) + "bad.jsonl.gz"
    store.put_bytes(jsonl_gz([event(1, 1)])[:-8], key)  # truncated gzip
    with pytest.raises(KeyFailedError, match=f"event file s3://{store.bucket}/{key}: "):
        list(read_events(store, key))
    # Among good files read in parallel, the stream fails with the bad file's own error, and its threads stop.
    good = hour_prefix("events", H10) + "good.jsonl.gz"
    store.put_bytes(jsonl_gz([event(i, 1) for i in range(5000)]), good)
    openers = [lambda k=k: read_events(store, k, block_size=4096, schema=COUNT_INPUT_SCHEMA) for k in (good, key, good)]
    users = pa.table({"user_id": ["u0"], "gender": ["f"], "segment_id": ["s1"]})
    with pytest.raises(KeyFailedError, match="bad.jsonl.gz"):
        count_stream(event_reader(openers, parallel=2, queue_batches=2), users)
    assert not [t for t in threading.enumerate() if t.name.startswith("keyflow-events")]


def test_parallel_stream_counts_every_event_once(store: S3ObjectStore) -> None:
    keys = []
    for n in range(4):
        key = hour_prefix("events", H10) + f"p{n}.jsonl.gz"
        store.put_bytes(
            jsonl_gz([event(n * 1000 + i, i % 30, "click" if i % 4 else "impression") for i in range(1000)]), key
        )
        keys.append(key)
    users = pa.table({"user_id": ["u0", "u1"], "gender": ["f", "m"], "segment_id": ["s1", "s1"]})
    openers = [lambda k=k: read_events(store, k, block_size=8192, schema=COUNT_INPUT_SCHEMA) for k in keys]
    counts, events = count_stream(event_reader(openers, parallel=3, queue_batches=2), users, ordered=True)
    assert events == 4000 and counts.counted_events == 4000
    one_by_one = [count_events(pa.concat_tables(list(read_events(store, k))), users).counts for k in keys]
    assert merge_counts(one_by_one).equals(counts.counts)


def test_user_file_is_reread_only_when_its_etag_changes(store: S3ObjectStore) -> None:
    store.put_bytes(b"user_id,gender,segment_id\nu1,f,s1\nu2,,s2\n", "ref/users.csv")
    users = UserDirectory(store, "ref/users.csv")
    first = users.table()
    assert first.to_pylist()[1] == {"user_id": "u2", "gender": None, "segment_id": "s2"}
    users.table()
    assert users.reads == 1
    store.put_bytes(b"user_id,gender,segment_id\nu1,m,s9\n", "ref/users.csv")
    assert users.table().to_pylist() == [{"user_id": "u1", "gender": "m", "segment_id": "s9"}]
    assert users.reads == 2


def test_a_missing_user_file_is_one_line_naming_the_field_bucket_and_key(store: S3ObjectStore) -> None:
    users = UserDirectory(store, "ref/nobody.csv", "config/trends/trending.yaml: users_key")
    with pytest.raises(ConfigError) as caught:
        users.table()
    assert caught.value.problems == [
        f"config/trends/trending.yaml: users_key: s3://{store.bucket}/ref/nobody.csv does not exist; upload the users "
        "file (CSV: user_id,gender,segment_id) before the first run"
    ]


def test_line_numbers_run_across_chunks_and_count_blank_lines(store: S3ObjectStore) -> None:
    lines = [json.dumps(event(i, 1)).encode() for i in range(300)]
    lines[5] = b""
    lines[150] = b'{"event_id": "e150", "ts": '
    lines[299] = json.dumps({**event(299, 1), "action": "swipe"}).encode()
    key = hour_prefix("events", H10) + "part-0.jsonl.gz"
    store.put_bytes(gzip.compress(b"\n".join(lines) + b"\n"), key)
    file = ArchiveFile(key, 0, None, H10)
    report = FileReport(file)
    events = sum(t.num_rows for t in read_archive_file(StoreSource(store), file, report, chunk_bytes=1000))
    assert (events, report.lines, report.events) == (297, 300, 297)
    assert [(r.line, r.reason) for r in report.rejected] == [
        (151, "not JSON: Expecting value: line 1 column 28 (char 27)"),
        (300, "unknown action 'swipe' (known: click, impression)"),
    ]


def test_a_scan_counts_each_id_once_per_hour_and_sets_bad_files_aside(store: S3ObjectStore) -> None:
    a = [event(i, i % 50) for i in range(2000)]
    b = [event(i, i % 50) for i in range(1500, 2500)]  # 500 ids again, in another file read at the same time
    store.put_bytes(jsonl_gz(a), hour_prefix("events", H10) + "a.jsonl.gz")
    store.put_bytes(jsonl_gz(b + b[:10]), hour_prefix("events", H10) + "b.jsonl.gz")
    store.put_bytes(b"PAR1 but not really", hour_prefix("events", H10) + "c.parquet")
    # The same ids in the next hour's partition are other events: dedup is per hour partition.
    store.put_bytes(jsonl_gz(a[:100]), hour_prefix("events", H10 + dt.timedelta(hours=1)) + "a.jsonl.gz")
    files = archive_files_of(store, "events", H10, H10 + dt.timedelta(hours=2))
    scan = ArchiveScan(StoreSource(store), files, parallel=2, chunk_bytes=20_000)
    users = pa.table({"user_id": ["u0"], "gender": ["f"], "segment_id": ["s1"]})
    counts, events = count_stream(scan.reader(), users, names=scan.names)
    # No received_at: the upload time (now) stands in, long after these windows closed.
    assert (events, counts.late_events, scan.duplicates) == (2600, 2600, 510)
    assert scan.duplicates_by_hour() == {H10: 510, H10 + dt.timedelta(hours=1): 0}
    bad = scan.reports[hour_prefix("events", H10) + "c.parquet"]
    assert bad.quarantined is not None and bad.quarantined.startswith("not a Parquet file: ")
    assert quarantine(store, "quarantine", bad.file, bad.quarantined) == "quarantine/dt=2026-11-27/hour=10/c.parquet"
    assert store.get_bytes("quarantine/dt=2026-11-27/hour=10/c.parquet.reason.txt").decode() == (
        f"s3://{store.bucket}/events/dt=2026-11-27/hour=10/c.parquet: {bad.quarantined}\n"
    )


def test_foreign_parquet_is_read_by_ranges_and_checked_row_by_row(store: S3ObjectStore) -> None:
    rows = [{**event(i, 1), "ts": H10 + dt.timedelta(minutes=1), "user_id": i} for i in range(50_000)]
    rows[7]["action"] = "swipe"
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=20_000)
    key = hour_prefix("events", H10) + "x.parquet"
    store.put_bytes(buf.getvalue(), key)
    file = archive_files_of(store, "events", H10, H10 + dt.timedelta(hours=1))[0]
    report = FileReport(file)
    tables = list(read_archive_file(StoreSource(store), file, report))
    assert sum(t.num_rows for t in tables) == 49_999 and report.lines == 50_000
    assert tables[0]["user_id"][0].as_py() == "0"  # an integer id, as ingestion accepts it
    assert [(r.line, r.reason) for r in report.rejected] == [(8, "unknown action 'swipe' (known: click, impression)")]
