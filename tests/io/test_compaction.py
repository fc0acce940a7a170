"""Compaction of an archive hour on the moto server: Parquet files of at least the target (or the whole hour), each
event once, crash-safe at every step, and every small file's events still found through the manifest."""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import io
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.io.archive import (
    COMPACTED,
    MANIFEST,
    FileReport,
    StoreSource,
    archived_file_exists,
    hour_prefix,
    list_hour,
    read_archive_file,
    read_manifest,
)
from tasks.io.compaction import ArchivePlaces, compact_hour
from tasks.io.objectstore import S3ObjectStore
from tasks.transforms.hashing import HASH_VERSION
from tasks.transforms.trends import EVENT_SCHEMA

H10 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
PLACES = ArchivePlaces("events/archive", "events/rejected", "events/quarantine")


@pytest.fixture()
def store(aws_endpoint: str, names: dict[str, str]) -> S3ObjectStore:
    s = S3ObjectStore(names["bucket"], "us-east-1", aws_endpoint)
    s.ensure_bucket()
    return s


def row(i: int, **extra: Any) -> dict[str, Any]:
    ts = H10 + dt.timedelta(seconds=i * 7 % 3600)
    return {
        "event_id": f"e{i}",
        "ts": ts.isoformat(),
        "article_id": f"a{i % 5}",
        "user_id": f"u{i % 11}",
        "action": "click" if i % 6 == 0 else "impression",
        "received_at": (ts + dt.timedelta(seconds=3)).isoformat(),
        **extra,
    }


def put_jsonl(store: S3ObjectStore, name: str, lines: list[bytes]) -> str:
    key = hour_prefix(PLACES.archive, H10) + name
    store.put_bytes(gzip.compress(b"\n".join(lines) + b"\n"), key)
    return key


def dump(r: dict[str, Any]) -> bytes:
    return json.dumps(r).encode()


def seed_hour(store: S3ObjectStore) -> tuple[set[str], list[str]]:
    """Eight small files: 400 events, 20 duplicate lines (within and across files), 6 bad lines, numeric ids, and one
    file that is not gzip. Returns the unique event ids and the small files' keys."""
    keys, ids = [], set()
    for f in range(8):
        rows = [row(i) for i in range(f * 50, f * 50 + 50)]
        ids |= {r["event_id"] for r in rows}
        lines = [dump(r) for r in rows]
        lines += [dump(row(i)) for i in range(max(f - 1, 0) * 50, max(f - 1, 0) * 50 + 2)]  # copies of earlier lines
        lines.insert(10, b'{"event_id": "broken",')
        if f == 3:
            lines.append(dump(row(1000, article_id=17, user_id=4)))  # numeric ids: an event like any other
            ids.add("e1000")
        keys.append(put_jsonl(store, f"part-{f:03d}.jsonl.gz", lines))
    store.put_bytes(b"user_id,article_id\nu1,a1\n", hour_prefix(PLACES.archive, H10) + "stray.jsonl.gz")
    return ids, keys


def live_ids(store: S3ObjectStore) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Event ids in the hour's live compacted files, and in its live small files (every copy, no filtering)."""
    compacted: collections.Counter[str] = collections.Counter()
    small: collections.Counter[str] = collections.Counter()
    for f in list_hour(store, PLACES.archive, H10).files:
        for table in read_archive_file(StoreSource(store), f, FileReport(f)):
            (compacted if f.compacted else small).update(table["event_id"].to_pylist())
    return compacted, small


def assert_every_event_once(store: S3ObjectStore, ids: set[str]) -> None:
    compacted, small = live_ids(store)
    assert all(n == 1 for n in compacted.values()), "a compacted file holds an event twice"
    assert not set(compacted) & set(small), "an event is live in a compacted file and in a small file"
    assert set(compacted) | set(small) == ids


