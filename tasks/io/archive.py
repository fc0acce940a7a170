"""The event archive in S3 (gzip JSON lines or Parquet, partitioned by event hour) and the user reference CSV.

Layout: ``<prefix>/dt=YYYY-MM-DD/hour=HH/<name>.jsonl.gz`` or ``….parquet``, and once the hour is compacted
(:mod:`tasks.io.compaction`) its ``compacted-….parquet`` files and the manifest ``_compaction.json``. The manifest
says which compacted files are the hour's and which small files they replaced: a reader takes the compacted files it
lists plus the small files it does not name, so it sees the hour before compaction or after, never both or neither.

Reading is line by line in effect (:mod:`tasks.transforms.event_lines`): a bad line is rejected with its line
number and reason, and a file that is not gzip JSON lines or Parquet at all is quarantined with its reason; neither
stops the read. JSON lines stream in chunks and Parquet in row groups (ranged reads), so memory is bounded by the
chunk, not the file. The user CSV is re-read only when its ETag changes.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from config.errors import ConfigError, KeyFailedError, RetryableError, first_line
from tasks.io.line_workers import CHUNK_BYTES, LineWorkers, jsonl_chunks
from tasks.io.line_workers import DAMAGE_ERRORS as GZIP_DAMAGE_ERRORS
from tasks.io.objectstore import ObjectStore
from tasks.transforms.event_layout import keyed_lines
from tasks.transforms.event_lines import FIELDS, TEXT_SCHEMA, HourIds, RejectedLine, check_lines, parse_jsonl
from tasks.transforms.hashing import HASH_VERSION, hash_ids
from tasks.transforms.paths import join_under
from tasks.transforms.trends import (
    COUNT_INPUT_SCHEMA,
    EVENT_SCHEMA,
    KEYED_SCHEMA,
    USER_SCHEMA,
    ArticleNames,
    conform_events,
    keyed_events,
    with_arrival,
)

EVENT_FILE_SUFFIXES = (".jsonl.gz", ".parquet")
COMPACTED = "compacted-"  # compacted files' names start with it; a small file's name never does
MANIFEST = "_compaction.json"
USER_KEY_META = "keyflow.user_key"  # a compacted file's metadata: the version of the hash its user_key column holds
PARQUET_BATCH_ROWS = 1 << 17
DAMAGE_ERRORS: tuple[type[Exception], ...] = (*GZIP_DAMAGE_ERRORS, zlib.error)
"""What reading a damaged file raises: Parquet's errors and gzip's (``OSError`` covers ``gzip.BadGzipFile``)."""


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


def hour_of_key(prefix: str, key: str) -> datetime | None:
    """The event hour whose partition holds ``key`` (None when it is not under ``prefix``'s partitions)."""
    rest = key[len(prefix.rstrip("/")) + 1 :] if key.startswith(prefix.rstrip("/") + "/") else ""
    parts = rest.split("/")
    if len(parts) < 3 or not parts[0].startswith("dt=") or not parts[1].startswith("hour="):
        return None
    try:
        return datetime.fromisoformat(f"{parts[0][3:]}T{parts[1][5:]}:00+00:00")
    except ValueError:
        return None


# --- the hour's manifest and its live files


@dataclass
class HourManifest:
    """``<hour>/_compaction.json``: the hour's compacted files and the small files each one replaced.

    ``replaced`` maps every small file ever compacted to the compacted file that now holds its events (an event
    dropped as a duplicate is held by the file of its first copy); ``quarantined`` names the files set aside.
    """

    generation: int = 0
    files: list[str] = field(default_factory=list)
    replaced: dict[str, str] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    events: int = 0
    duplicates: int = 0
    invalid: int = 0

    def to_json(self) -> bytes:
        """The manifest as stored."""
        return json.dumps({"version": 1, **self.__dict__}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, body: bytes, where: str) -> HourManifest:
        """A stored manifest; one that cannot be read fails naming it (an unreadable manifest hides the hour)."""
        try:
            data = json.loads(body)
            data.pop("version", None)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise KeyFailedError(f"compaction manifest {where}: {first_line(exc)}") from None


def read_manifest(store: ObjectStore, prefix: str, hour: datetime) -> HourManifest | None:
    """The hour's manifest, or None before its first compaction."""
    key = hour_prefix(prefix, hour) + MANIFEST
    if not store.exists(key):
        return None
    return HourManifest.from_json(store.get_bytes(key), f"s3://{store.bucket}/{key}")


def write_manifest(store: ObjectStore, prefix: str, hour: datetime, manifest: HourManifest) -> None:
    """Switch the hour to ``manifest`` (one PUT: readers see the old manifest or this one)."""
    store.put_bytes(manifest.to_json(), hour_prefix(prefix, hour) + MANIFEST, "application/json")


@dataclass(frozen=True)
class ArchiveFile:
    """One live event file of an hour: its key, size, upload time, and whether compaction wrote it."""

    key: str
    size: int
    uploaded: datetime | None
    hour: datetime
    compacted: bool = False

    @property
    def name(self) -> str:
        """The file's name within its hour partition."""
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class HourListing:
    """What an hour partition holds: its live files, its manifest, and objects a compaction left to delete."""

    hour: datetime
    files: list[ArchiveFile]
    manifest: HourManifest | None
    leftovers: list[str]

    @property
    def small(self) -> list[ArchiveFile]:
        """The live files compaction has not replaced yet."""
        return [f for f in self.files if not f.compacted]


def list_hour(store: ObjectStore, prefix: str, hour: datetime) -> HourListing:
    """The hour's live files (compacted ones first, then the others, by key) and what compaction left behind."""
    base = hour_prefix(prefix, hour)
    manifest = read_manifest(store, prefix, hour)
    objects = {o["Key"][len(base) :]: o for o in store.list_objects(base)}
    m = manifest or HourManifest()
    compacted, small, leftovers = [], [], []
    for name, obj in sorted(objects.items()):
        if not name.endswith(EVENT_FILE_SUFFIXES):
            continue
        live = ArchiveFile(obj["Key"], int(obj.get("Size", 0)), obj.get("LastModified"), hour, name in m.files)
        if name in m.files:
            compacted.append(live)
        elif name.startswith(COMPACTED) or name in m.replaced or name in m.quarantined:
            leftovers.append(obj["Key"])
        else:
            small.append(live)
    missing = [n for n in m.files if n not in objects]
    if missing:
        # Listed by the manifest, gone from the bucket: a compaction is switching right now, or data was deleted.
        raise RetryableError(f"hour {hour:%Y-%m-%d %H}:00: compacted file(s) {', '.join(missing)} not found in {base}")
    return HourListing(hour, compacted + small, manifest, leftovers)


def archive_files_of(store: ObjectStore, prefix: str, start: datetime, end: datetime) -> list[ArchiveFile]:
    """The live event files of the hours overlapping ``[start, end)``."""
    return [f for hour in hours_between(start, end) for f in list_hour(store, prefix, hour).files]


def archive_objects(store: ObjectStore, prefix: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The live event files (``Key``, ``Size``, ``LastModified``) of the hours overlapping ``[start, end)``."""
    return [
        {"Key": f.key, "Size": f.size, "LastModified": f.uploaded} for f in archive_files_of(store, prefix, start, end)
    ]


def archive_files(store: ObjectStore, prefix: str, start: datetime, end: datetime) -> list[str]:
    """Object keys of the live event files of the hours overlapping ``[start, end)``."""
    return [f.key for f in archive_files_of(store, prefix, start, end)]


def archived_file_exists(store: ObjectStore, prefix: str, key: str) -> bool:
    """Whether the archive still holds the events written to ``key``.

    Either the file itself is there, or the compacted file its hour's manifest says replaced it (event ingestion's
    exactly-once check asks this).
    """
    if not key:
        return False
    if store.exists(key):
        return True
    hour = hour_of_key(prefix, key)
    if hour is None:
        return False
    manifest = read_manifest(store, prefix, hour)
    target = manifest.replaced.get(key.rsplit("/", 1)[-1]) if manifest else None
    return target is not None and store.exists(hour_prefix(prefix, hour) + target)


# --- reading files


class FileSource(Protocol):
    """Where archive files are read from: a stream of a file, or random access for Parquet."""

    def stream(self, key: str) -> IO[bytes] | pa.NativeFile:
        """A stream of the file's bytes, read from the start."""

    def random_access(self, key: str, size: int) -> Any:
        """A seekable file (Parquet reads its footer first)."""


class StoreSource:
    """Archive files in an object store: streamed bodies, and ranged reads for Parquet."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def stream(self, key: str) -> IO[bytes]:
        """The object's body, streamed."""
        return self.store.open(key)

    def random_access(self, key: str, size: int) -> Any:
        """A seekable file whose reads are ranged GETs (Parquet reads its footer, then only the columns it needs)."""
        return pa.PythonFile(_RangedFile(self.store, key, size), mode="r")


class _RangedFile(io.RawIOBase):
    """A read-only, seekable view of one object, read by ranges with a small read-ahead."""

    def __init__(self, store: ObjectStore, key: str, size: int, read_ahead: int = 1 << 20) -> None:
        super().__init__()
        self.store, self.key, self.size, self.read_ahead = store, key, size, read_ahead
        self.pos = 0
        self._buf_start, self._buf = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, min(base + offset, self.size))
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.pos + n, self.size)
        if end <= self.pos:
            return b""
        lo, hi = self._buf_start, self._buf_start + len(self._buf)
        if not (lo <= self.pos and end <= hi):
            fetch_end = min(max(end, self.pos + self.read_ahead), self.size)
            self._buf_start, self._buf = self.pos, self.store.read_range(self.key, self.pos, fetch_end)
            lo = self._buf_start
        out = self._buf[self.pos - lo : end - lo]
        self.pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


