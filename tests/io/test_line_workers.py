"""Gzip JSON lines read in worker processes (tasks.io.line_workers) against the moto server: the same events,
duplicates, rejected lines and quarantine as reading in threads; a worker that dies fails the read, never hangs it."""

from __future__ import annotations

import datetime as dt
import gc
import gzip
import io
import json
import threading
import uuid
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.errors import KeyFailedError, RetryableError
from tasks.io.archive import ArchiveScan, StoreSource, archive_files_of, hour_prefix
from tasks.io.line_workers import LineWorkerError, LineWorkers
from tasks.io.objectstore import S3ObjectStore
from tasks.transforms.events import jsonl
from tasks.transforms.trends import count_stream

H10 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
USERS = pa.table({"user_id": ["u0", "u1", "u2"], "gender": ["f", "m", "f"], "segment_id": ["s1", "s1", "s2"]})


@pytest.fixture()
def store(aws_endpoint: str, names: dict[str, str]) -> S3ObjectStore:
    s = S3ObjectStore(names["bucket"], "us-east-1", aws_endpoint)
    s.ensure_bucket()
    return s


def event(i: int, hour: dt.datetime = H10) -> dict[str, Any]:
    """Event ``i`` as ingestion archives it (its layout: read without a JSON parser)."""
    ts = hour + dt.timedelta(seconds=i % 3000)
    return {
        "event_id": f"e{i}",
        "ts": ts.isoformat(),
        "article_id": f"a{i % 11}",
        "user_id": f"u{i % 4}",
        "action": "click" if i % 5 == 0 else "impression",
        "received_at": (ts + dt.timedelta(seconds=2)).isoformat(),
    }


def put(store: S3ObjectStore, hour: dt.datetime, name: str, body: bytes, prefix: str = "events") -> None:
    store.put_bytes(body, hour_prefix(prefix, hour) + name)


def scan_of(store: S3ObjectStore, processes: bool, chunk_bytes: int = 4096, prefix: str = "events") -> ArchiveScan:
    files = archive_files_of(store, prefix, H10, H10 + dt.timedelta(hours=2))
    return ArchiveScan(StoreSource(store), files, parallel=2, chunk_bytes=chunk_bytes, processes=processes)


def read_all(store: S3ObjectStore, processes: bool, prefix: str = "events") -> dict[str, Any]:
    scan = scan_of(store, processes, prefix=prefix)
    counts, events = count_stream(scan.reader(), USERS, ordered=True, names=scan.names)
    return {
        "counts": counts.counts,
        "events": events,
        "late": counts.late_events,
        "duplicates": scan.duplicates_by_hour(),
        "reports": {
            k: (r.lines, r.events, [(x.line, x.reason, x.text) for x in r.rejected], r.quarantined)
            for k, r in scan.reports.items()
        },
    }


def test_processes_read_exactly_what_threads_read(store: S3ObjectStore) -> None:
    a = [event(i) for i in range(3000)]
    b = [event(i) for i in range(2500, 6000)]  # 500 ids of file a again: counted once in the hour
    lines_b = jsonl(b + b[:7]).splitlines()  # and 7 of its own again
    lines_b[100] = b'{"event_id":"x","ts":'  # malformed
    lines_b[200] = json.dumps({**b[200], "event_id": 17}).encode()  # not the layout: the general reader decides
    lines_b[300] = json.dumps({**b[300], "action": "swipe"}, separators=(",", ":")).encode()  # unknown action
    lines_b[400] = b""
    put(store, H10, "a.jsonl.gz", gzip.compress(jsonl(a)))
    put(store, H10, "b.jsonl.gz", gzip.compress(b"\n".join(lines_b) + b"\n"))
    put(store, H10, "c.jsonl.gz", gzip.compress(jsonl([event(i) for i in range(6000, 7000)]))[:-300])  # cut short
    put(store, H10, "d.jsonl.gz", b"plain text, not gzip\n")
    hour11 = H10 + dt.timedelta(hours=1)
    put(store, hour11, "a.jsonl.gz", gzip.compress(jsonl([event(i, hour11) for i in range(2000)])))  # same ids

    threads, processes = read_all(store, processes=False), read_all(store, processes=True)

    assert processes["counts"].equals(threads["counts"])
    assert {k: v for k, v in processes.items() if k != "counts"} == {k: v for k, v in threads.items() if k != "counts"}
    assert processes["duplicates"] == {H10: 500 - 4 + 7, hour11: 0}  # four of the overlap replaced above
    reports = processes["reports"]
    lines, _, rejected, quarantined = reports[hour_prefix("events", H10) + "b.jsonl.gz"]
    assert lines == 3507
    assert [(line, reason) for line, reason, _ in rejected] == [
        (101, "not JSON: Expecting value: line 1 column 22 (char 21)"),
        (301, "unknown action 'swipe' (known: click, impression)"),
    ]
    assert quarantined is None
    cut = reports[hour_prefix("events", H10) + "c.jsonl.gz"]
    assert cut[3] is not None and cut[3].startswith("not gzip JSON lines (after line ")
    plain = reports[hour_prefix("events", H10) + "d.jsonl.gz"]
    assert plain[3] == "not gzip JSON lines: Not a gzipped file (b'pl')"