def test_an_hour_becomes_parquet_each_event_once_and_a_second_run_only_tidies(store: S3ObjectStore) -> None:
    ids, keys = seed_hour(store)
    result = compact_hour(store, PLACES, H10)
    assert (result.files_in, len(result.files_out), result.events) == (9, 1, 401)
    assert (result.duplicates, result.invalid, result.quarantined) == (16, 8, 1)
    compacted, small = live_ids(store)
    assert set(compacted) == ids and all(n == 1 for n in compacted.values()) and not small
    listing = list_hour(store, PLACES.archive, H10)
    assert [f.name for f in listing.files] == result.files_out and listing.files[0].name.startswith(COMPACTED)
    assert not listing.leftovers and sorted(store.list_keys(hour_prefix(PLACES.archive, H10))) == sorted(
        [hour_prefix(PLACES.archive, H10) + result.files_out[0], hour_prefix(PLACES.archive, H10) + MANIFEST]
    )
    manifest = read_manifest(store, PLACES.archive, H10)
    assert manifest is not None and manifest.generation == 1 and manifest.events == 401
    assert set(manifest.replaced) == {k.rsplit("/", 1)[1] for k in keys}
    assert manifest.quarantined == {"stray.jsonl.gz": "not gzip JSON lines: Not a gzipped file (b'us')"}
    # The bad lines and the unreadable file were set aside before the small files went.
    rejected = gzip.decompress(
        store.get_bytes("events/rejected/dt=2026-11-27/hour=10/part-000.jsonl.gz.rejected.jsonl.gz")
    )
    assert json.loads(rejected.splitlines()[0]) == {
        "file": f"s3://{store.bucket}/{keys[0]}",
        "line": 11,
        "reason": "not JSON: Expecting property name enclosed in double quotes: line 1 column 23 (char 22)",
        "text": '{"event_id": "broken",',
    }
    assert store.get_bytes("events/quarantine/dt=2026-11-27/hour=10/stray.jsonl.gz") == b"user_id,article_id\nu1,a1\n"
    # Parquet typed as events, received_at kept; every pointer to a small file still finds its events.
    table = pq.read_table(io.BytesIO(store.get_bytes(listing.files[0].key)))
    assert table.schema.remove_metadata() == EVENT_SCHEMA.append(pa.field("user_key", pa.uint64()))
    assert table.schema.metadata == {b"keyflow.user_key": HASH_VERSION.encode()} and table.num_rows == 401
    for key in keys:
        assert archived_file_exists(store, PLACES.archive, key)
    assert not archived_file_exists(store, PLACES.archive, hour_prefix(PLACES.archive, H10) + "never-written.jsonl.gz")

    again = compact_hour(store, PLACES, H10)
    assert again.reason == "nothing new to compact" and again.files_out == [] and again.generation == 1


def test_a_late_file_after_compaction_is_merged_into_the_hour(store: S3ObjectStore) -> None:
    ids, _ = seed_hour(store)
    first = compact_hour(store, PLACES, H10)
    late = put_jsonl(store, "late.jsonl.gz", [dump(row(2000)), dump(row(5))])  # a new event and a copy of e5
    compacted, small = live_ids(store)
    assert set(small) == {"e2000", "e5"} and "e5" in compacted  # before: both live, counting drops the copy
    second = compact_hour(store, PLACES, H10)
    assert second.generation == 2 and second.files_in == 2 and second.duplicates == 1
    assert_every_event_once(store, ids | {"e2000"})
    manifest = read_manifest(store, PLACES.archive, H10)
    assert manifest is not None and manifest.files == second.files_out
    # Pointers to the first compaction's small files follow their events into the new file.
    assert set(manifest.replaced.values()) == set(second.files_out)
    assert archived_file_exists(store, PLACES.archive, late)
    assert not store.exists(hour_prefix(PLACES.archive, H10) + first.files_out[0])


def test_files_are_at_least_the_target_and_each_small_file_is_whole_in_one(store: S3ObjectStore) -> None:
    ids, keys = seed_hour(store)
    result = compact_hour(store, PLACES, H10, target_bytes=1_500, row_group_rows=20)
    sizes = {f.name: f.size for f in list_hour(store, PLACES.archive, H10).files}
    assert len(result.files_out) > 1 and all(size >= 1_500 for size in sizes.values())
    assert_every_event_once(store, ids)
    manifest = read_manifest(store, PLACES.archive, H10)
    assert manifest is not None
    for key in keys:
        name = key.rsplit("/", 1)[1]
        home = pq.read_table(io.BytesIO(store.get_bytes(hour_prefix(PLACES.archive, H10) + manifest.replaced[name])))
        source = gzip.decompress(store.get_bytes(key)) if store.exists(key) else None
        assert source is None  # the small files are gone; their events are in their home file:
        first_of_file = f"e{int(name[5:8]) * 50}"
        assert first_of_file in home["event_id"].to_pylist()


def crash_at(point: str) -> Callable[[str], None]:
    def hook(step: str) -> None:
        if step == point:
            raise RuntimeError(f"crash at {point}")

    return hook


@pytest.mark.parametrize("point", ["output", "written", "switched", "deleting"])
def test_a_crash_at_any_step_leaves_the_hour_readable_with_every_event_once(store: S3ObjectStore, point: str) -> None:
    ids, keys = seed_hour(store)
    with pytest.raises(RuntimeError, match=f"crash at {point}"):
        compact_hour(store, PLACES, H10, target_bytes=1_500, hook=crash_at(point), row_group_rows=20)
    switched = point in ("switched", "deleting")
    assert (read_manifest(store, PLACES.archive, H10) is not None) == switched
    assert_every_event_once(store, ids)
    compacted, small = live_ids(store)
    assert (not small) if switched else (not compacted)  # the old set, or the new one: never both, never neither
    for key in keys:
        assert archived_file_exists(store, PLACES.archive, key)

    done = compact_hour(store, PLACES, H10, target_bytes=1_500, row_group_rows=20)
    assert_every_event_once(store, ids)
    listing = list_hour(store, PLACES.archive, H10)
    assert not listing.leftovers and not listing.small
    assert done.deleted > 0  # what the crash left behind is gone
    for key in keys:
        assert archived_file_exists(store, PLACES.archive, key)