@dataclass
class FileReport:
    """What reading one file found: lines, events, rejected lines, and why it was quarantined (if it was)."""

    file: ArchiveFile
    lines: int = 0
    events: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)
    quarantined: str | None = None

    @property
    def invalid(self) -> int:
        """Lines that were not usable events."""
        return len(self.rejected)


def read_archive_file(
    source: FileSource,
    file: ArchiveFile,
    report: FileReport,
    chunk_bytes: int = CHUNK_BYTES,
    ids: bool = True,
) -> Iterator[pa.Table]:
    """Stream one archive file as events (:data:`EVENT_SCHEMA`); bad lines go to ``report.rejected``.

    Events without ``received_at`` take the file's upload time. A file that cannot be read as what its name says
    sets ``report.quarantined`` (the events read before the damage stay read); connection trouble is raised.
    A compacted file is read for counting when ``ids`` is False: without event ids, its article ids and actions
    dictionary-encoded as stored (a few thousand distinct values instead of one text per event).
    """
    try:
        if file.key.endswith(".parquet"):
            yield from _read_parquet(source, file, report, ids)
            return
        with contextlib.closing(source.stream(file.key)) as raw:
            clean = True
            for chunk in jsonl_chunks(raw, chunk_bytes):
                parsed = parse_jsonl(chunk, report.lines + 1, optimistic=clean)
                clean = parsed.clean
                report.lines += parsed.lines
                report.events += parsed.events.num_rows
                report.rejected += parsed.rejected
                if parsed.events.num_rows:
                    yield with_arrival(parsed.events, file.uploaded)
    except (ConnectionError, TimeoutError) as exc:
        raise RetryableError(f"read s3://{file.key}: {first_line(exc)}") from None
    except DAMAGE_ERRORS as exc:
        _damaged(file, report, exc)