def test_ids_read_again_in_other_files_count_once(store: S3ObjectStore) -> None:
    # Each file repeats ids of every other file: whichever worker reads a copy first, each id counts once.
    for n in range(4):
        put(store, H10, f"p{n}.jsonl.gz", gzip.compress(jsonl([event(i) for i in range(n * 200, n * 200 + 1500)])))
    scan = scan_of(store, processes=True, chunk_bytes=2048)
    counts, events = count_stream(scan.reader(), USERS, names=scan.names)
    assert (events, counts.counted_events, scan.duplicates) == (2100, 2100, 6000 - 2100)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.lists(
        st.lists(st.tuples(st.integers(0, 60), st.sampled_from(["layout", "json", "bad"])), max_size=40),
        min_size=1,
        max_size=4,
    )
)
def test_processes_and_threads_agree_on_any_split_of_ids_into_files(
    store: S3ObjectStore, files: list[list[tuple[int, str]]]
) -> None:
    # Ids drawn from a small range repeat within and across files; lines in the layout, in other JSON, or broken.
    prefix = f"events-{uuid.uuid4().hex[:8]}"
    for n, lines in enumerate(files):
        body = b"".join(
            (jsonl([event(i)]) if kind == "layout" else json.dumps(event(i)).encode() + b"\n")
            if kind != "bad"
            else b'{"event_id":"e%d",\n' % i
            for i, kind in lines
        )
        put(store, H10, f"f{n}.jsonl.gz", gzip.compress(body), prefix)
    threads, processes = read_all(store, False, prefix), read_all(store, True, prefix)
    assert processes["counts"].equals(threads["counts"])
    assert {k: v for k, v in processes.items() if k != "counts"} == {k: v for k, v in threads.items() if k != "counts"}
    good = {i for lines in files for i, kind in lines if kind != "bad"}
    copies = sum(1 for lines in files for _, kind in lines if kind != "bad")
    assert processes["events"] == len(good) and processes["duplicates"] == {H10: copies - len(good)}


def test_a_worker_that_ended_while_idle_is_replaced() -> None:
    workers = LineWorkers(1)
    workers.start()
    first = workers._all[0]
    first.proc.kill()
    first.proc.wait()
    body = gzip.compress(jsonl([event(i) for i in range(100)]))
    with workers.worker() as w:
        assert w is not first
        kinds = [kind for kind, _ in w.read(lambda: io.BytesIO(body), None)]
    assert kinds[-1] == "done" and len(kinds) > 1
    workers.close()
    assert w.proc.poll() is not None


class CutSource(StoreSource):
    """The store's files, whose streams break after their first megabyte with ``error``."""

    def __init__(self, store: S3ObjectStore, error: BaseException) -> None:
        super().__init__(store)
        self.error = error

    def stream(self, key: str) -> Any:
        body, error = super().stream(key), self.error

        class Cut(io.RawIOBase):
            sent = 0

            def readable(self) -> bool:
                return True

            def read(self, n: int = -1) -> bytes:
                if self.sent >= 1 << 20:
                    raise error
                data = body.read(n)
                self.sent += len(data)
                return data

        return Cut()


@pytest.mark.parametrize(
    ("error", "raised", "message"),
    [
        (
            ConnectionResetError("peer reset"),
            RetryableError,
            "read s3://events/dt=2026-11-27/hour=10/big.jsonl.gz: peer reset",
        ),
        (KeyFailedError("s3://b/k: access denied"), KeyFailedError, "s3://b/k: access denied"),
    ],
)
def test_a_fetch_that_breaks_fails_the_read_with_its_error(
    store: S3ObjectStore, error: BaseException, raised: type[BaseException], message: str
) -> None:
    put(store, H10, "big.jsonl.gz", gzip.compress(jsonl([event(i) for i in range(30_000)]), compresslevel=0))
    files = archive_files_of(store, "events", H10, H10 + dt.timedelta(hours=1))
    scan = ArchiveScan(CutSource(store, error), files, parallel=2, processes=True)
    with pytest.raises(raised) as caught:
        count_stream(scan.reader(), USERS, names=scan.names)
    assert str(caught.value) == message
    assert not [t for t in threading.enumerate() if t.name.startswith(("keyflow-events", "keyflow-line"))]


def test_a_worker_that_dies_fails_the_read_naming_the_file(store: S3ObjectStore) -> None:
    put(store, H10, "big.jsonl.gz", gzip.compress(jsonl([event(i) for i in range(30_000)])))
    scan = scan_of(store, processes=True, chunk_bytes=2048)
    reader = scan.reader()
    reader.read_next_batch()  # the worker is busy: the stream's queue and the pipes hold back the rest
    workers = scan._workers
    assert workers is not None
    for w in list(workers._all):
        w.proc.kill()
    with pytest.raises(LineWorkerError, match=r"read s3://events/dt=2026-11-27/hour=10/big.jsonl.gz: the line reader"):
        while True:
            reader.read_next_batch()
    assert not [t for t in threading.enumerate() if t.name.startswith(("keyflow-events", "keyflow-line"))]


def test_a_stream_stopped_early_ends_its_workers(store: S3ObjectStore) -> None:
    put(store, H10, "big.jsonl.gz", gzip.compress(jsonl([event(i) for i in range(30_000)])))
    scan = scan_of(store, processes=True, chunk_bytes=2048)
    reader = scan.reader()
    reader.read_next_batch()
    workers = scan._workers
    assert workers is not None
    started = list(workers._all)
    del reader  # as when counting fails: the stream's generator is closed
    gc.collect()
    assert started and all(w.proc.poll() is not None for w in started)
    assert not [t for t in threading.enumerate() if t.name.startswith(("keyflow-events", "keyflow-line"))]
