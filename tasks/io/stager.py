"""Write Arrow batches as compressed CSV or Parquet part files and upload them; memory stays at one batch.

Every upload of a staged object passes the process-wide :data:`GATE`. When the process is interrupted (SIGINT,
SIGTERM), the gate closes: uploads in flight finish, no new one starts, and the local part folders are known, so
the interrupt can remove everything the run staged without a part landing after the removal.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import zstandard

from config.errors import KeyFailedError
from tasks.io.objectstore import ObjectStore
from tasks.transforms.arrow import csv_write_options
from tasks.transforms.staging import StagedPart, part_name

ROW_GROUP_BYTES = 16 << 20  # Parquet: batches are gathered up to this much Arrow memory per row group

LOCAL_PREFIX = "keyflow-stage-"
"""Local part folders are ``<tmp>/keyflow-stage-<pid>-…``: ``keyflow cleanup`` removes those of dead processes."""


class StagingStopped(KeyFailedError):
    """The process is being interrupted: no staged object is uploaded any more."""


class StagingGate:
    """Lets staged uploads through until :meth:`close`; knows the local part folders of the process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()  # re-entrant: a signal handler may run on a thread holding it
        self._in_flight = 0
        self._closed = False
        self._folders: set[str] = set()

    @property
    def closed(self) -> bool:
        """Whether an interrupt closed the gate."""
        return self._closed

    def check(self) -> None:
        """Raise :class:`StagingStopped` once the gate is closed."""
        if self._closed:
            raise StagingStopped("interrupted: staging stopped")

    @contextmanager
    def upload(self) -> Iterator[None]:
        """Hold the gate open for one upload (refused once closed; :meth:`close` waits for it)."""
        with self._cond:
            self.check()
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def close(self, timeout: float = 30.0) -> bool:
        """Refuse new uploads and wait up to ``timeout`` seconds for those in flight; True when none is left."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)

    def reopen(self) -> None:
        """Let uploads through again (a process that goes on after an interrupt: tests)."""
        with self._cond:
            self._closed = False

    def track(self, folder: str) -> None:
        """Remember a local part folder until it is removed."""
        with self._cond:
            self._folders.add(folder)

    def untrack(self, folder: str) -> None:
        """Forget a local part folder (it was removed)."""
        with self._cond:
            self._folders.discard(folder)

    def remove_folders(self) -> int:
        """Remove every local part folder still there; returns how many."""
        with self._cond:
            folders, self._folders = sorted(self._folders), set()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        return len(folders)


GATE = StagingGate()
"""The process's gate: every staged upload passes it (parts here, manifests and leases in the tasks)."""


def stop_if_interrupted() -> None:
    """Raise :class:`StagingStopped` once this process is being interrupted.

    A function, not ``GATE.check``, for task bodies: a task shipped to a Dask worker pickles what its body names,
    and the gate's lock does not pickle.
    """
    GATE.check()


def _compressor(raw: IO[bytes], compression: str, level: int) -> IO[bytes]:
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=min(level, 9), mtime=0)  # type: ignore[return-value]
    return raw


class PartWriter:
    """Rotates part files every ``part_rows`` rows; each part is uploaded (with SSE) as soon as it is closed.

    ``fmt`` ``csv``: one compressed CSV stream per part. ``parquet``: each batch written becomes a row group as it
    streams (columns compressed with ``compression`` inside the file), typed as ``schema``.
    """

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        schema: pa.Schema,
        compression: str = "zstd",
        level: int = 1,
        part_rows: int = 250_000,
        fmt: str = "csv",
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.schema = schema
        self.compression = compression
        self.level = level
        self.part_rows = part_rows
        self.format = fmt
        self.parts: list[StagedPart] = []
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{LOCAL_PREFIX}{os.getpid()}-")
        GATE.track(self._tmp.name)
        self._file: IO[bytes] | None = None
        self._stream: Any = None
        self._path = Path(self._tmp.name)
        self._writer: Any = None
        self._rows = 0
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0

    def _open(self) -> None:
        path = Path(self._tmp.name) / f"part-{len(self.parts):05d}"
        self._path = path
        self._rows = 0
        if self.format == "parquet":
            self._file = self._stream = None
            codec = "none" if self.compression == "none" else self.compression
            level = min(self.level, 9) if codec == "gzip" else (self.level if codec == "zstd" else None)
            # Dictionaries pay off for repeated text (keys, codes), rarely for measures: text columns only.
            text = [f.name for f in self.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            import pyarrow.parquet as pq  # 8 MB of RSS: loaded only by a Parquet stage, never by CSV or passthrough

            self._writer = pq.ParquetWriter(
                str(path), self.schema, compression=codec, compression_level=level, use_dictionary=text
            )
            return
        if self.compression == "zstd" and self.level == 1:
            # Arrow's own zstd stream (level 1) keeps CSV writing and compression in C++, no Python call per chunk.
            self._file = None
            self._stream = pa.CompressedOutputStream(str(path), "zstd")
        else:
            self._file = path.open("wb")
            self._stream = _compressor(self._file, self.compression, self.level)
        self._writer = pacsv.CSVWriter(self._stream, self.schema, write_options=csv_write_options())
        self._rows = 0

    def _close_part(self) -> None:
        if self._writer is None or (self._stream is None and self.format != "parquet"):
            return
        self._flush()
        self._writer.close()
        if self._stream is not None and self._stream is not self._file:
            self._stream.close()
        if self._file is not None:
            self._file.close()
        path = self._path
        key = part_name(self.prefix, len(self.parts), self.compression, self.format)
        with GATE.upload():
            self.store.put_file(path, key)
        self.parts.append(StagedPart(key=key, rows=self._rows, bytes=path.stat().st_size))
        path.unlink()
        self._writer = self._file = self._stream = None

    def write(self, table: pa.Table) -> None:
        """Append rows, starting new parts as they fill (refused once the process is interrupted)."""
        GATE.check()
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                self._open()
            take = min(self.part_rows - self._rows, table.num_rows - offset)
            if self.format == "parquet":
                self._buffer(table.slice(offset, take))
            else:
                self._writer.write_table(table.slice(offset, take))
            self._rows += take
            offset += take
            if self._rows >= self.part_rows:
                self._close_part()

    def _buffer(self, table: pa.Table) -> None:
        # A source hands over batches of a few hundred rows; a row group that small costs a column chunk, its
        # statistics and a dictionary per column (7.5 s a key on the 600-column benchmark, and larger files), so
        # batches are gathered up to ROW_GROUP_BYTES before each row group is written.
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        if self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            group = pa.concat_tables(self._pending)
            self._writer.write_table(group, row_group_size=group.num_rows)
        self._pending, self._pending_bytes = [], 0

    def close(self) -> list[StagedPart]:
        """Flush the last part; a key with no rows still gets one (header-only) part so loads are uniform."""
        if self._writer is None and not self.parts:
            self._open()
        self._close_part()
        self._remove_folder()
        return self.parts

    def abort(self) -> None:
        """Drop local files after a failure (uploaded parts are removed with the run prefix)."""
        for f in (self._writer if self.format == "parquet" else None, self._stream, self._file):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass
        self._remove_folder()

    def _remove_folder(self) -> None:
        GATE.untrack(self._tmp.name)
        with suppress(OSError):  # an interrupt removed it already
            self._tmp.cleanup()
