"""The event archive in S3 (gzip JSON lines or Parquet, partitioned by event hour) and the user reference CSV.

Layout: ``<prefix>/dt=YYYY-MM-DD/hour=HH/<name>.jsonl.gz`` or ``….parquet``. JSON lines stream in Arrow batches, so
memory is bounded by the batch, not by the file (a Parquet file is fetched whole: it needs random access). The user
CSV is re-read only when its ETag changes.
"""

from __future__ import annotations

import gzip
import io
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from config.errors import KeyFailedError
from tasks.io.objectstore import S3ObjectStore
from tasks.transforms.paths import join_under
from tasks.transforms.trends import EVENT_SCHEMA, USER_SCHEMA, conform_events


def hour_prefix(prefix: str, hour: datetime) -> str:
    """The partition of one event hour."""
    return join_under(prefix, f"dt={hour:%Y-%m-%d}/hour={hour:%H}") + "/"


def write_event_file(store: S3ObjectStore, prefix: str, hour: datetime, name: str, jsonl: bytes) -> str:
    """Store one gzip JSON lines file of events of ``hour`` under its partition; returns the object key."""
    key = join_under(hour_prefix(prefix, hour).rstrip("/"), f"{name}.jsonl.gz")
    store.put_bytes(gzip.compress(jsonl, compresslevel=6), key, "application/gzip")
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


def archive_objects(store: S3ObjectStore, prefix: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The event files (``Key``, ``Size``, ``LastModified``) of the hours overlapping ``[start, end)``, by key."""
    found: list[dict[str, Any]] = []
    for hour in hours_between(start, end):
        objs = [o for o in store.list_objects(hour_prefix(prefix, hour)) if o["Key"].endswith(EVENT_FILE_SUFFIXES)]
        found += sorted(objs, key=lambda o: o["Key"])
    return found


def archive_files(store: S3ObjectStore, prefix: str, start: datetime, end: datetime) -> list[str]:
    """Object keys of the event files of the hours overlapping ``[start, end)``, in key order."""
    return [o["Key"] for o in archive_objects(store, prefix, start, end)]


def read_events(store: S3ObjectStore, key: str, block_size: int = 1 << 20) -> Iterator[pa.Table]:
    """Stream one archive file as tables of :data:`EVENT_SCHEMA` (extra fields are ignored)."""
    try:
        if key.endswith(".parquet"):
            parquet = pq.ParquetFile(pa.BufferReader(store.get_bytes(key)))
            present = [n for n in EVENT_SCHEMA.names if n in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(columns=present):
                yield conform_events(pa.Table.from_batches([batch]))
            return
        with store.open(key) as raw:
            stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "gzip")
            reader = pajson.open_json(
                stream,
                read_options=pajson.ReadOptions(block_size=block_size, use_threads=False),
                parse_options=pajson.ParseOptions(explicit_schema=EVENT_SCHEMA, unexpected_field_behavior="ignore"),
            )
            for batch in reader:
                yield pa.Table.from_batches([batch])
    except (pa.ArrowInvalid, OSError) as exc:
        raise KeyFailedError(f"event file s3://{store.bucket}/{key}: {str(exc).splitlines()[0]}") from None


class UserDirectory:
    """The user reference CSV (``user_id,gender,segment_id``), cached until the object's ETag changes."""

    def __init__(self, store: S3ObjectStore, key: str) -> None:
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
                    raise KeyFailedError(
                        f"user file s3://{self.store.bucket}/{self.key}: {str(exc).splitlines()[0]}"
                    ) from None
                self._table, self._etag = table.select(USER_SCHEMA.names), etag
                self.reads += 1
            return self._table
