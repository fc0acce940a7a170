"""Stage a source's CSV bytes as they come: counted, compressed and uploaded in parts, never parsed.

When every rule ran on the source, PostgreSQL's ``COPY (query) TO STDOUT WITH (FORMAT csv, HEADER true)`` already
writes what the warehouse load reads (a header line, NULL as an empty unquoted field, ``""`` for an empty string,
UTF-8): its bytes go to the compressor and the object store untouched. Records are counted on the way, quoted line
breaks included (:class:`~tasks.transforms.csvscan.CsvRecordCounter`), and parts are cut on record ends, each with
the header, so every part loads on its own as :class:`~tasks.io.stager.PartWriter`'s do. Memory is one chunk.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from config.errors import KeyFailedError
from tasks.io.objectstore import ObjectStore
from tasks.io.stager import GATE, LOCAL_PREFIX, _compressor
from tasks.transforms.csvscan import CsvRecordCounter
from tasks.transforms.staging import StagedPart, part_name


class CsvPassthroughWriter:
    """Writes a CSV byte stream (header first) into compressed parts of at most ``part_rows`` records each."""

    def __init__(
        self, store: ObjectStore, prefix: str, compression: str = "zstd", level: int = 1, part_rows: int = 250_000
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.compression = compression
        self.level = level
        self.part_rows = part_rows
        self.parts: list[StagedPart] = []
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{LOCAL_PREFIX}{os.getpid()}-")
        GATE.track(self._tmp.name)
        self._counter = CsvRecordCounter()
        self._header: bytes | None = None
        self._head = b""  # the header's bytes while it is still arriving
        self._file: IO[bytes] | None = None
        self._stream: Any = None
        self._path = Path(self._tmp.name)
        self._rows = 0
        self._tail = False  # bytes after the last record end (a last record without a newline)

    @property
    def rows(self) -> int:
        """Records staged so far (the header not counted)."""
        return sum(p.rows for p in self.parts) + self._rows

    def write(self, chunk: bytes) -> None:
        """Append bytes of the stream (refused once the process is interrupted)."""
        GATE.check()
        if self._header is None:
            n, used = self._counter.feed(chunk, 1)
            self._head += chunk[:used]
            if not n:
                return
            self._header, chunk = self._head, chunk[used:]
        while chunk:
            if self._stream is None:
                self._open()
            n, used = self._counter.feed(chunk, self.part_rows - self._rows)
            self._stream.write(chunk[:used])
            self._rows += n
            self._tail = used > 0 and chunk[used - 1] != 0x0A
            chunk = chunk[used:]
            if self._rows >= self.part_rows:
                self._close_part()

    def _open(self) -> None:
        self._path = Path(self._tmp.name) / f"part-{len(self.parts):05d}"
        self._file = self._path.open("wb")
        self._stream = _compressor(self._file, self.compression, self.level)
        self._stream.write(self._header or b"")
        self._rows = 0
        self._tail = False

    def _close_part(self) -> None:
        if self._stream is None:
            return
        if self._tail:  # a last record without its newline still counts
            if self._counter.inside:
                raise KeyFailedError("extract from source: the CSV stream ended inside a quoted field")
            self._stream.write(b"\n")
            self._rows += 1
            self._tail = False
        if self._stream is not self._file:
            self._stream.close()
        assert self._file is not None
        self._file.close()
        key = part_name(self.prefix, len(self.parts), self.compression)
        with GATE.upload():
            self.store.put_file(self._path, key)
        self.parts.append(StagedPart(key=key, rows=self._rows, bytes=self._path.stat().st_size))
        self._path.unlink()
        self._file = self._stream = None
        self._rows = 0

    def close(self) -> list[StagedPart]:
        """Flush the last part; a key with no rows still gets one header-only part, so loads are uniform."""
        if self._header is None:
            if self._head:
                raise KeyFailedError("extract from source: the CSV stream ended inside its header line")
            raise KeyFailedError("extract from source: the CSV stream had no header line")
        if self._stream is None and not self.parts:
            self._open()
        self._close_part()
        self._remove_folder()
        return self.parts

    def abort(self) -> None:
        """Drop local files after a failure (uploaded parts are removed with the run prefix)."""
        for f in (self._stream, self._file):
            with suppress(Exception):
                if f is not None:
                    f.close()
        self._remove_folder()

    def _remove_folder(self) -> None:
        GATE.untrack(self._tmp.name)
        with suppress(OSError):
            self._tmp.cleanup()
