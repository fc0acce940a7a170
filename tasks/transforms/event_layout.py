"""Ingestion's own line layout read without a JSON parser: the events trend counting needs, keyed, from byte offsets.

Event ingestion writes every archive line the same way (``tasks.transforms.events.jsonl``: compact separators, the
six fields in one order, times from ``isoformat``)::

    {"event_id":"…","ts":"2026-11-27T10:05:33+00:00","article_id":"…","user_id":"…","action":"click","received_at":"…"}

Such a line is read field by field: its skeleton (everything outside the six values) is compared 8 bytes at a time,
each value ends at its first quote, ids are hashed straight from their bytes (with
:func:`tasks.transforms.hashing.hash_ids`'s hash, so keys agree with every other reader), times are read from their
digits. No text column is built, which is what made a general JSON reader and its checks most of a trend run's CPU
time.

A line is taken here only when it is certainly an event that the general reader (:mod:`tasks.transforms.event_lines`)
would accept with the same values: plain ASCII without escapes or control bytes, the exact skeleton, non-empty ids
short enough to read in one go (48 bytes), a known action, and times in one of ``isoformat``'s UTC forms (``Z`` or
``+00:00``, whole seconds or six digits of fraction) that name a real date and time in 1970 or later. A line that is
all that but for its action is rejected here for it, in the general reader's words (the action is the first of its
rules such a line breaks). Every other line, good or bad (blank lines, numeric ids, other time zones, long ids, CRLF,
malformed ones), is left to the general reader, which decides it and says why; :func:`read_layout` returns which
lines those are.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from tasks.transforms.event_lines import ParsedLines, RejectedLine, parse_jsonl, shown_text
from tasks.transforms.events import ACTIONS
from tasks.transforms.hashing import HASH_LENGTH_SALT, hash_ids, mix64, power_tables
from tasks.transforms.trends import KEYED_SCHEMA, TS, ArticleNames, keyed_events, with_arrival

SKELETON = (b'{"event_id":"', b'","ts":"', b'","article_id":"', b'","user_id":"', b'","action":"', b'","received_at":"')
"""What comes before each value of a line in the layout; ``"}`` ends it."""
_LEAD = 24  # each field is read as one row of bytes from 24 before its value: its segment, then the value
_WIDTH = _LEAD + 48  # so values of up to 48 bytes (longer ones go to the general reader)
_PAD = _WIDTH + 8
_EPOCH_DAYS = 719_468  # days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar


def _template(text: bytes, at: int, digits: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words (little-endian, 8 bytes each) that test row bytes from ``at`` for ``text``.

    Returns which bytes must equal ``text``'s, their values, and which must be decimal digits (the places where
    ``text`` has a character listed in ``digits``).
    """
    mask, value, digit = np.zeros(_WIDTH, np.uint8), np.zeros(_WIDTH, np.uint8), np.zeros(_WIDTH, np.uint8)
    for i, ch in enumerate(text):
        if chr(ch) in digits:
            digit[at + i] = 0xFF
        else:
            mask[at + i], value[at + i] = 0xFF, ch
    return mask.view(np.uint64), value.view(np.uint64), digit.view(np.uint64)


_SEGMENTS = [_template(s, _LEAD - len(s)) for s in SKELETON]
_HIGH = np.uint64(0x8080808080808080)
_ZERO = np.uint64(0x3030303030303030)  # "0" in every byte
_NINE_UP = np.uint64(0x4646464646464646)  # pushes a byte above "9" past 0x7F
# isoformat's UTC times, by length: whole seconds or six digits of fraction, then "Z" or "+00:00".
_TIME_TEXTS = {
    20: b"DDDD-DD-DDTDD:DD:DDZ",
    25: b"DDDD-DD-DDTDD:DD:DD+00:00",
    27: b"DDDD-DD-DDTDD:DD:DD.DDDDDDZ",
    32: b"DDDD-DD-DDTDD:DD:DD.DDDDDD+00:00",
}
_TIME_LENGTHS = list(_TIME_TEXTS)
_TIME_KIND = np.full(_WIDTH + 1, len(_TIME_TEXTS), np.intp)  # length -> its form's row in the tables (else none)
_TIME_KIND[_TIME_LENGTHS] = np.arange(len(_TIME_TEXTS))
_TIME_WORDS = slice(_LEAD // 8, _LEAD // 8 + 4)
_TIME_TABLES = [np.stack([_template(t, _LEAD, "D")[i][_TIME_WORDS] for t in _TIME_TEXTS.values()]) for i in range(3)]
"""Masks, values and digit places of each form's four words."""
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], np.uint64)


