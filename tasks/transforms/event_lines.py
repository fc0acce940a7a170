"""Archive files to events: JSON lines checked line by line, event ids counted once per hour partition. Pure.

**Lines.** A chunk of whole JSON lines is parsed by Arrow's JSON reader in one call. When Arrow refuses it (a line
that is not JSON, an id written as a number…), the chunk's lines are located (a line is the file's physical line,
blank lines included) and the lines Arrow cannot take are read one by one with :mod:`json`, under the rules event
ingestion applies to a message (``tasks.transforms.events``): ids may be strings or integers, ``ts`` an ISO 8601 time
or epoch seconds. Every line then passes the same vectorised checks; a line that fails one is a
:class:`RejectedLine` with its 1-based line number and the reason, never an error of its file.

**Ids.** An event id is hashed to 64 bits (:func:`hash_ids`); :class:`HourIds` admits each hash once per hour
partition. A line without an id is identified by its content (``kf-`` and the hash of its fields), so a file that
lands twice is still counted once.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from tasks.transforms.events import ACTIONS
from tasks.transforms.hashing import hash_ids
from tasks.transforms.trends import EVENT_SCHEMA, TS

FIELDS = tuple(EVENT_SCHEMA.names)  # event_id, ts, article_id, user_id, action, received_at
TEXT_SCHEMA = pa.schema([(name, pa.string()) for name in FIELDS])
"""How lines are parsed: every field as text, typed after the checks (a bad time fails its line, not its chunk)."""
MAX_ID_CHARS = 256  # as ingestion: longer ids are refused
MAX_TEXT_CHARS = 1024  # of a rejected line, as written to the rejected file
_READ = pajson.ParseOptions(explicit_schema=TEXT_SCHEMA, unexpected_field_behavior="ignore")
_ROW = re.compile(r" in row (\d+)")
_ISO_LIKE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
_KNOWN = pa.array(list(ACTIONS))


@dataclass(frozen=True)
class RejectedLine:
    """A line that is not a usable event: where it is (1-based physical line of its file), why, and its text."""

    line: int
    reason: str
    text: str

    def as_json(self) -> dict[str, Any]:
        """The record written to the rejected file (the file's key is added by the writer)."""
        return {"line": self.line, "reason": self.reason, "text": self.text}


@dataclass(frozen=True)
class ParsedLines:
    """Events of one chunk of lines (:data:`EVENT_SCHEMA`, ids filled in) and the lines rejected."""

    events: pa.Table
    rejected: list[RejectedLine]
    lines: int
    clean: bool = False  # every line one object, read by one Arrow call: the next chunk may well be too
    numbers: np.ndarray | None = None  # each event's line number (None: no event)

    @property
    def invalid(self) -> int:
        """How many lines were rejected."""
        return len(self.rejected)


def count_lines(chunk: bytes) -> int:
    """Physical lines in ``chunk``: a last line without its newline counts."""
    return chunk.count(b"\n") + (1 if chunk and not chunk.endswith(b"\n") else 0)


def parse_jsonl(chunk: bytes, first_line: int = 1, optimistic: bool = False) -> ParsedLines:
    """Parse whole JSON lines (``chunk`` ends at a line end) whose first line is line ``first_line`` of its file.

    Lines are located first (a scan for newlines costs a third of a parse): the lines that look like one object
    each go to Arrow together, in one call when nothing is wrong with them; blank lines are skipped; any other line,
    or one Arrow refuses, is read by :mod:`json` on its own. ``optimistic`` (the previous chunk was ``clean``) tries
    Arrow on the whole chunk first and locates lines only when that fails or a line is rejected.
    """
    if not chunk:
        return ParsedLines(EVENT_SCHEMA.empty_table(), [], 0, clean=True)
    if optimistic:
        lines = count_lines(chunk)
        # Every line starts with "{" (no blank line), and as many rows as lines: then each line is one row.
        braced = chunk.count(b"\n{") + chunk.startswith(b"{")
        try:
            table = _arrow(chunk) if braced == lines else None
        except pa.ArrowInvalid:
            table = None
        if table is not None and table.num_rows == lines:
            checked = check_lines(table, np.arange(first_line, first_line + lines), lambda wanted: [""] * len(wanted))
            if not checked.rejected:  # rows == lines and none rejected: no line number is ever needed
                return ParsedLines(checked.events, [], lines, clean=True, numbers=checked.numbers)
    return _parse_located(chunk, first_line)


def _arrow(data: bytes) -> pa.Table:
    opts = pajson.ReadOptions(block_size=len(data) + 1, use_threads=False)
    return pajson.read_json(pa.BufferReader(data), read_options=opts, parse_options=_READ)


def shown_text(raw: bytes) -> str:
    """A line as written to the rejected file: without its CR, cut to :data:`MAX_TEXT_CHARS`."""
    return raw.rstrip(b"\r")[:MAX_TEXT_CHARS].decode("utf-8", errors="replace")


def _parse_located(chunk: bytes, first_line: int) -> ParsedLines:
    """Locate every line; Arrow parses the lines that look like one object each, :mod:`json` the others."""
    data = np.frombuffer(chunk, np.uint8)
    ends = np.flatnonzero(data == 10)
    if not chunk.endswith(b"\n"):
        ends = np.append(ends, len(data))
    lines = len(ends)
    starts = np.concatenate(([0], ends[:-1] + 1))
    stop = ends.copy()
    cr = (stop > starts) & (data[np.maximum(stop - 1, 0)] == 13)
    stop[cr] -= 1  # a CRLF line ends before its CR
    length = stop - starts
    blank = length == 0
    nonempty = ~blank
    first_byte = np.zeros(lines, np.uint8)
    last_byte = np.zeros(lines, np.uint8)
    first_byte[nonempty] = data[starts[nonempty]]
    last_byte[nonempty] = data[stop[nonempty] - 1]
    simple = nonempty & (first_byte == ord("{")) & (last_byte == ord("}"))
    numbers = np.arange(first_line, first_line + lines)
    texts: list[pa.Table] = []
    text_lines: list[np.ndarray] = []
    by_json: list[int] = [int(i) for i in np.flatnonzero(nonempty & ~simple)]

    # The simple lines back to back, parsed by Arrow (a CR before the newline is whitespace to it); a line it
    # refuses goes to `json`, and the lines around it to Arrow again.
    keep = np.flatnonzero(simple)
    refused = 0
    if keep.size:
        size = ends - starts + (ends < len(data))  # each line's bytes with its newline
        if len(keep) == lines:
            clean = chunk
        else:  # the runs of simple lines, back to back (bad lines are rare: runs are long)
            edges = np.flatnonzero(np.diff(np.concatenate(([False], simple, [False])).astype(np.int8)))
            clean = b"".join(chunk[starts[a] : starts[b - 1] + size[b - 1]] for a, b in edges.reshape(-1, 2))
        offsets = np.concatenate(([0], np.cumsum(size[keep])))
        todo = [(0, len(keep))]
        while todo:
            a, b = todo.pop()
            if a >= b:
                continue
            part = clean[offsets[a] : offsets[b]]
            try:
                table = _arrow(part if part.endswith(b"\n") else part + b"\n")
            except pa.ArrowInvalid as exc:
                found = _ROW.search(str(exc))
                row = int(found.group(1)) if found else -1
                refused += 1
                if not 0 <= row < b - a or (refused > 16 and refused * 50 > len(keep)):
                    by_json += [int(i) for i in keep[a:b]]  # unplaceable, or too many refusals: line by line
                    continue
                by_json.append(int(keep[a + row]))
                todo += [(a + row + 1, b), (a, a + row)]
                continue
            if table.num_rows != b - a:  # two objects on one line: line by line
                by_json += [int(i) for i in keep[a:b]]
                continue
            texts.append(table)
            text_lines.append(numbers[keep[a:b]])

    rejected: list[RejectedLine] = []
    rows: list[dict[str, Any]] = []
    row_lines: list[int] = []
    for i in sorted(by_json):
        raw = chunk[starts[i] : stop[i]]
        fields = _json_line(raw)
        if isinstance(fields, str):
            if fields:  # "" marks a whitespace-only line: blank, not invalid
                rejected.append(RejectedLine(int(numbers[i]), fields, shown_text(raw)))
            continue
        rows.append(fields)
        row_lines.append(int(numbers[i]))
    if rows:
        texts.append(pa.Table.from_pylist(rows, schema=TEXT_SCHEMA))
        text_lines.append(np.array(row_lines, np.int64))
    if not texts:
        return ParsedLines(EVENT_SCHEMA.empty_table(), sorted(rejected, key=lambda r: r.line), lines)
    table = pa.concat_tables(texts)
    line_numbers = np.concatenate(text_lines)
    if len(texts) > 1:  # back in line order: within a file, the first copy of an id is the one that counts
        order = np.argsort(line_numbers, kind="stable")
        table, line_numbers = table.take(pa.array(order)), line_numbers[order]

    def text_of(wanted: Sequence[int]) -> list[str]:
        return [shown_text(chunk[starts[n - first_line] : stop[n - first_line]]) for n in wanted]

    checked = check_lines(table, line_numbers, text_of)
    one_pass = len(keep) == lines and refused == 0
    rejected = sorted(rejected + checked.rejected, key=lambda r: r.line)
    return ParsedLines(checked.events, rejected, lines, one_pass, checked.numbers)


def _json_line(raw: bytes) -> dict[str, str | None] | str:
    """One line read by :mod:`json`: its fields as text, or the reason it is not an event ("" when blank)."""
    if not raw.strip():
        return ""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"not JSON: {exc}"
    if not isinstance(data, dict):
        return f"not a JSON object: {type(data).__name__}"
    out: dict[str, str | None] = {}
    for name in FIELDS:
        value = data.get(name)
        if value is None or isinstance(value, str):
            out[name] = value
        elif name in ("ts", "received_at"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"bad {name!r}: must be an ISO 8601 time or epoch seconds"
            try:
                out[name] = datetime.fromtimestamp(float(value), tz=UTC).isoformat()
            except (ValueError, OverflowError, OSError) as exc:
                return f"bad {name!r}: {exc}"
        elif isinstance(value, int) and not isinstance(value, bool) and name != "action":
            out[name] = str(value)  # ingestion accepts integer ids
        else:
            return f"{name!r} must be a string, got {type(value).__name__}"
    return out


def check_lines(table: pa.Table, line_numbers: np.ndarray, texts: Callable[[Sequence[int]], list[str]]) -> ParsedLines:
    """Check parsed lines (:data:`TEXT_SCHEMA`, row i is line ``line_numbers[i]``) as ingestion checks a message.

    Returns the good ones typed as :data:`EVENT_SCHEMA` (a missing event id derived from the line's fields) and the
    others as :class:`RejectedLine` with the first reason that applies.
    """
    table = table.select(list(FIELDS)).combine_chunks()
    columns = {name: _one_array(table[name]) for name in FIELDS}
    ts, ok = _times(columns["ts"], required=True)
    received, received_ok = _times(columns["received_at"], required=False)
    ok &= received_ok
    ok &= _valid(pc.is_in(columns["action"], value_set=_KNOWN))
    long = np.zeros(table.num_rows, bool)
    for name in ("event_id", "article_id", "user_id"):
        size, present = _sizes(columns[name])
        if name != "event_id":
            ok &= present & (size > 0)
        over = present & (size > MAX_ID_CHARS)
        if over.any():  # bytes bound characters from above: only long ones are counted in characters
            long |= over & _valid(pc.greater(pc.utf8_length(columns[name]), MAX_ID_CHARS))
    ok &= ~long
    rejected: list[RejectedLine] = []
    numbers = line_numbers
    if not ok.all():
        numbers = line_numbers[ok]
        bad = np.flatnonzero(~ok)
        rows = table.take(pa.array(bad)).to_pylist()
        shown = texts([int(line_numbers[i]) for i in bad])
        for i, row, text in zip(bad, rows, shown, strict=True):
            rejected.append(RejectedLine(int(line_numbers[i]), _reason(row), text))
        keep = pa.array(ok)
        table, ts, received = table.filter(keep), ts.filter(keep), received.filter(keep)
    event_id = table["event_id"]
    if event_id.null_count or (_sizes(_one_array(event_id))[0] == 0).any():
        event_id = _with_derived_ids(table)
    events = pa.table(
        [event_id, ts, table["article_id"], table["user_id"], table["action"], received], schema=EVENT_SCHEMA
    )
    return ParsedLines(events, rejected, len(line_numbers), numbers=np.asarray(numbers, np.int64))


def _one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _valid(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean array as NumPy, null as False."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _present(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), bool)
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _sizes(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each text's length in bytes (from the offsets: no kernel), and whether it is there at all."""
    offsets = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, array.offset * 4)
    return np.diff(offsets), _present(array)


def _times(text: pa.Array, required: bool) -> tuple[pa.Array, np.ndarray]:
    """Text times as UTC timestamps, and whether each is usable: read, 1970 or later, and there when ``required``."""
    try:
        ts = pc.cast(text, TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ts = _times_one_by_one(text)
    present = _present(text)
    read = _present(ts)
    values = np.frombuffer(ts.buffers()[1], np.int64, len(ts), ts.offset) if len(ts) else np.zeros(0, np.int64)
    ok = (read == present) & (~read | (values >= 0))
    return ts, ok & present if required else ok


def _times_one_by_one(text: pa.Array) -> pa.Array:
    """The slow road for a chunk holding a time Arrow cannot read: ISO-looking values by Arrow, the rest by Python."""
    iso = pc.fill_null(pc.match_substring_regex(text, _ISO_LIKE), False)
    try:
        fast = pc.cast(pc.if_else(iso, text, pa.scalar(None, pa.string())), TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # an ISO-looking value that is no time (February 30)
        iso = pa.array(np.zeros(len(text), bool))
        fast = pa.nulls(len(text), TS)
    values = fast.to_pylist()
    odd = np.flatnonzero(~_valid(iso))
    raw = text.to_pylist()
    for i in odd:
        values[i] = _python_time(raw[i])
    return pa.array(values, TS)


def _python_time(value: str | None) -> datetime | None:
    """A time as ingestion reads one (``fromisoformat``, naive means UTC), or None when it is not one."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _reason(row: dict[str, Any]) -> str:
    """Why a parsed line is not an event: the first rule it breaks, in ingestion's words."""
    missing = [f for f in ("ts", "article_id", "user_id", "action") if row[f] in (None, "")]
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    for name in ("event_id", "article_id", "user_id"):
        if row[name] is not None and len(row[name]) > MAX_ID_CHARS:
            return f"{name!r} is longer than {MAX_ID_CHARS} characters"
    if row["action"] not in ACTIONS:
        return f"unknown action {row['action']!r} (known: {', '.join(ACTIONS)})"
    for name in ("ts", "received_at"):
        value = row[name]
        if value is None:
            continue
        t = _python_time(value)
        if t is None:
            return f"bad {name!r}: not an ISO 8601 time: {value!r}"
        if t.year < 1970:
            return f"bad {name!r}: {t.isoformat()} is before 1970"
    return "not an event"  # pragma: no cover - every failed check above has its reason


def _with_derived_ids(table: pa.Table) -> pa.ChunkedArray:
    """Event ids, a missing one derived from the line's fields: the same line always gets the same id."""
    event_id = table["event_id"]
    missing = pc.fill_null(pc.equal(event_id, ""), True)
    content = pc.binary_join_element_wise(
        *[pc.fill_null(table[name], "") for name in FIELDS if name != "event_id"], "\x1f"
    )
    derived = pc.binary_join_element_wise("kf-", pc.cast(pa.array(hash_ids(content)), pa.string()), "")
    return pc.if_else(missing, derived, event_id)


class HourIds:
    """The event ids of one hour partition: each is admitted once (the first copy read), the others are duplicates.

    Thread-safe. A bitset of about 16 bits an event says "certainly new" for nearly every event, which is counted at
    once; an event whose bit is already set (a duplicate, or a bit shared by chance) is held back, and
    :meth:`release` settles the held ones exactly, against the 64-bit hashes of every event admitted, once the
    hour's files are all read. Memory: 8 bytes an event plus the bitset and the held events (a few percent).
    """

    def __init__(self, expected_events: int = 0) -> None:
        self._lock = threading.Lock()
        self._bits_log2 = 0
        self._words = np.zeros(0, np.uint64)
        # One growing array, not a list of small ones: freed at the hour's end it goes back to the system at once.
        self._log = np.empty(max(expected_events, 1 << 12), np.uint64)
        self._logged = 0
        self._held: list[tuple[pa.Table, np.ndarray]] = []
        self._count = 0
        self.duplicates = 0
        self._resize(max(expected_events, 1 << 12))

    def _resize(self, events: int) -> None:
        self._bits_log2 = min(max(int(np.ceil(np.log2(events * 16))), 16), 30)
        self._words = np.zeros(1 << (self._bits_log2 - 6), np.uint64)
        self._set(self._log[: self._logged])
        for _, h in self._held:
            self._set(h)

    def _append(self, h: np.ndarray) -> None:
        if self._logged + len(h) > len(self._log):
            grown = np.empty(max(2 * len(self._log), self._logged + len(h)), np.uint64)
            grown[: self._logged] = self._log[: self._logged]
            self._log = grown
        self._log[self._logged : self._logged + len(h)] = h
        self._logged += len(h)

    def _bit_of(self, h: np.ndarray) -> np.ndarray:
        return h >> np.uint64(64 - self._bits_log2)

    def _set(self, h: np.ndarray, bits: np.ndarray | None = None) -> None:
        """Set the bits of hashes ``h`` (``bits``: their bits already sorted)."""
        if not len(h):
            return
        bits = np.sort(self._bit_of(h)) if bits is None else bits
        word = (bits >> np.uint64(6)).astype(np.intp)
        mask = np.left_shift(np.uint64(1), bits & np.uint64(63))
        starts = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
        self._words[word[starts]] |= np.bitwise_or.reduceat(mask, starts)

    def admit(self, events: pa.Table, hashes: np.ndarray | None = None) -> np.ndarray | None:
        """Admit the events that are certainly first copies; hold the others back for :meth:`release`.

        Args:
            events: a batch with an ``event_id`` column.
            hashes: the ids' :func:`hash_ids`, when the caller has them.

        Returns:
            Which events were held back (None when none was): they must not be counted now.
        """
        if events.num_rows == 0:
            return None
        h = hash_ids(events["event_id"]) if hashes is None else hashes
        with self._lock:
            if (self._count + len(h)) * 12 > (1 << self._bits_log2):  # past ~1/12 full: chance sharing would grow
                self._resize(4 * (self._count + len(h)))
            bit = self._bit_of(h)
            word = (bit >> np.uint64(6)).astype(np.intp)
            held = (self._words[word] & np.left_shift(np.uint64(1), bit & np.uint64(63))) != 0
            bits = np.sort(bit)
            again = bits[1:][bits[1:] == bits[:-1]]
            if again.size:  # two events of this batch share a bit: both are held, release decides
                held |= np.isin(bit, again)
            self._set(h, bits)
            self._count += len(h)
            if not held.any():
                self._append(h)
                return None
            self._append(h[~held])
            at = np.flatnonzero(held)
            self._held.append((events.take(pa.array(at)), h[at]))
            return held

    def remember(self, hashes: np.ndarray) -> None:
        """Take ids already counted elsewhere (a compacted file's): later copies of them are duplicates."""
        with self._lock:
            if (self._count + len(hashes)) * 12 > (1 << self._bits_log2):
                self._resize(4 * (self._count + len(hashes)))
            self._set(hashes)
            self._count += len(hashes)
            self._append(hashes)

    def release(self, last: bool = False) -> pa.Table | None:
        """The held events that are first copies (in the order read); the rest count as :attr:`duplicates`.

        With ``last`` (the hour's files are all read), the hashes and the bitset are freed as well.
        """
        with self._lock:
            try:
                return self._release()
            finally:
                if last:
                    self._log, self._logged, self._words = np.zeros(0, np.uint64), 0, np.zeros(0, np.uint64)

    def _release(self) -> pa.Table | None:
        if not self._held:
            return None
        table = pa.concat_tables([t for t, _ in self._held])
        h = np.concatenate([x for _, x in self._held])
        self._held = []
        candidates = pa.array(np.unique(h))
        admitted = pa.array(self._log[: self._logged])
        seen = admitted.filter(pc.is_in(admitted, value_set=candidates))
        dup = np.isin(h, np.asarray(seen.to_numpy())) if len(seen) else np.zeros(len(h), bool)
        keep = np.zeros(len(h), bool)
        rest = np.flatnonzero(~dup)
        _, first = np.unique(h[rest], return_index=True)
        keep[rest[np.sort(first)]] = True
        self._append(h[keep])
        self.duplicates += int(len(h) - keep.sum())
        return table.filter(pa.array(keep))
