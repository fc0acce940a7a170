"""Gzip JSON lines files inflated and read in worker processes, so that reading uses every core.

Reading a gzip JSON lines file for counting (inflate, then ingestion's layout read from bytes,
:func:`tasks.transforms.event_layout.keyed_lines`) is NumPy and ISA-L calls between which Python holds the GIL: two
reading threads kept about 1.45 of 2 cores busy. A :class:`LineWorker` is a small Python process (it imports NumPy,
pyarrow, ISA-L and the layout reader, never boto3, Prefect or the flow's modules) started with
:mod:`subprocess`, so it is never a fork of a process with live threads or event loops, and it works the same under
Prefect, in a test or from the CLI.

The flow's process still fetches the file (its object store client and credentials stay there) and sends the
compressed bytes to the worker; the worker sends back each chunk's keyed events, their event id hashes, the lines it
read and the lines it rejected, then the file's article names and, for a file that is not gzip JSON lines, why.
Duplicates are not settled in the worker: the flow's process admits each id against its hour's
:class:`tasks.transforms.event_lines.HourIds` as before, so an id read in two files counts once, exactly as when the
files are read by threads.

Messages in both directions are a pickle (protocol 5) whose arrays follow it as raw bytes, each copied once by the
pipe and never by pickling; lengths go first, as 8 bytes little-endian.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, Any

import pyarrow as pa
from isal import igzip, isal_zlib

from config.errors import KeyFailedError, RetryableError, first_line
from tasks.transforms.event_layout import keyed_lines
from tasks.transforms.trends import ArticleNames

CHUNK_BYTES = 2 << 20  # of inflated JSON lines parsed at once
SEND_BYTES = 1 << 20  # of compressed bytes sent to a worker at once
PIPE_BYTES = 1 << 20  # each pipe's capacity
_ISAL_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]  # its stubs call the class an instance
DAMAGE_ERRORS: tuple[type[Exception], ...] = (pa.ArrowInvalid, OSError, EOFError, _ISAL_ERROR)
"""What reading a damaged gzip file raises (``OSError`` covers ``gzip.BadGzipFile``)."""
_FRAME = struct.Struct("<Q")


def jsonl_chunks(raw: IO[bytes] | pa.NativeFile, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """A gzip JSON lines stream inflated as chunks of whole lines.

    Inflated by ISA-L (``isal``): a third of zlib's CPU time, which was a fifth of reading a file. A stream that is
    not gzip raises ``OSError``, a cut one ``EOFError``, a damaged one one of :data:`DAMAGE_ERRORS`.
    """
    stream = igzip.IGzipFile(fileobj=raw, mode="rb")
    tail = b""
    while True:
        data = stream.read(chunk_bytes)
        if not data:
            break
        cut = data.rfind(b"\n") + 1  # found in the new bytes: the chunk is copied once, not twice
        if cut == 0 and len(tail) + len(data) < 64 * chunk_bytes:
            tail += data  # one long line: keep reading until it ends (a runaway line is cut and rejected as such)
            continue
        cut = cut or len(data)
        if cut == len(data):
            chunk, tail = (tail + data if tail else data), b""
        else:
            chunk, tail = tail + data[:cut], data[cut:]
        yield chunk
    if tail:
        yield tail


def _send(out: IO[bytes], message: tuple[Any, ...]) -> None:
    """Write one message: its pickle, then the raw bytes of its arrays (pickle protocol 5's buffers, not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    out.write(_FRAME.pack(len(body)) + _FRAME.pack(len(raws)) + b"".join(_FRAME.pack(r.nbytes) for r in raws))
    out.write(body)
    for r in raws:
        out.write(r)
    out.flush()


def _receive(stream: IO[bytes]) -> tuple[Any, ...] | None:
    """The next message, or None when the other side closed the pipe."""
    head = stream.read(2 * _FRAME.size)
    if len(head) < 2 * _FRAME.size:
        return None
    size, n_buffers = _FRAME.unpack(head[: _FRAME.size])[0], _FRAME.unpack(head[_FRAME.size :])[0]
    sizes = stream.read(n_buffers * _FRAME.size)
    body = stream.read(size)
    if len(sizes) < n_buffers * _FRAME.size or len(body) < size:
        return None
    buffers = []
    for (n,) in struct.iter_unpack("<Q", sizes):
        buf = bytearray(n)
        if stream.readinto(buf) < n:  # type: ignore[attr-defined]
            return None
        buffers.append(buf)
    message: tuple[Any, ...] = pickle.loads(body, buffers=buffers)
    return message


# --- the worker's side


class _FileBytes:
    """The compressed bytes of one file as the parent sends them (``data`` frames up to ``end``), as a raw stream."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.ended = False
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._buf and not self.ended:
            message = _receive(self.stream)
            if message is None:
                raise SystemExit(0)  # the parent is gone
            if message[0] == "end":
                self.ended = True
            else:
                self._buf = memoryview(message[1])
        n = len(self._buf) if n is None or n < 0 else n
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while not self.ended:
            self._buf = memoryview(b"")
            self.read()


def _read_file(stream: IO[bytes], out: IO[bytes], uploaded: datetime | None, chunk_bytes: int) -> None:
    raw = _FileBytes(stream)
    names = ArticleNames()
    lines = 0
    damage = None
    chunks = jsonl_chunks(raw, chunk_bytes)
    layout = True
    while True:
        try:  # only inflating and reading tell a damaged file; a pipe that breaks ends the worker
            chunk = next(chunks, None)
            if chunk is None:
                break
            read = keyed_lines(chunk, lines + 1, names, uploaded, layout)
        except DAMAGE_ERRORS as exc:
            damage = first_line(exc)
            break
        layout = read.in_layout > 0
        lines += read.lines
        _send(out, ("events", read.events, read.hashes, read.lines, read.rejected))
    raw.drain()
    table = names.table()
    keys, ids = table["article_key"].to_numpy(), table["article_id"].combine_chunks()
    _send(out, ("done", keys, ids, damage))


def serve(stream: IO[bytes] | None = None, out: IO[bytes] | None = None) -> None:
    """A worker's loop: read the files sent on ``stream`` (stdin), answer on ``out`` (stdout), until stdin closes."""
    stream = stream or sys.stdin.buffer
    out = out or sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the answer pipe
    while True:
        message = _receive(stream)
        if message is None:
            return
        _, uploaded, chunk_bytes = message
        try:
            _read_file(stream, out, uploaded, chunk_bytes)
        except SystemExit:
            return
        except BaseException:  # a bug, not a damaged file: the parent fails the read with its last line
            text = traceback.format_exc()
            sys.stderr.write(text)
            _send(out, ("failed", text.strip().splitlines()[-1]))
            return


# --- the flow's side


class LineWorkerError(RetryableError):
    """A worker process ended while reading a file (retried: a killed process is usually transient)."""


class LineWorker:
    """One worker process; reads one file at a time (:meth:`read`)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.io.line_worker_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=1 << 20,
        )
        self.broken = False
        for pipe in (self.proc.stdin, self.proc.stdout):
            # A pipe holds 64 KiB, a chunk's events ~300 KB: with 1 MiB (Linux's limit without privileges) a worker
            # runs a few chunks ahead of the flow's process instead of waiting for it to read each one (measured:
            # 2.0-2.2 s of 9-11 s blocked on its pipes, 0.7-1.2 s with 1 MiB).
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[union-attr]

    def read(
        self,
        opener: Callable[[], IO[bytes] | pa.NativeFile],
        uploaded: datetime | None,
        chunk_bytes: int = CHUNK_BYTES,
        name: str = "",
    ) -> Iterator[tuple[str, Any]]:
        """Read one file (``name`` in messages) in the worker.

        Yields ``("events", (table, hashes, lines, rejected))`` per chunk, then one ``("done", (article keys,
        article names, damage))``. ``opener`` opens the file's compressed stream, read by a thread of this process
        that feeds the worker; what fetching raises is raised here, once the worker has read what came before. A
        worker that ends raises :class:`LineWorkerError`, one that fails ``KeyFailedError`` (its traceback goes to
        stderr). A read left unfinished (the consumer stopped) ends the worker.
        """
        assert self.proc.stdin is not None and self.proc.stdout is not None
        fetch_error: list[BaseException] = []
        stdin = self.proc.stdin

        def feed() -> None:
            try:
                _send(stdin, ("file", uploaded, chunk_bytes))
                with contextlib.closing(opener()) as raw:
                    while block := raw.read(SEND_BYTES):
                        _send(stdin, ("data", block))
            except BaseException as exc:  # raised by the reader (a broken pipe: the worker ended, it says so)
                fetch_error.append(exc)
            with contextlib.suppress(OSError, ValueError):  # the file ends here, whatever was sent of it
                _send(stdin, ("end",))

        feeder = threading.Thread(target=feed, name="keyflow-line-feeder", daemon=True)
        feeder.start()
        finished = False
        try:
            while True:
                message = _receive(self.proc.stdout)
                if message is None:
                    code = self.proc.wait()
                    raise LineWorkerError(f"read {name}: the line reader process ended (exit code {code})")
                if message[0] == "failed":
                    raise KeyFailedError(f"read {name}: the line reader process failed: {message[1]}")
                if message[0] == "done":
                    feeder.join()
                    if fetch_error:
                        raise fetch_error[0]
                    finished = True
                    yield "done", message[1:]
                    return
                yield "events", message[1:]
        finally:
            if not finished:
                self.broken = True
                self.close()
                feeder.join(timeout=5)

    def close(self) -> None:
        """End the process: an idle one exits when its input closes; one left in the middle of a file is killed."""
        if self.broken:
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class LineWorkers:
    """Up to ``size`` worker processes, started when first needed and reused file after file (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._idle: list[LineWorker] = []
        self._all: list[LineWorker] = []

    def start(self) -> None:
        """Start every worker now (their imports overlap other work of the flow's process)."""
        with self._lock:
            while len(self._all) < self.size:
                w = LineWorker()
                self._all.append(w)
                self._idle.append(w)

    @contextlib.contextmanager
    def worker(self) -> Iterator[LineWorker]:
        """An idle worker for one file; a worker left broken is ended and replaced next time."""
        with self._lock:
            w = self._idle.pop() if self._idle else None
            if w is not None and w.proc.poll() is not None:  # ended while idle (killed): start another
                self._all.remove(w)
                w.close()
                w = None
            if w is None:
                w = LineWorker()
                self._all.append(w)
        try:
            yield w
        finally:
            with self._lock:
                ended = w not in self._all  # the pool was closed while this worker read (the count failed)
                if ended or w.broken or w.proc.poll() is not None:
                    if not ended:
                        self._all.remove(w)
                    w.close()
                else:
                    self._idle.append(w)

    def close(self) -> None:
        """End every worker."""
        with self._lock:
            workers, self._all, self._idle = self._all, [], []
        for w in workers:
            w.close()
