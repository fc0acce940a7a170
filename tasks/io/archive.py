"""The event archive in S3 (gzip JSON lines or Parquet, partitioned by event hour) and the user reference CSV.

Layout: ``<prefix>/dt=YYYY-MM-DD/hour=HH/<name>.jsonl.gz`` or ``….parquet``. JSON lines stream in Arrow batches, so
memory is bounded by the batch, not by the file (a Parquet file is fetched whole: it needs random access). The user
CSV is re-read only when its ETag changes.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from config.errors import KeyFailedError, first_line
from tasks.io.objectstore import ObjectStore
from tasks.transforms.paths import join_under
from tasks.transforms.trends import COUNT_INPUT_SCHEMA, EVENT_SCHEMA, USER_SCHEMA, conform_events, with_arrival


def hour_prefix(prefix: str, hour: datetime) -> str:
    """The partition of one event hour."""
    return join_under(prefix, f"dt={hour:%Y-%m-%d}/hour={hour:%H}") + "/"


def event_file_key(prefix: str, hour: datetime, name: str) -> str:
    """The object key of the event file ``name`` of ``hour``."""
    return join_under(hour_prefix(prefix, hour).rstrip("/"), f"{name}.jsonl.gz")


def write_event_file(store: ObjectStore, prefix: str, hour: datetime, name: str, jsonl: bytes) -> str:
    """Store one gzip JSON lines file of events of ``hour`` under its partition; returns the object key."""
    key = event_file_key(prefix, hour, name)
    store.put_bytes(gzip.compress(jsonl, compresslevel=6, mtime=0), key, "application/gzip")
    return key


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """Every event hour that overlaps ``[start, end)``."""
    first = start.replace(minute=0, second=0, microsecond=0)
    out = []
    while first < end:
        out.append(first)
        first += timedelta(hours=1)
    return out


EVENT_FILE_SUFFIXES = (".jsonl.gz", ".parquet")


def archive_objects(store: ObjectStore, prefix: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The event files (``Key``, ``Size``, ``LastModified``) of the hours overlapping ``[start, end)``, by key."""
    found: list[dict[str, Any]] = []
    for hour in hours_between(start, end):
        objs = [o for o in store.list_objects(hour_prefix(prefix, hour)) if o["Key"].endswith(EVENT_FILE_SUFFIXES)]
        found += sorted(objs, key=lambda o: o["Key"])
    return found


def archive_files(store: ObjectStore, prefix: str, start: datetime, end: datetime) -> list[str]:
    """Object keys of the event files of the hours overlapping ``[start, end)``, in key order."""
    return [o["Key"] for o in archive_objects(store, prefix, start, end)]


def read_jsonl_gz(raw: Any, block_size: int = 1 << 20, schema: pa.Schema = EVENT_SCHEMA) -> Iterator[pa.Table]:
    """Stream a gzip JSON lines file object as tables of ``schema`` (other fields are ignored)."""
    stream = pa.CompressedInputStream(raw if isinstance(raw, pa.NativeFile) else pa.PythonFile(raw, mode="r"), "gzip")
    reader = pajson.open_json(
        stream,
        read_options=pajson.ReadOptions(block_size=block_size, use_threads=True),
        parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )
    for batch in reader:
        yield pa.Table.from_batches([batch])


def read_events(
    store: ObjectStore,
    key: str,
    block_size: int = 1 << 20,
    arrived: datetime | None = None,
    schema: pa.Schema = EVENT_SCHEMA,
) -> Iterator[pa.Table]:
    """Stream one archive file as tables of ``schema``; a corrupt file fails naming it.

    Events without ``received_at`` take ``arrived`` (the file's upload time) as their arrival time.
    """
    for table in _read_events(store, key, block_size, schema):
        yield with_arrival(table, arrived)


def _read_events(store: ObjectStore, key: str, block_size: int, schema: pa.Schema) -> Iterator[pa.Table]:
    try:
        if key.endswith(".parquet"):
            parquet = pq.ParquetFile(pa.BufferReader(store.get_bytes(key)))
            present = [n for n in schema.names if n in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(columns=present):
                yield conform_events(pa.Table.from_batches([batch]), schema)
            return
        with store.open(key) as raw:
            yield from read_jsonl_gz(raw, block_size, schema)
    except (pa.ArrowInvalid, OSError) as exc:
        raise KeyFailedError(f"event file s3://{store.bucket}/{key}: {first_line(exc)}") from None


def event_reader(
    files: Sequence[Callable[[], Iterator[pa.Table]]],
    parallel: int = 2,
    queue_batches: int = 8,
    schema: pa.Schema = COUNT_INPUT_SCHEMA,
) -> pa.RecordBatchReader:
    """One stream of event batches from many files, ``parallel`` files read at once by background threads.

    At most ``queue_batches`` batches wait in memory; a failing file fails the stream with its own error.
    """
    batches: queue.Queue[Any] = queue.Queue(maxsize=queue_batches)
    todo: queue.Queue[Callable[[], Iterator[pa.Table]]] = queue.Queue()
    for f in files:
        todo.put(f)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            while not stop.is_set():
                try:
                    opener = todo.get_nowait()
                except queue.Empty:
                    return
                for table in opener():
                    for batch in table.to_batches():
                        while not stop.is_set():
                            try:
                                batches.put(batch, timeout=0.2)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
        except BaseException as exc:  # handed to the consumer, which raises it
            batches.put(exc)
        finally:
            batches.put(done)

    workers = [
        threading.Thread(target=work, name=f"keyflow-events-{i}", daemon=True)
        for i in range(max(1, min(parallel, len(files) or 1)))
    ]

    def gen() -> Iterator[pa.RecordBatch]:
        for w in workers:
            w.start()
        running = len(workers)
        try:
            while running:
                item = batches.get()
                if item is done:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            while any(w.is_alive() for w in workers):
                with contextlib.suppress(queue.Empty):
                    batches.get(timeout=0.05)

    return pa.RecordBatchReader.from_batches(schema, gen())


class UserDirectory:
    """The user reference CSV (``user_id,gender,segment_id``), cached until the object's ETag changes."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store = store
        self.key = key
        self._lock = threading.Lock()
        self._etag: str | None = None
        self._table: pa.Table | None = None
        self.reads = 0

    def table(self) -> pa.Table:
        """The current users; one HEAD per call, a GET only when the file changed."""
        etag = str(self.store.head(self.key).get("ETag", ""))
        with self._lock:
            if self._table is None or etag != self._etag:
                body = self.store.get_bytes(self.key)
                try:
                    table = pacsv.read_csv(
                        io.BytesIO(body),
                        convert_options=pacsv.ConvertOptions(
                            column_types=USER_SCHEMA, include_columns=USER_SCHEMA.names, strings_can_be_null=True
                        ),
                    )
                except pa.ArrowInvalid as exc:
                    raise KeyFailedError(f"user file s3://{self.store.bucket}/{self.key}: {first_line(exc)}") from None
                self._table, self._etag = table.select(USER_SCHEMA.names), etag
                self.reads += 1
            return self._table