@dataclass(frozen=True)
class Layout:
    """What :func:`read_layout` read from one chunk of whole lines.

    Row ``i`` of the arrays is the chunk's line ``line[i]`` (0-based, in line order). ``rest`` are the lines left to
    the general reader (0-based, ascending); ``starts``/``ends`` locate every line (``ends``: its newline, or the
    chunk's end). Lines neither read nor left are ``unknown_action``.
    """

    lines: int
    line: np.ndarray
    ts: np.ndarray  # epoch microseconds
    received_at: np.ndarray
    click: np.ndarray  # bool: "click", else "impression"
    event_hash: np.ndarray  # uint64, hash_ids of the event id
    user_key: np.ndarray
    article_key: np.ndarray
    article_start: np.ndarray  # byte span of each article id in the chunk
    article_end: np.ndarray
    rest: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    unknown_action: np.ndarray  # lines in the layout but for an unknown action: rejected for it
    action_start: np.ndarray  # byte span of each of their actions
    action_end: np.ndarray


def _word(text: bytes) -> np.uint64:
    """``text`` (at most 8 bytes) as the little-endian word that holds it, zero-padded."""
    return np.uint64(int.from_bytes(text.ljust(8, b"\0"), "little"))


def _rows(data: np.ndarray) -> np.ndarray:
    """A view of ``data`` whose row ``p`` is the :data:`_WIDTH` bytes from offset ``p`` (no copy)."""
    return np.lib.stride_tricks.as_strided(data, shape=(len(data) - _WIDTH, _WIDTH), strides=(1, 1), writeable=False)


def _words_ok(words: np.ndarray, mask: np.ndarray, value: np.ndarray, digit: np.ndarray) -> np.ndarray:
    """Rows whose words hold ``value`` under ``mask`` and a decimal digit in every byte of ``digit``.

    The arrays broadcast: one template for all rows, or one per row. Lines are ASCII, so a byte plus 0x46 carries
    into its high bit exactly when it is above "9", and minus 0x30 borrows into it exactly when it is below "0".
    """
    bad = (words & mask) ^ value
    x = words & digit
    with np.errstate(over="ignore"):
        bad |= ((x - (_ZERO & digit)) | (x + (_NINE_UP & digit))) & (_HIGH & digit)
    return bad == 0


def _hash_values(words: np.ndarray, length: np.ndarray) -> np.ndarray:
    """:func:`hash_ids` of texts held in rows of words (each text's first ``length`` bytes)."""
    n_words = (int(length.max()) + 7) // 8 if len(length) else 0
    keep = np.clip(length[:, None] - 8 * np.arange(n_words), 0, 8)
    values = (words[:, :n_words] & _BYTE_MASKS[keep]).view(np.uint8).astype(np.uint64)
    pw, _ = power_tables(8 * n_words + 1)
    with np.errstate(over="ignore"):
        raw = np.einsum("ij,j->i", values, pw[: 8 * n_words])
        raw ^= length.astype(np.uint64) * HASH_LENGTH_SALT
    return mix64(raw)


def _number(d: np.ndarray, at: int, n: int) -> np.ndarray:
    """The decimal number of the ``n`` digit bytes from byte ``at`` of words whose digit bytes hold their value."""
    out = (d >> np.uint64(8 * at)) & np.uint64(0xFF)
    for i in range(1, n):
        out = out * np.uint64(10) + ((d >> np.uint64(8 * (at + i))) & np.uint64(0xFF))
    return out.astype(np.int64)


_DATE_HOUR = np.uint64((1 << 40) - 1)  # of a time's second word: "DDTHH", the rest of its date and hour


