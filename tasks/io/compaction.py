"""Compaction of a closed event hour into Parquet files.

The hour's small files are rewritten as Parquet files of at least ``target_bytes`` each (or one file for the whole
hour), each event id once, bad lines and unreadable files set aside.

Crash-safe, in three steps, each idempotent:

1. **write** new files ``compacted-g<generation>-<token>-NNN.parquet``: no reader looks at a name the manifest does
   not list, so they change nothing yet;
2. **switch**: one PUT of the hour's manifest (``_compaction.json``) naming the new files and mapping every small
   file they replace to the file that now holds its events; a reader sees the old manifest or the new one;
3. **delete** what the manifest replaced; readers already ignore it.

A crash before the switch leaves unlisted files, a crash after it files the manifest replaced: the next compaction
of the hour deletes both, and redoes what was not done. The caller holds a lock so two compactions of one hour
never overlap (``TrendCounts.lock``).

A pointer to a small file (the DynamoDB events table names one per event) stays valid through the manifest:
:func:`tasks.io.archive.archived_file_exists`.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io.archive import (
    COMPACTED,
    USER_KEY_META,
    ArchiveFile,
    FileReport,
    FileSource,
    HourListing,
    HourManifest,
    StoreSource,
    hour_prefix,
    list_hour,
    quarantine,
    read_archive_file,
    write_manifest,
    write_rejected,
)
from tasks.io.objectstore import ObjectStore
from tasks.transforms.event_lines import HourIds
from tasks.transforms.hashing import HASH_VERSION, hash_ids
from tasks.transforms.trends import EVENT_SCHEMA

ROW_GROUP_ROWS = 1 << 19
# Compacted files also keep each event's user key (the 64-bit hash counting joins on), so counting a compacted
# hour never reads a user id; the hash's version is in the file's metadata, and a reader recomputes on a mismatch.
COMPACTED_SCHEMA = EVENT_SCHEMA.append(pa.field("user_key", pa.uint64())).with_metadata({USER_KEY_META: HASH_VERSION})
Hook = Callable[[str], None]
"""Called at each step (``output`` after each new file, ``written``, ``switched``, ``deleting``): tests crash there."""


@dataclass
class CompactionResult:
    """What one compaction of an hour did (``files_out`` empty and ``reason`` set when there was nothing to do)."""

    hour: datetime
    generation: int = 0
    files_in: int = 0
    files_out: list[str] = field(default_factory=list)
    events: int = 0
    duplicates: int = 0
    invalid: int = 0
    quarantined: int = 0
    deleted: int = 0
    bytes_out: int = 0
    reason: str = ""

    def as_row(self) -> dict[str, object]:
        """The result as JSON-ready values."""
        return {
            "hour": self.hour.isoformat(),
            "generation": self.generation,
            "files_in": self.files_in,
            "files_out": len(self.files_out),
            "events": self.events,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "quarantined": self.quarantined,
            "deleted": self.deleted,
            "bytes_out": self.bytes_out,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ArchivePlaces:
    """The prefixes one trend job reads and writes: archive, rejected lines, quarantined files."""

    archive: str
    rejected: str
    quarantine: str


def compact_hour(
    store: ObjectStore,
    places: ArchivePlaces,
    hour: datetime,
    target_bytes: int = 64 << 20,
    hook: Hook | None = None,
    source: FileSource | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> CompactionResult:
    """Compact one closed hour (see the module docstring); a second call with nothing new only tidies up."""
    step = hook or (lambda point: None)
    source = source or StoreSource(store)
    listing = list_hour(store, places.archive, hour)
    manifest = listing.manifest or HourManifest()
    result = CompactionResult(hour, manifest.generation)
    small = listing.small
    if not small:
        result.deleted = _tidy(store, listing, step)
        result.reason = "nothing new to compact"
        return result
    compacted = [f for f in listing.files if f.compacted]
    # Files below the target are merged again, so every file stays at least the target or holds the whole hour.
    merge = [f for f in compacted if f.size < target_bytes] or sorted(compacted, key=lambda f: f.size)[:1]
    keep = [f for f in compacted if f not in merge]
    inputs = merge + small
    generation = manifest.generation + 1
    writer = _Outputs(
        store, places.archive, hour, generation, target_bytes, sum(f.size for f in inputs), row_group_rows, step
    )
    ids = HourIds(sum(f.size for f in inputs) // 10 + 1)
    for f in keep:  # their ids stay: a copy in a small file is a duplicate
        ids.remember(hash_ids(pq.read_table(source.random_access(f.key, f.size), columns=["event_id"])["event_id"]))
    reports: list[FileReport] = []
    try:
        for f in inputs:
            report = FileReport(f)
            reports.append(report)
            for table in read_archive_file(source, f, report):
                held = ids.admit(table, hash_ids(table["event_id"]))
                writer.add(table if held is None else table.filter(pa.array(~held)))
            writer.source_done(f, ids.release)
        writer.finish(ids.release)
    finally:
        writer.cleanup()
    result.quarantined = sum(1 for r in reports if r.quarantined)
    # Bad lines and unreadable files are recorded before the small files can go.
    write_rejected(store, places.rejected, reports)
    for r in reports:
        if r.quarantined:
            quarantine(store, places.quarantine, r.file, r.quarantined)
    step("written")

    new = HourManifest(
        generation=generation,
        files=[f.name for f in keep] + writer.names,
        replaced=dict(manifest.replaced),
        quarantined=dict(manifest.quarantined),
        events=sum(_rows(source, f) for f in keep) + writer.rows,
        duplicates=manifest.duplicates + ids.duplicates,
        invalid=manifest.invalid + sum(r.invalid for r in reports),
    )
    merged = {f.name: writer.home[f.key] for f in merge if f.key in writer.home}
    for name, target in list(new.replaced.items()):  # pointers into a merged file follow its events
        new.replaced[name] = merged.get(target, target)
    for r in reports:
        if r.file.compacted:
            continue
        if r.quarantined:
            new.quarantined[r.file.name] = r.quarantined
        if r.events or not r.quarantined:  # an unreadable file's events are nowhere: no pointer may say otherwise
            new.replaced[r.file.name] = writer.home[r.file.key]
    write_manifest(store, places.archive, hour, new)
    step("switched")

    result.generation = generation
    result.files_in = len(inputs)
    result.files_out = writer.names
    result.events = writer.rows
    result.duplicates = ids.duplicates
    result.invalid = sum(r.invalid for r in reports)
    result.bytes_out = writer.bytes
    result.deleted = _tidy(store, list_hour(store, places.archive, hour), step)
    return result


def _rows(source: FileSource, f: ArchiveFile) -> int:
    return int(pq.ParquetFile(source.random_access(f.key, f.size)).metadata.num_rows)


def _tidy(store: ObjectStore, listing: HourListing, step: Hook) -> int:
    """Delete what the hour's manifest replaced or never listed (a crashed compaction's files)."""
    if not listing.leftovers:
        return 0
    step("deleting")
    return store.delete_keys(listing.leftovers)


class _Outputs:
    """The new compacted files of one compaction, each input file whole in one of them.

    Rows go out in row groups of about ``row_group_rows``. An output is closed at an input file's end once it
    reaches the target and the inputs left are expected to fill another; it is uploaded once the next one is known
    to reach the target too, or merged with it at the end when that one falls short. So every file is at least the
    target, or the only file of the hour.
    """

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        hour: datetime,
        generation: int,
        target: int,
        input_bytes: int,
        row_group_rows: int = ROW_GROUP_ROWS,
        step: Hook | None = None,
    ) -> None:
        self.store, self.prefix, self.hour, self.target = store, prefix, hour, target
        self.row_group_rows = row_group_rows
        self.step = step or (lambda point: None)
        self.stem = f"{COMPACTED}g{generation:06d}-{uuid.uuid4().hex[:8]}"
        self.input_left = input_bytes
        self.input_in_file = 0
        self.names: list[str] = []
        self.home: dict[str, str] = {}  # input key -> output name
        self.rows = 0
        self.bytes = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="keyflow-compact-")
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._flushed_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._path = Path(self._tmp.name) / "open.parquet"
        self._sources: list[str] = []
        self._ready: tuple[Path, list[str]] | None = None  # closed, reaching the target, not uploaded yet
        self._count = 0

    def add(self, table: pa.Table) -> None:
        """Rows of the current input file."""
        if table.num_rows:
            table = table.select(EVENT_SCHEMA.names).append_column(
                "user_key", pa.array(hash_ids(table["user_id"]), pa.uint64())
            )
            self._pending.append(table.replace_schema_metadata(COMPACTED_SCHEMA.metadata))
            self._pending_rows += table.num_rows
            if self._pending_rows >= self.row_group_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self._path, COMPACTED_SCHEMA, compression="zstd", compression_level=1, use_dictionary=["action"]
            )
        self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._pending_rows)
        self._flushed_rows += self._pending_rows
        self.rows += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def _size(self) -> int:
        """The open output's size: what is written, plus the pending rows at the bytes a row took so far."""
        written = self._path.stat().st_size if self._writer is not None else 0
        per_row = written / self._flushed_rows if self._flushed_rows else 0
        return int(written + self._pending_rows * per_row)

    def source_done(self, f: ArchiveFile, release: Callable[[], pa.Table | None]) -> None:
        """``f`` is written whole into the open output; close it when both it and what is left reach the target."""
        self._sources.append(f.key)
        self.input_in_file += f.size
        self.input_left -= f.size
        if self._size() < self.target:
            return
        self._flush()  # measure it exactly
        size = self._size()
        if size >= self.target and self.input_left * size / max(self.input_in_file, 1) >= self.target:
            self._close(release)

    def _close(self, release: Callable[[], pa.Table | None]) -> None:
        held = release()  # the held first copies of this output's inputs go into it, beside their files' events
        if held is not None:
            self.add(held)
        self._flush()
        if self._writer is None:  # nothing to write (every input was empty or a duplicate)
            self._writer = pq.ParquetWriter(self._path, COMPACTED_SCHEMA)
        self._writer.close()
        self._writer = None
        closed = Path(self._tmp.name) / f"closed-{self._count}.parquet"
        self._count += 1
        self._path.rename(closed)
        if self._ready is not None:
            self._upload(*self._ready)
        self._ready = (closed, self._sources)
        self._sources, self._flushed_rows, self.input_in_file = [], 0, 0

    def _upload(self, path: Path, sources: list[str]) -> None:
        name = f"{self.stem}-{len(self.names):03d}.parquet"
        self.store.put_file(path, hour_prefix(self.prefix, self.hour) + name)
        self.bytes += path.stat().st_size
        path.unlink()
        for key in sources:
            self.home[key] = name
        self.names.append(name)
        self.step("output")

    def finish(self, release: Callable[[], pa.Table | None]) -> None:
        """Close and upload the last output (always one, so every input has a home)."""
        self._close(release)
        assert self._ready is not None
        last, sources = self._ready
        self._ready = None
        if self.names and last.stat().st_size < self.target:
            # Short of the target: it is merged into the previous output, which no manifest lists yet, so that file
            # can be written again.
            previous = self.names.pop()
            merged = Path(self._tmp.name) / "merged.parquet"
            with pq.ParquetWriter(merged, COMPACTED_SCHEMA, compression="zstd", compression_level=1) as writer:
                for path in (self._download(previous), last):
                    for group in range(pq.ParquetFile(path).num_row_groups):
                        writer.write_table(pq.ParquetFile(path).read_row_group(group))
            self.bytes -= self._downloaded_size  # uploaded again, merged, under the same name
            moved = [k for k, v in self.home.items() if v == previous]
            for k in moved:
                del self.home[k]
            last, sources = merged, moved + sources
        self._upload(last, sources)

    def _download(self, name: str) -> Path:
        path = Path(self._tmp.name) / "previous.parquet"
        path.write_bytes(self.store.get_bytes(hour_prefix(self.prefix, self.hour) + name))
        self._downloaded_size = path.stat().st_size
        return path

    def cleanup(self) -> None:
        """Remove the local files."""
        if self._writer is not None:
            self._writer.close()
        self._tmp.cleanup()