def _damaged(file: ArchiveFile, report: FileReport, exc: BaseException | str) -> None:
    damage = "not a Parquet file" if file.key.endswith(".parquet") else "not gzip JSON lines"
    where = f" (after line {report.lines})" if report.lines else ""
    report.quarantined = f"{damage}{where}: {exc if isinstance(exc, str) else first_line(exc)}"


def read_keyed_jsonl(
    source: FileSource, file: ArchiveFile, report: FileReport, names: ArticleNames, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Stream one gzip JSON lines file as counting reads it: keyed events and the hashes of their event ids.

    The same events, rejected lines and quarantine as :func:`read_archive_file`; lines in event ingestion's own
    layout are read without a JSON parser (:func:`tasks.transforms.event_layout.keyed_lines`), and once a chunk
    holds none, the rest of the file is read the general way.
    """
    try:
        with contextlib.closing(source.stream(file.key)) as raw:
            layout = True
            for chunk in jsonl_chunks(raw, chunk_bytes):
                read = keyed_lines(chunk, report.lines + 1, names, file.uploaded, layout)
                layout = read.in_layout > 0
                report.lines += read.lines
                report.events += read.events.num_rows
                report.rejected += read.rejected
                if read.events.num_rows:
                    yield read.events, read.hashes
    except (ConnectionError, TimeoutError) as exc:
        raise RetryableError(f"read s3://{file.key}: {first_line(exc)}") from None
    except DAMAGE_ERRORS as exc:
        _damaged(file, report, exc)


def _read_parquet(source: FileSource, file: ArchiveFile, report: FileReport, ids: bool = True) -> Iterator[pa.Table]:
    if file.compacted and not ids:  # written by compaction: checked, typed and with its arrival times already
        parquet = pq.ParquetFile(
            source.random_access(file.key, file.size), pre_buffer=True, read_dictionary=["article_id", "action"]
        )
        meta = parquet.schema_arrow.metadata or {}
        keyed = meta.get(USER_KEY_META.encode()) == HASH_VERSION.encode()
        columns = [n for n in COUNT_INPUT_SCHEMA.names if not (keyed and n == "user_id")] + (
            ["user_key"] if keyed else []
        )
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            report.lines += batch.num_rows
            report.events += batch.num_rows
            yield pa.Table.from_batches([batch])
        return
    parquet = pq.ParquetFile(source.random_access(file.key, file.size), pre_buffer=True)
    present = [n for n in FIELDS if n in parquet.schema_arrow.names]
    row = 1
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=present):
        table = pa.Table.from_batches([batch])
        report.lines += table.num_rows
        if file.compacted:
            report.events += table.num_rows
            yield conform_events(table)
            continue
        # Any other Parquet file is checked row by row (row n is "line" n) like JSON lines.
        text = pa.table(
            [
                table[n].cast(pa.string()) if n in table.column_names else pa.nulls(table.num_rows, pa.string())
                for n in FIELDS
            ],
            schema=TEXT_SCHEMA,
        )
        parsed = check_lines(text, np.arange(row, row + table.num_rows), _parquet_rows(table, row))
        row += table.num_rows
        report.events += parsed.events.num_rows
        report.rejected += parsed.rejected
        if parsed.events.num_rows:
            yield with_arrival(parsed.events, file.uploaded)


def _parquet_rows(table: pa.Table, first: int) -> Callable[[Sequence[int]], list[str]]:
    def texts(rows: Sequence[int]) -> list[str]:
        picked = table.take(pa.array([r - first for r in rows])).to_pylist()
        return [json.dumps(r, default=str)[:1024] for r in picked]

    return texts


def read_events(
    store: ObjectStore,
    key: str,
    block_size: int = CHUNK_BYTES,
    arrived: datetime | None = None,
    schema: pa.Schema = EVENT_SCHEMA,
) -> Iterator[pa.Table]:
    """Stream one archive file as tables of ``schema`` (bad lines skipped).

    A file that cannot be read at all fails naming it. Events without ``received_at`` take ``arrived`` (the file's
    upload time) as their arrival time.
    """
    file = ArchiveFile(key, _size(store, key) if key.endswith(".parquet") else 0, arrived, arrived or datetime.min)
    report = FileReport(file)
    for table in read_archive_file(StoreSource(store), file, report, block_size):
        yield table.select(schema.names)
    if report.quarantined:
        raise KeyFailedError(f"event file s3://{store.bucket}/{key}: {report.quarantined}")


def _size(store: ObjectStore, key: str) -> int:
    return int(store.head(key).get("ContentLength", 0))


# --- one stream of the events of many files, each id once per hour


def event_reader(
    files: Sequence[Callable[[], Iterator[pa.Table]]],
    parallel: int = 2,
    queue_batches: int = 8,
    schema: pa.Schema = COUNT_INPUT_SCHEMA,
    finish: Callable[[], None] | None = None,
) -> pa.RecordBatchReader:
    """One stream of event batches from many files, ``parallel`` files read at once by background threads.

    At most ``queue_batches`` batches wait in memory; a failing file fails the stream with its own error.
    ``finish`` runs once the stream is read (or stopped) and its threads have ended.
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
            if finish is not None:
                finish()

    return pa.RecordBatchReader.from_batches(schema, gen())


def expected_events(files: Sequence[ArchiveFile]) -> int:
    """A generous guess of the events in ``files`` from their sizes (sizes the duplicate filter)."""
    return sum(f.size // (10 if f.key.endswith(".parquet") else 20) for f in files) + 1


class _Hour:
    def __init__(self, files: Sequence[ArchiveFile]) -> None:
        # Compacted files hold each id once and apart from each other: an hour of nothing else needs no filter.
        needs = any(not f.compacted for f in files)
        self.ids = HourIds(expected_events(files)) if needs else None
        self.remaining = len(files)
        self.lock = threading.Lock()

    def file_done(self) -> bool:
        with self.lock:
            self.remaining -= 1
            return self.remaining == 0


class ArchiveScan:
    """The live files of some hours read as one stream, ``parallel`` files at once.

    It yields valid events, each event id once within its hour (the first copy read), and keeps per-file reports of
    bad lines and quarantined files. With ``processes``, gzip JSON lines files are inflated and read in worker
    processes, one per reading thread (:mod:`tasks.io.line_workers`), so reading uses every core; the events, the
    duplicates and the reports are the same.
    """

    def __init__(
        self,
        source: FileSource,
        files: Sequence[ArchiveFile],
        parallel: int = 2,
        chunk_bytes: int = CHUNK_BYTES,
        processes: bool = False,
    ) -> None:
        self.source = source
        self.files = list(files)
        self.parallel = parallel
        self.chunk_bytes = chunk_bytes
        gzipped = sum(1 for f in self.files if f.key.endswith(".jsonl.gz"))
        self._workers = LineWorkers(max(1, min(parallel, gzipped))) if processes and gzipped else None
        self.reports = {f.key: FileReport(f) for f in self.files}
        by_hour: dict[datetime, list[ArchiveFile]] = {}
        for f in self.files:
            by_hour.setdefault(f.hour, []).append(f)
        self._hours = {h: _Hour(fs) for h, fs in by_hour.items()}
        self._names = ArticleNames()

    @property
    def names(self) -> ArticleNames:
        """The article ids behind the article keys of the stream (complete once it is read)."""
        return self._names

    @property
    def duplicates(self) -> int:
        """Events not counted because their id was read before in their hour."""
        return sum(h.ids.duplicates for h in self._hours.values() if h.ids is not None)

    def duplicates_by_hour(self) -> dict[datetime, int]:
        """Duplicates per hour partition."""
        return {t: (h.ids.duplicates if h.ids is not None else 0) for t, h in self._hours.items()}

    def reader(self) -> pa.RecordBatchReader:
        """The events as :data:`KEYED_SCHEMA` batches (rows marked ``held`` are counted later, or are duplicates).

        Count them with ``names=`` :attr:`names`.
        """
        workers = self._workers
        if workers is not None:
            workers.start()
        return event_reader(
            [self._opener(f) for f in self.files],
            self.parallel,
            schema=KEYED_SCHEMA,
            finish=workers.close if workers is not None else None,
        )

    def close(self) -> None:
        """End the worker processes of a stream that will not be read (a read stream ends them itself)."""
        if self._workers is not None:
            self._workers.close()

    def _opener(self, file: ArchiveFile) -> Callable[[], Iterator[pa.Table]]:
        def read() -> Iterator[pa.Table]:
            hour = self._hours[file.hour]
            report = self.reports[file.key]
            for table, hashes in self._read(file, report, hour.ids is not None):
                held = hour.ids.admit(table, hashes) if hour.ids is not None else None
                yield self._keyed(table, held)
            if hour.file_done() and hour.ids is not None:
                released = hour.ids.release(last=True)
                if released is not None and released.num_rows:
                    yield self._keyed(released, None)

        return read

    def _read(self, file: ArchiveFile, report: FileReport, ids: bool) -> Iterator[tuple[pa.Table, np.ndarray | None]]:
        """The file's events keyed (the duplicate filter holds keyed rows back), with their ids' hashes if ``ids``."""
        if file.key.endswith(".jsonl.gz"):
            if self._workers is not None:
                yield from self._read_in_worker(self._workers, file, report)
            else:
                yield from read_keyed_jsonl(self.source, file, report, self._names, self.chunk_bytes)
            return
        for table in read_archive_file(self.source, file, report, self.chunk_bytes, ids=ids):
            hashes = hash_ids(table["event_id"]) if ids else None
            yield keyed_events(table, self._names).drop_columns(["held"]), hashes

    def _read_in_worker(
        self, workers: LineWorkers, file: ArchiveFile, report: FileReport
    ) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """:func:`read_keyed_jsonl` in a worker process: the same events, hashes, rejected lines and quarantine."""
        with workers.worker() as worker:
            name = f"s3://{file.key}"
            try:
                for kind, body in worker.read(
                    lambda: self.source.stream(file.key), file.uploaded, self.chunk_bytes, name
                ):
                    if kind == "events":
                        table, hashes, lines, rejected = body
                        report.lines += lines
                        report.events += table.num_rows
                        report.rejected += rejected  # numbered by their lines in the file already
                        if table.num_rows:
                            yield table, hashes
                    else:
                        keys, names, damage = body
                        self._names.add(keys, names)
                        if damage is not None:
                            _damaged(file, report, damage)
            except (ConnectionError, TimeoutError) as exc:  # fetching, as read_keyed_jsonl says it
                raise RetryableError(f"read {name}: {first_line(exc)}") from None
            except DAMAGE_ERRORS as exc:
                _damaged(file, report, exc)

    def _keyed(self, table: pa.Table, held: np.ndarray | None) -> pa.Table:
        flags = pa.array(held) if held is not None else pa.nulls(table.num_rows, pa.bool_())
        return keyed_events(table.append_column("held", flags), self._names)


# --- rejected lines and quarantined files


def rejected_key(rejected_prefix: str, file: ArchiveFile) -> str:
    """Where the rejected lines of ``file`` are written."""
    return hour_prefix(rejected_prefix, file.hour) + file.name + ".rejected.jsonl.gz"


def write_rejected(store: ObjectStore, rejected_prefix: str, reports: Sequence[FileReport]) -> list[str]:
    """Write each file's rejected lines (file, line, reason, text) once; returns the keys written now.

    A file's rejected lines never change, so one already written is left as it is (one listing per hour).
    """
    written: list[str] = []
    existing: dict[datetime, set[str]] = {}
    for report in reports:
        if not report.rejected:
            continue
        key = rejected_key(rejected_prefix, report.file)
        hour = report.file.hour
        if hour not in existing:
            existing[hour] = set(store.list_keys(hour_prefix(rejected_prefix, hour)))
        if key in existing[hour]:
            continue
        body = b"".join(
            json.dumps({"file": f"s3://{store.bucket}/{report.file.key}", **r.as_json()}).encode() + b"\n"
            for r in report.rejected
        )
        store.put_bytes(gzip.compress(body, mtime=0), key, "application/gzip")
        written.append(key)
    return written


def quarantine_key(quarantine_prefix: str, file: ArchiveFile) -> str:
    """Where a quarantined file's copy is kept (its reason beside it, ``.reason.txt``)."""
    return hour_prefix(quarantine_prefix, file.hour) + file.name


def quarantine(store: ObjectStore, quarantine_prefix: str, file: ArchiveFile, reason: str) -> str:
    """Copy a file that cannot be read to the quarantine prefix with its reason, once; returns the copy's key."""
    key = quarantine_key(quarantine_prefix, file)
    if not store.exists(key + ".reason.txt"):
        store.put_bytes(store.get_bytes(file.key), key)
        store.put_bytes(f"s3://{store.bucket}/{file.key}: {reason}\n".encode(), key + ".reason.txt", "text/plain")
    return key


# --- users


class UserDirectory:
    """The user reference CSV (``user_id,gender,segment_id``), cached until the object's ETag changes."""

    def __init__(self, store: ObjectStore, key: str, where: str = "users_key") -> None:
        self.store = store
        self.key = key
        self.where = where  # the config file and field that name the file, for the not-found message
        self._lock = threading.Lock()
        self._etag: str | None = None
        self._table: pa.Table | None = None
        self.reads = 0

    def etag(self) -> str:
        """The file's current ETag (one HEAD).

        Raises:
            ConfigError: the file is not there (one line naming the config field, the bucket and the key).
        """
        try:
            return str(self.store.head(self.key).get("ETag", ""))
        except KeyFailedError:
            if self.store.exists(self.key):
                raise
            raise ConfigError(
                f"{self.where}: s3://{self.store.bucket}/{self.key} does not exist; upload the users file "
                "(CSV: user_id,gender,segment_id) before the first run"
            ) from None

    def table(self) -> pa.Table:
        """The current users; one HEAD per call, a GET only when the file changed (``ConfigError`` when missing)."""
        etag = self.etag()
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