def _times(words: np.ndarray, length: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch microseconds of ``isoformat`` UTC times (row words from :data:`_LEAD`), and which are certainly good.

    Only ``rows`` are read (the others are not good).

    Each form (length) present is read with one template for its rows: nearly always one form for a whole chunk,
    and ``isoformat`` leaves out a zero fraction, so a second one is few rows.
    """
    kinds = np.where(rows, _TIME_KIND[length], len(_TIME_TEXTS))  # only ``rows`` are read
    w = np.ascontiguousarray(words[:, _LEAD // 8 : _LEAD // 8 + 4].T)  # a row of words is a cache line
    counts = np.bincount(kinds, minlength=len(_TIME_TEXTS) + 1)
    present = np.flatnonzero(counts[: len(_TIME_TEXTS)])
    if len(present) == 1:
        return _times_of(w, int(present[0]), kinds == present[0])
    us, ok = np.zeros(len(length), np.int64), np.zeros(len(length), bool)
    for kind in present.tolist():
        rows = np.flatnonzero(kinds == kind)
        us[rows], ok[rows] = _times_of(w[:, rows], kind, np.ones(len(rows), bool))
    return us, ok


def _times_of(w: np.ndarray, kind: int, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_times` for times of one form (``w``: their four words, one row each; ``ok``: the rows to read).

    The date and hour (the first 13 bytes) are nearly always one for all of them (a file holds an hour of event
    times): they are read once, and each time only for its minutes, seconds, fraction and zone.
    """
    d: list[np.ndarray] = list(w)  # then: digit bytes hold their value, other bytes zero
    for i in (1, 2, 3):  # from the 14th byte: ":MM:SS", a fraction, the zone
        mask, value, digit = (t[kind, i] for t in _TIME_TABLES)
        if i == 1:
            mask, value, digit = mask & ~_DATE_HOUR, value & ~_DATE_HOUR, digit & ~_DATE_HOUR
        if not (mask | digit):
            continue
        ok &= _words_ok(w[i], mask, value, digit)
        with np.errstate(over="ignore"):
            d[i] = (w[i] & digit) - (_ZERO & digit)
    minute, second = _number(d[1], 6, 2), _number(d[2], 1, 2)
    ok &= (minute <= 59) & (second <= 59)
    us = (minute * 60 + second) * 1_000_000
    if _TIME_LENGTHS[kind] in (27, 32):  # six digits of fraction
        us += _number(d[2], 4, 4) * 100 + _number(d[3], 0, 2)
    good = np.flatnonzero(ok)
    if not len(good):
        return us, ok
    # The date and hour of the first good row, and the rows whose date and hour are other (read one by one).
    date_hour = w[1] & _DATE_HOUR
    first = good[:1]
    same = (w[0] == w[0, first[0]]) & (date_hour == date_hour[first[0]])
    hour_us, hour_ok = _date_hour(w[0, first], w[1, first])
    us += hour_us[0]
    ok &= same & hour_ok[0] | ~same
    other = np.flatnonzero(ok & ~same)
    if len(other):
        other_us, other_ok = _date_hour(w[0, other], w[1, other])
        us[other] += other_us - hour_us[0]
        ok[other] &= other_ok
    return us, ok


def _date_hour(w0: np.ndarray, w1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hour ``YYYY-MM-DDTHH`` (a time's first two words) in epoch microseconds, and whether it is a real one."""
    mask, value, digit = (t[0] for t in _TIME_TABLES)  # every form starts alike
    ok = _words_ok(w0, mask[0], value[0], digit[0])
    ok &= _words_ok(w1, mask[1] & _DATE_HOUR, value[1] & _DATE_HOUR, digit[1] & _DATE_HOUR)
    with np.errstate(over="ignore"):
        d0, d1 = (w0 & digit[0]) - (_ZERO & digit[0]), (w1 & digit[1]) - (_ZERO & digit[1])
    year = _number(d0, 0, 2) * 100 + _number(d0, 2, 2)
    month, day, hour = _number(d0, 5, 2), _number(d1, 0, 2), _number(d1, 3, 2)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(month, 0, 12)]
    month_days = month_days + ((month == 2) & leap)
    ok &= (year >= 1970) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days) & (hour <= 23)
    # Days from the civil date (H. Hinnant's algorithm), years counted from March.
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - _EPOCH_DAYS
    return (days * 24 + hour) * 3_600_000_000, ok


_buffers = threading.local()


def _padded(chunk: bytes) -> np.ndarray:
    """``chunk`` with :data:`_LEAD` zero bytes before it and :data:`_PAD` after, in this thread's reused buffer."""
    need = _LEAD + len(chunk) + _PAD
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < need:
        buf = _buffers.buf = np.zeros(max(need, 1 << 20) * 5 // 4, np.uint8)
    buf[:_LEAD] = 0
    buf[_LEAD : _LEAD + len(chunk)] = np.frombuffer(chunk, np.uint8)
    buf[_LEAD + len(chunk) : need] = 0
    return buf[:need]


def read_layout(chunk: bytes) -> Layout:
    """Read the lines of ``chunk`` (whole lines) that are in ingestion's layout; see the module docstring."""
    padded = _padded(chunk)
    size = len(chunk)
    data = padded[_LEAD : _LEAD + size]
    rows = _rows(padded)  # row p: the chunk's bytes from p - _LEAD
    ends = np.flatnonzero(data == 10)
    if size and chunk[-1] != 10:
        ends = np.append(ends, size)
    lines = len(ends)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    # Lines holding a control byte, an escape or a non-ASCII byte go to the general reader.
    fit = ends > starts
    odd: list[np.ndarray] = []
    if np.count_nonzero(data < 32) > len(ends) - (size and chunk[-1] != 10):
        odd.append(np.flatnonzero((data < 32) & (data != 10)))
    if not chunk.isascii():
        odd.append(np.flatnonzero(data >= 128))
    if b"\\" in chunk:
        odd.append(np.flatnonzero(data == 92))
    if odd:
        fit[np.searchsorted(ends, np.concatenate(odd))] = False
    cand = np.flatnonzero(fit)
    line_start, line_end = starts[cand], ends[cand]
    # Field by field: its segment, then its value up to the first quote (so no value holds a quote).
    ok = np.ones(len(cand), bool)
    last_row = len(rows) - 1
    at = line_start
    words: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    value_starts: list[np.ndarray] = []
    for k, (mask, value, _) in enumerate(_SEGMENTS):
        value_at = np.minimum(at + len(SKELETON[k]), last_row)
        g = rows[value_at]
        w = g.view(np.uint64)
        for i in range(_LEAD // 8):
            if mask[i]:
                ok &= (w[:, i] & mask[i]) == value[i]
        length = (g[:, _LEAD:] == ord('"')).argmax(axis=1)  # 0 when no quote: refused, as an empty value is
        ok &= length > 0
        words.append(w)
        lengths.append(length)
        value_starts.append(value_at)
        at = value_at + length  # the value's closing quote
    ok &= (at + 2 == line_end) & (data[np.minimum(at + 1, size - 1)] == ord("}"))
    action, action_len = words[4][:, _LEAD // 8 :], lengths[4]
    click = (action_len == 5) & ((action[:, 0] & _BYTE_MASKS[5]) == _word(b"click"))
    impression = (
        (action_len == 10) & (action[:, 0] == _word(b"impressi")) & ((action[:, 1] & _BYTE_MASKS[2]) == _word(b"on"))
    )
    # A line in the layout whose only fault may be its action: the general reader's first reason is the action
    # (no field is missing, no id is too long), so it is rejected here, whatever its times.
    unknown = np.flatnonzero(ok & ~(click | impression))
    ok &= click | impression
    ts, ts_ok = _times(words[1], lengths[1], ok)
    received, received_ok = _times(words[5], lengths[5], ok)
    ok &= ts_ok & received_ok
    keep: slice | np.ndarray = slice(None) if ok.all() else np.flatnonzero(ok)
    taken = cand[keep]
    rest_mask = np.ones(lines, bool)
    rest_mask[taken] = False
    rest_mask[cand[unknown]] = False
    rest_rows = np.flatnonzero(rest_mask)

    def ids(k: int) -> np.ndarray:
        return _hash_values(words[k][keep, _LEAD // 8 :], lengths[k][keep])

    article_start = value_starts[2][keep]
    return Layout(
        lines=lines,
        line=taken,
        ts=ts[keep],
        received_at=received[keep],
        click=click[keep],
        event_hash=ids(0),
        user_key=ids(3),
        article_key=ids(2),
        article_start=article_start,
        article_end=article_start + lengths[2][keep],
        rest=rest_rows,
        starts=starts,
        ends=ends,
        unknown_action=cand[unknown],
        action_start=value_starts[4][unknown],
        action_end=value_starts[4][unknown] + action_len[unknown],
    )


COUNT_SCHEMA = KEYED_SCHEMA.remove(KEYED_SCHEMA.get_field_index("held"))
"""What :func:`keyed_lines` returns: the events as counting reads them, before the duplicate filter marks any."""


@dataclass(frozen=True)
class KeyedLines:
    """Events of one chunk of lines as counting reads them.

    The events are :data:`COUNT_SCHEMA` rows in line order, with the hashes of their event ids; the lines rejected
    are those :func:`tasks.transforms.event_lines.parse_jsonl` rejects, for the same reasons.
    """

    events: pa.Table
    hashes: np.ndarray
    rejected: list[RejectedLine]
    lines: int
    in_layout: int  # lines read by the layout; 0 says the file is not ingestion's (read it all the general way)


def keyed_lines(
    chunk: bytes, first_line: int, names: ArticleNames, arrived: datetime | None, layout: bool = True
) -> KeyedLines:
    """Whole JSON lines (``chunk``, whose first line is line ``first_line`` of its file) as keyed events.

    Lines in ingestion's layout are read by :func:`read_layout`, the others by the general reader (all of them
    without ``layout``); either way a line gives the event, the keys and the rejection the general reader would.
    Article names go to ``names``; events without ``received_at`` take ``arrived``.
    """
    if not layout:
        return _keyed_general(parse_jsonl(chunk, first_line), names, arrived)
    read = read_layout(chunk)
    n = len(read.line)
    if not n:
        return _keyed_general(parse_jsonl(chunk, first_line), names, arrived)
    names.add_new(
        read.article_key,
        lambda at: [chunk[s:e].decode() for s, e in zip(read.article_start[at], read.article_end[at], strict=True)],
    )
    fast = pa.Table.from_arrays(
        [
            pa.Array.from_buffers(TS, n, [None, pa.py_buffer(read.ts)]),
            pa.Array.from_buffers(TS, n, [None, pa.py_buffer(read.received_at)]),
            pa.array(read.click),
            pa.array(read.user_key),
            pa.array(read.article_key),
        ],
        schema=COUNT_SCHEMA,
    )
    rejected = [
        RejectedLine(
            first_line + i,
            f"unknown action {chunk[a:b].decode()!r} (known: {', '.join(ACTIONS)})",
            shown_text(chunk[s:e]),
        )
        for i, a, b, s, e in zip(
            read.unknown_action.tolist(),
            read.action_start.tolist(),
            read.action_end.tolist(),
            read.starts[read.unknown_action].tolist(),
            read.ends[read.unknown_action].tolist(),
            strict=True,
        )
    ]
    if not len(read.rest):
        return KeyedLines(fast, read.event_hash, rejected, read.lines, n)
    # The other lines, back to back, to the general reader; its line r is the chunk's line rest[r - 1].
    rest = b"\n".join(chunk[read.starts[i] : read.ends[i]] for i in read.rest.tolist()) + b"\n"
    parsed = parse_jsonl(rest, 1)
    file_line = first_line + read.rest
    rejected += [RejectedLine(int(file_line[r.line - 1]), r.reason, r.text) for r in parsed.rejected]
    rejected.sort(key=lambda r: r.line)
    if not parsed.events.num_rows or parsed.numbers is None:
        return KeyedLines(fast, read.event_hash, rejected, read.lines, n)
    general = _keyed_general(parsed, names, arrived)
    # Back in line order: within a file, the first copy of an id is the one that counts.
    order = np.argsort(np.concatenate((read.line, read.rest[parsed.numbers - 1])), kind="stable")
    events = pa.concat_tables([fast, general.events]).take(pa.array(order))
    hashes = np.concatenate((read.event_hash, general.hashes))[order]
    return KeyedLines(events, hashes, rejected, read.lines, n)


def _keyed_general(parsed: ParsedLines, names: ArticleNames, arrived: datetime | None) -> KeyedLines:
    """What the general reader made of some lines, keyed."""
    if not parsed.events.num_rows:
        return KeyedLines(COUNT_SCHEMA.empty_table(), np.zeros(0, np.uint64), parsed.rejected, parsed.lines, 0)
    keyed = keyed_events(with_arrival(parsed.events, arrived), names).select(COUNT_SCHEMA.names)
    return KeyedLines(keyed, hash_ids(parsed.events["event_id"]), parsed.rejected, parsed.lines, 0)
