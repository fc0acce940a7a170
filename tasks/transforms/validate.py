"""Landing files: decode, parse and check every row against the source's schema, vectorised. Pure.

A file that cannot be read as a whole (empty, truncated gzip, undecodable bytes, wrong header) raises
:class:`BadFile` with the reason, and is quarantined whole. Otherwise each row is either good (typed, ready to
upsert) or rejected with the first reason that applies, e.g. ``clicks: not an integer: 'x1'``; always
``rows in = good + rejected``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from config.errors import first_line
from config.models import FileColumn, FileSourceConfig
from config.types import parse_type
from tasks.transforms.types import arrow_type

LINE, REASON = "_line", "_reason"
_TRUE = ["true", "t", "1", "yes", "y"]
_FALSE = ["false", "f", "0", "no", "n"]
_INT_BOUNDS = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}


class BadFile(Exception):
    """The file cannot be read as a whole; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Checked:
    """The outcome of checking one file: typed good rows, and rejected rows as read plus line and reason."""

    good: pa.Table
    rejected: pa.Table

    @property
    def rows_in(self) -> int:
        """Rows read from the file, good and rejected."""
        return self.good.num_rows + self.rejected.num_rows


def decode(name: str, data: bytes, encoding: str) -> str:
    """The file's text: gunzipped when its name or magic says gzip, decoded strictly from ``encoding``."""
    if name.endswith(".gz") or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise BadFile(f"not a complete gzip file: {exc}") from None
    if not data.strip():
        raise BadFile("empty file")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise BadFile(f"undecodable bytes for {encoding}: {exc.reason} at byte {exc.start}") from None
    return text.removeprefix("\ufeff")


def read_rows(text: str, source: FileSourceConfig) -> pa.Table:
    """Every row as text (nulls for missing values), with its line number and any parse problem as its reason."""
    names = [c.name for c in source.columns]
    if source.format == "jsonl":
        return _read_jsonl(text, names)
    opts = source.csv
    problems: dict[int, str] = {}

    def bad_row(row: Any) -> str:
        problems[row.number] = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        return "skip"

    header: list[str] | None = None
    if opts.header:
        first = text.split("\n", 1)[0].rstrip("\r")
        header = [h.strip() for h in next(csv.reader([first], delimiter=opts.delimiter, quotechar=opts.quote), [])]
        missing = [n for n in names if n not in header]
        extra = [h for h in header if h not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing column(s) {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected column(s) {', '.join(extra)}")
            raise BadFile("wrong header: " + "; ".join(parts))
    cols = header or names
    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode()),
            read_options=pacsv.ReadOptions(column_names=cols, skip_rows=1 if opts.header else 0, use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=opts.delimiter, quote_char=opts.quote, newlines_in_values=True, invalid_row_handler=bad_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in cols},
                null_values=opts.null_values,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise BadFile(f"not readable as CSV: {first_line(exc)}") from None
    # Line numbers: Arrow numbers the rows it reads; rows it skipped are reported by number too.
    first_row = 2 if opts.header else 1
    kept = [n for n in range(first_row, first_row + table.num_rows + len(problems)) if n not in problems]
    table = table.select(names).append_column(LINE, pa.array(kept[: table.num_rows], pa.int64()))
    table = table.append_column(REASON, pa.nulls(table.num_rows, pa.string()))
    if problems:
        broken = pa.table(
            {
                **{n: pa.nulls(len(problems), pa.string()) for n in names},
                LINE: pa.array(list(problems), pa.int64()),
                REASON: pa.array(list(problems.values()), pa.string()),
            }
        )
        table = pa.concat_tables([table, broken]).sort_by(LINE)
    return table


def _read_jsonl(text: str, names: list[str]) -> pa.Table:
    rows: dict[str, list[Any]] = {n: [] for n in [*names, LINE, REASON]}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        reason = None
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                obj, reason = {}, f"not a JSON object: {type(obj).__name__}"
        except json.JSONDecodeError as exc:
            obj, reason = {}, f"not JSON: {exc.msg}"
        for n in names:
            v = obj.get(n)
            rows[n].append(
                None
                if v is None
                else (
                    json.dumps(v) if isinstance(v, dict | list) else str(v).lower() if isinstance(v, bool) else str(v)
                )
            )
        rows[LINE].append(number)
        rows[REASON].append(reason)
    if not rows[LINE]:
        raise BadFile("empty file")
    return pa.table({n: pa.array(v, pa.int64() if n == LINE else pa.string()) for n, v in rows.items()})


def _first_reason(reason: pa.Array, fail: pa.Array, message: pa.Array | str) -> pa.Array:
    fail = pc.fill_null(fail, False)
    msg = message if isinstance(message, pa.Array) else pa.scalar(message, pa.string())
    return pc.if_else(pc.and_(pc.is_null(reason), fail), msg, reason)


def _quoted(values: pa.Array) -> pa.Array:
    shown = pc.utf8_slice_codeunits(values, 0, 40)
    return pc.binary_join_element_wise(pa.scalar("'"), shown, pa.scalar("'"), "")


def _typed(col: FileColumn, raw: pa.Array, reason: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The column's values in their type (null where invalid) and the reasons so far."""
    ct = parse_type(col.type)
    name = col.name
    present = pc.is_valid(raw)
    text = pc.utf8_trim_whitespace(raw) if ct.kind not in ("text", "varchar") else raw
    if ct.kind in _INT_BOUNDS:
        ok = pc.match_substring_regex(text, r"^[+-]?\d{1,19}$")
        reason = _first_reason(
            reason,
            pc.and_(present, pc.invert(ok)),
            pc.binary_join_element_wise(f"{name}: not an integer: ", _quoted(raw), ""),
        )
        as_float = pc.cast(pc.if_else(ok, text, None), pa.float64())
        lo, hi = _INT_BOUNDS[ct.kind]
        outside = pc.or_(pc.less(as_float, float(lo)), pc.greater(as_float, float(hi)))
        reason = _first_reason(reason, outside, f"{name}: out of range for {ct.kind}")
        good = pc.and_(ok, pc.invert(pc.fill_null(outside, False)))
        return pc.cast(pc.if_else(good, text, None), arrow_type(ct)), reason
    if ct.kind in ("real", "double"):
        ok = pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
        reason = _first_reason(
            reason,
            pc.and_(present, pc.invert(ok)),
            pc.binary_join_element_wise(f"{name}: not a number: ", _quoted(raw), ""),
        )
        return pc.cast(pc.if_else(ok, text, None), arrow_type(ct)), reason
    if ct.kind == "decimal":
        p, s = ct.precision or 38, ct.scale or 0
        whole = p - s
        pattern = rf"^[+-]?\d{{1,{whole}}}(\.\d{{0,{s}}})?$" if whole else rf"^[+-]?0?(\.\d{{0,{s}}})?$"
        number = pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)$")
        ok = pc.match_substring_regex(text, pattern)
        reason = _first_reason(
            reason,
            pc.and_(present, pc.invert(number)),
            pc.binary_join_element_wise(f"{name}: not a number: ", _quoted(raw), ""),
        )
        reason = _first_reason(reason, pc.and_(present, pc.invert(ok)), f"{name}: does not fit decimal({p},{s})")
        return pc.cast(pc.if_else(ok, text, None), arrow_type(ct)), reason
    if ct.kind == "boolean":
        low = pc.utf8_lower(text)
        is_true, is_false = pc.is_in(low, pa.array(_TRUE)), pc.is_in(low, pa.array(_FALSE))
        ok = pc.or_(is_true, is_false)
        reason = _first_reason(
            reason,
            pc.and_(present, pc.invert(ok)),
            pc.binary_join_element_wise(f"{name}: not a boolean: ", _quoted(raw), ""),
        )
        return pc.if_else(ok, is_true, pa.scalar(None, pa.bool_())), reason
    if ct.kind in ("date", "timestamp", "timestamptz"):
        formats = (
            [col.format]
            if col.format
            else (["%Y-%m-%d"] if ct.kind == "date" else ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"])
        )
        parsed = pc.coalesce(*[pc.strptime(text, format=f, unit="us", error_is_null=True) for f in formats])
        what = "date" if ct.kind == "date" else "timestamp"
        expected = col.format or ("YYYY-MM-DD" if ct.kind == "date" else "ISO 8601")
        reason = _first_reason(
            reason,
            pc.and_(present, pc.is_null(parsed)),
            pc.binary_join_element_wise(f"{name}: not a {what} ({expected}): ", _quoted(raw), ""),
        )
        if ct.kind == "timestamptz":
            return pc.assume_timezone(parsed, "UTC"), reason
        return pc.cast(parsed, arrow_type(ct)), reason
    if ct.kind == "varchar" and ct.length:
        too_long = pc.greater(pc.utf8_length(raw), ct.length)
        reason = _first_reason(reason, too_long, f"{name}: longer than {ct.length} characters")
        return pc.if_else(pc.fill_null(too_long, False), pa.scalar(None, pa.string()), raw), reason
    return raw, reason


def check_rows(rows: pa.Table, source: FileSourceConfig) -> Checked:
    """Check every row; the good ones come back typed, the others with the first reason that applies."""
    reason = rows[REASON].combine_chunks()
    typed: dict[str, pa.Array] = {}
    key_cols = {k.lower() for k in source.primary_key}
    for col in source.columns:
        raw = rows[col.name].combine_chunks()
        if col.required or col.name.lower() in key_cols:
            reason = _first_reason(reason, pc.is_null(raw), f"{col.name}: required")
        value, reason = _typed(col, raw, reason)
        kind = parse_type(col.type).kind
        if col.allowed is not None:
            allowed = [str(a) for a in col.allowed]
            ok = pc.is_in(pc.cast(value, pa.string()) if kind not in ("text", "varchar") else value, pa.array(allowed))
            reason = _first_reason(
                reason,
                pc.and_(pc.is_valid(value), pc.invert(ok)),
                pc.binary_join_element_wise(f"{col.name}: not one of {', '.join(allowed)}: ", _quoted(raw), ""),
            )
        measure = pc.utf8_length(value) if kind in ("text", "varchar") else value
        unit = " characters" if kind in ("text", "varchar") else ""
        if col.min is not None and kind not in ("date", "timestamp", "timestamptz", "boolean"):
            reason = _first_reason(
                reason,
                pc.less(pc.cast(measure, pa.float64()), col.min),
                f"{col.name}: below the minimum {col.min:g}{unit}",
            )
        if col.max is not None and kind not in ("date", "timestamp", "timestamptz", "boolean"):
            reason = _first_reason(
                reason,
                pc.greater(pc.cast(measure, pa.float64()), col.max),
                f"{col.name}: above the maximum {col.max:g}{unit}",
            )
        typed[col.name] = value
    # A primary key seen twice in one file: the first row counts, later ones are rejected (never a silent overwrite).
    key = pa.table({k: typed[k] for k in source.primary_key}).append_column(
        "_i", pa.array(range(rows.num_rows), pa.int64())
    )
    ok_so_far = pc.is_null(reason)
    firsts = key.filter(ok_so_far).group_by(list(source.primary_key), use_threads=False).aggregate([("_i", "min")])
    first_idx = pc.is_in(key["_i"], firsts["_i_min"])
    reason = _first_reason(reason, pc.and_(ok_so_far, pc.invert(first_idx)), "duplicate primary key in this file")
    good_mask = pc.is_null(reason)
    good = pa.table({c.name: typed[c.name] for c in source.columns}).filter(good_mask)
    rejected = rows.set_column(rows.schema.get_field_index(REASON), REASON, reason).filter(pc.invert(good_mask))
    return Checked(good, rejected)
