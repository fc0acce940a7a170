"""Compile a dataset's rules into the extraction query where the source computes exactly what Arrow would. Pure.

:func:`plan_pushdown` walks the rules in order and gives each a place: ``source`` (an SQL expression or a WHERE
condition of the key's query) or ``client`` (the :class:`~tasks.transforms.rules.RuleEngine`). A rule is pushed only
when the SQL is equal to the Arrow result on every value, errors included (a value Arrow refuses must not load from
the source either), so these are the only forms pushed:

- ``select``, ``drop``, ``rename``: the select list and aliases.
- ``cast``: integer widenings, 8–32-bit integers to double, integers to text (same digits), text to text.
- ``trim``/``lower``/``upper`` (PostgreSQL, UTF8 database): ``btrim`` with Arrow's own whitespace set, and
  ``translate`` with Arrow's own per-code-point case mapping (both probed from the installed Arrow, so they agree
  by construction; ASCII-only values take ``lower``/``upper`` under ``COLLATE "C"``, which maps ASCII only).
- ``fill``: ``COALESCE`` with the value bound as a parameter of the column's type (only where Arrow's cast of the
  value is exact: text with text, integers in range, doubles, booleans).
- ``filter``: comparisons on integers, on text in byte (code point) order, on doubles with Arrow's NaN semantics;
  ``is_null``/``not_null``; ``in``/``not_in`` on integers and text.
- ``derive``: ``div`` of 8–32-bit integers (exact in double, null on a zero divisor), ``add``/``sub``/``mul`` of
  integers of one width (PostgreSQL raises on overflow as Arrow's checked kernels do), ``concat`` of text and
  integers, ``coalesce`` of one type.
- ``privacy`` ``mask`` on text; ``hash`` on text in PostgreSQL when pgcrypto is installed, the salt reaching the
  server as data (a temporary table filled by ``COPY … FROM STDIN``), never in the statement.

Anything else stays on the client: ``dedupe``, ``encrypt``, float arithmetic (PostgreSQL raises on overflow where
Arrow gives infinity), date parts, casts that parse or round; on MySQL/MariaDB also trim, case mapping and the hash.
Once a rule stays on the client, a later rule is pushed only while every client rule so far keeps columns and rows
and cannot fail, and only if it cannot fail either (or is a filter) and touches no column the client rules read or
write: the result is then the same whichever side runs first.
Every constant reaches SQL as a bound parameter; identifiers are validated and quoted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from config.models import Condition, Derive, Expr, Privacy, Rule
from tasks.transforms.sql import quote_ident
from tasks.transforms.types import arrow_type

SALT_TABLE = "keyflow_salts"
"""PostgreSQL: the session's temporary table (name, salt) the pushed hash reads its salt from."""


@dataclass(frozen=True)
class SourceCapabilities:
    """What a source database can compute exactly: its dialect, a UTF8 text encoding, pgcrypto's schema."""

    dialect: str
    utf8: bool = True
    pgcrypto_schema: str | None = None


@dataclass(frozen=True)
class Placement:
    """Where one rule runs, and why not on the source when it does not."""

    index: int
    rule: str
    where: str  # "source" | "client"
    reason: str = ""

    def describe(self) -> str:
        """``rules[3].trim: source`` or ``rules[7].privacy: client (secret salt: pgcrypto not installed)``."""
        tail = f" ({self.reason})" if self.reason else ""
        return f"rules[{self.index}].{self.rule}: {self.where}{tail}"


@dataclass(frozen=True)
class Pushdown:
    """The key query's select list and extra WHERE conditions, and what is left for the client."""

    select: tuple[tuple[str, str], ...]  # (SQL expression, output column name), in output order
    where: tuple[str, ...]
    params: dict[str, Any]
    schema: pa.Schema  # the pushed query's output schema (what the client rules start from)
    client_rules: tuple[tuple[int, Rule], ...]  # (index in the dataset's rules, rule)
    placements: tuple[Placement, ...]
    salts: tuple[str, ...] = ()  # profile secrets the query reads from the session's salt table

    @property
    def pushed_any(self) -> bool:
        """Did any rule move to the source?"""
        return any(p.where == "source" for p in self.placements)

    @property
    def filters(self) -> bool:
        """Does the query drop rows (so the source must count the key's slice for the reconciliation)?"""
        return bool(self.where)


def render_pushed_query(base_sql: str, push: Pushdown, dialect: str) -> str:
    """Wrap the key's query: ``SELECT <expressions> FROM (<key query>) AS kf_src [WHERE …]``.

    The key query (and its key predicate) stays as :func:`~tasks.transforms.sql.render_key_query` renders it; both
    PostgreSQL and MariaDB flatten the derived table, so the wrapper costs nothing.
    """
    cols = ", ".join(f"{sql} AS {quote_ident(name, dialect)}" for sql, name in push.select)
    sql = f"SELECT {cols} FROM ({base_sql}) AS kf_src"  # noqa: S608 - quoted identifiers, bound values
    if push.where:
        sql += " WHERE " + " AND ".join(f"({w})" for w in push.where)
    return sql


def render_count_query(base_sql: str) -> str:
    """The key's rows before any pushed filter: the ``extracted`` count of the reconciliation."""
    return f"SELECT count(*) FROM ({base_sql}) AS kf_src"  # noqa: S608 - the key query, bound values


# -- what Arrow does, probed from Arrow itself --------------------------------------------------------------------


PROBED_UP_TO = 0x20000
"""Code points probed at run time: the Basic and Supplementary Multilingual Planes. Unicode has no case pair and no
whitespace beyond them (``tests/transforms/test_pushdown.py`` probes the other planes of the installed Arrow)."""


def code_points(start: int = 1, stop: int = PROBED_UP_TO) -> pa.Array:
    """Every Unicode scalar value in [start, stop) as a one-character string array.

    Built from buffers, a run of code points of one UTF-8 width at a time: no Python object per code point, a few
    MB, and no numpy (``keyflow etl`` runs without it).
    """
    runs = [(0x1, 0x80, 1), (0x80, 0x800, 2), (0x800, 0xD800, 3), (0xE000, 0x10000, 3), (0x10000, 0x110000, 4)]
    offsets, text, count, size = [], [], 0, 0
    for first, end, width in runs:
        first, end = max(first, start), min(end, stop)
        if first < end:
            offsets.append(pa.array(range(size, size + (end - first) * width, width), pa.int32()))
            text.append("".join(map(chr, range(first, end))))
            count, size = count + end - first, size + (end - first) * width
    offsets.append(pa.array([size], pa.int32()))
    data = "".join(text).encode("utf-8")
    return pa.StringArray.from_buffers(count, pa.concat_arrays(offsets).buffers()[1], pa.py_buffer(data))


@functools.cache
def probed_code_points() -> pa.Array:
    """:func:`code_points` up to :data:`PROBED_UP_TO`, built once for the probes below."""
    return code_points()


@functools.cache
def arrow_whitespace() -> str:
    """The code points ``utf8_trim_whitespace`` removes, probed from the installed Arrow."""
    chars = probed_code_points()
    return "".join(chars.filter(pc.equal(pc.utf8_trim_whitespace(chars), "")).to_pylist())


@functools.cache
def arrow_case_map(upper: bool) -> tuple[str, str] | None:
    """(from, to) of Arrow's per-code-point ``utf8_upper``/``utf8_lower`` for non-ASCII code points.

    ``None`` when some code point maps to more (or fewer) than one code point: ``translate`` could not express it.
    """
    chars = probed_code_points()
    mapped = (pc.utf8_upper if upper else pc.utf8_lower)(chars)
    changed = pc.not_equal(mapped, chars)
    frm, to = chars.filter(changed), mapped.filter(changed)
    if pc.any(pc.not_equal(pc.utf8_length(to), 1)).as_py():
        return None
    pairs = [(a, b) for a, b in zip(frm.to_pylist(), to.to_pylist(), strict=True) if ord(a) >= 0x80]
    return "".join(a for a, _ in pairs), "".join(b for _, b in pairs)


# -- the compiler ---------------------------------------------------------------------------------------------------


class _NotPushed(Exception):
    """This rule stays on the client; the message says why."""


@dataclass
class _Col:
    sql: str
    type: pa.DataType


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _int_bits(t: pa.DataType) -> int:
    return t.bit_width if pa.types.is_signed_integer(t) else 0


_PG_INT = {16: "smallint", 32: "integer", 64: "bigint"}
_INT_RANGE = {8: 2**7, 16: 2**15, 32: 2**31, 64: 2**63}


@dataclass
class _Compiler:
    caps: SourceCapabilities
    cols: dict[str, _Col]
    params: dict[str, Any] = field(default_factory=dict)
    where: list[str] = field(default_factory=list)
    salts: list[str] = field(default_factory=list)

    @property
    def pg(self) -> bool:
        return self.caps.dialect == "postgres"

    def q(self, name: str) -> str:
        return quote_ident(name, self.caps.dialect)

    def bind(self, value: Any, sql_type: str | None = None) -> str:
        name = f"kf_p{len(self.params)}"
        self.params[name] = value
        return f"CAST(:{name} AS {sql_type})" if sql_type else f":{name}"

    def col(self, name: str) -> _Col:
        if name not in self.cols:
            raise _NotPushed(f"column {name!r} not found")  # the client raises the user's message
        return self.cols[name]

    def text(self, name: str) -> _Col:
        c = self.col(name)
        if not _is_text(c.type):
            raise _NotPushed(f"column {name!r} is {c.type}, not text")
        return c

    def text_type(self) -> str:
        return "text" if self.pg else "CHAR"

    # one method per rule kind, each mutating ``cols``/``where`` (on a copy: see plan_pushdown)
    def select(self, columns: list[str]) -> None:
        self.cols = {c: self.col(c) for c in columns}

    def drop(self, columns: list[str]) -> None:
        for c in columns:
            self.col(c)
        self.cols = {n: c for n, c in self.cols.items() if n not in columns}

    def rename(self, renames: dict[str, str]) -> None:
        for old in renames:
            self.col(old)
        names = [renames.get(n, n) for n in self.cols]
        if len(set(names)) != len(names):
            raise _NotPushed("renaming would give two columns of one name")
        self.cols = {renames.get(n, n): c for n, c in self.cols.items()}

    def cast(self, types: dict[str, str]) -> None:
        for name, ty in types.items():
            c, to = self.col(name), arrow_type(ty)
            frm = c.type
            if frm == to:
                continue
            fb, tb = _int_bits(frm), _int_bits(to)
            if fb and tb and fb <= tb:
                sql = f"CAST({c.sql} AS {_PG_INT[tb] if self.pg else 'SIGNED'})"
            elif fb and fb <= 32 and pa.types.is_float64(to):
                sql = f"CAST({c.sql} AS {'double precision' if self.pg else 'DOUBLE'})"
            elif fb and _is_text(to):
                sql = f"CAST({c.sql} AS {self.text_type()})"
            elif _is_text(frm) and _is_text(to):
                sql = c.sql
            else:
                raise _NotPushed(f"cast of {name!r} from {frm} to {to} may round or parse differently")
            self.cols[name] = _Col(sql, to)

    def _text_map(self, columns: list[str], build: Callable[[str], str]) -> None:
        if not self.pg:
            raise _NotPushed("MySQL/MariaDB trim and case mapping differ from Arrow's (collation, whitespace)")
        if not self.caps.utf8:
            raise _NotPushed("the source database's encoding is not UTF8")
        for name in columns:
            c = self.text(name)
            self.cols[name] = _Col(build(c.sql), c.type)

    def trim(self, columns: list[str]) -> None:
        chars = self.bind(arrow_whitespace(), "text")
        self._text_map(columns, lambda x: f"btrim({x}, {chars})")

    def _case(self, columns: list[str], upper: bool) -> None:
        mapping = arrow_case_map(upper)
        if mapping is None:
            raise _NotPushed("Arrow's case mapping is not one code point to one")
        frm, to = (self.bind(s, "text") for s in mapping)
        fn = "upper" if upper else "lower"
        self._text_map(
            columns,
            lambda x: (
                f'CASE WHEN octet_length({x}) = char_length({x}) THEN {fn}({x} COLLATE "C") '
                f'ELSE translate({fn}({x} COLLATE "C"), {frm}, {to}) END'  # ASCII first, then the rest
            ),
        )

    def lower(self, columns: list[str]) -> None:
        self._case(columns, upper=False)

    def upper(self, columns: list[str]) -> None:
        self._case(columns, upper=True)

    def value(self, v: Any, t: pa.DataType) -> str:
        """A YAML value bound as a parameter of type ``t``, where Arrow's cast of it to ``t`` is exact."""
        if _is_text(t) and isinstance(v, str):
            return self.bind(v, self.text_type())
        bits = _int_bits(t)
        if bits and isinstance(v, int) and not isinstance(v, bool) and -_INT_RANGE[bits] <= v < _INT_RANGE[bits]:
            return self.bind(v, _PG_INT.get(bits, "smallint") if self.pg else "SIGNED")
        if pa.types.is_float64(t) and isinstance(v, int | float) and not isinstance(v, bool):
            if not math.isfinite(float(v)) or (isinstance(v, int) and abs(v) > 2**53):
                raise _NotPushed("a non-finite or inexact double")
            return self.bind(float(v), "double precision" if self.pg else "DOUBLE")
        if pa.types.is_boolean(t) and isinstance(v, bool) and self.pg:
            return self.bind(v, "boolean")
        raise _NotPushed(f"value {v!r} against a {t} column")

    def fill(self, values: dict[str, Any]) -> None:
        for name, v in values.items():
            c = self.col(name)
            self.cols[name] = _Col(f"COALESCE({c.sql}, {self.value(v, c.type)})", c.type)

    def filter(self, conditions: list[Condition]) -> None:
        self.where.extend(self.condition(cond) for cond in conditions)

    def condition(self, cond: Condition) -> str:
        c = self.col(cond.column)
        x = c.sql
        if cond.op == "is_null":
            return f"{x} IS NULL"
        if cond.op == "not_null":
            return f"{x} IS NOT NULL"
        if _is_text(c.type):
            # Arrow compares UTF-8 bytes: code point order, no padding, case kept.
            x = f'{x} COLLATE "C"' if self.pg else f"CONVERT({x} USING utf8mb4) COLLATE utf8mb4_nopad_bin"
        elif not (_int_bits(c.type) or (pa.types.is_float64(c.type) and cond.op not in ("in", "not_in"))):
            raise _NotPushed(f"comparison on a {c.type} column")
        if pa.types.is_float64(c.type) and not self.pg:
            raise _NotPushed("MySQL/MariaDB doubles: not pushed")

        def val(v: Any) -> str:
            s = self.value(v, c.type)
            if _is_text(c.type) and not self.pg:
                s = f"CONVERT({s} USING utf8mb4) COLLATE utf8mb4_nopad_bin"
            return s

        if cond.op in ("in", "not_in"):
            if not cond.values:
                raise _NotPushed("an empty list of values")
            listed = ", ".join(val(v) for v in cond.values)
            return f"{x} IN ({listed})" if cond.op == "in" else f"{x} NOT IN ({listed}) AND {c.sql} IS NOT NULL"
        sym = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[cond.op]
        out = f"{x} {sym} {val(cond.value)}"
        if pa.types.is_float64(c.type) and cond.op in ("gt", "ge"):
            # PostgreSQL orders NaN above every number; in Arrow (IEEE) every comparison with NaN but <> is false.
            out += f" AND {c.sql} <> CAST('NaN' AS double precision)"
        return out

    # -- derive
    def derive(self, d: Derive) -> None:
        out = self.expr(d.expr)
        if d.type:
            to = arrow_type(d.type)
            if to != out.type:
                saved = self.cols.get("\0")
                self.cols["\0"] = out
                try:
                    self.cast({"\0": d.type})
                    out = self.cols["\0"]
                finally:
                    del self.cols["\0"]
                    if saved is not None:
                        self.cols["\0"] = saved
        self.cols[d.column] = out

    def expr(self, e: Expr) -> _Col:
        op = e.op
        if op == "col":
            assert e.col is not None
            return self.col(e.col)
        if op == "lit":
            v = e.lit
            if isinstance(v, bool) or v is None:
                raise _NotPushed("a boolean or null literal")
            if isinstance(v, int):
                return _Col(self.value(v, pa.int64()), pa.int64())
            if isinstance(v, float):
                return _Col(self.value(v, pa.float64()), pa.float64())
            return _Col(self.bind(v, self.text_type()), pa.string())
        if op in ("year", "month", "day", "hour"):
            raise _NotPushed("date parts: PostgreSQL counts years BC without a year 0, Arrow with one")
        args = [self.expr(a) for a in getattr(e, op)]
        if op == "concat":
            parts = []
            for a in args:
                if not (_is_text(a.type) or _int_bits(a.type)):
                    raise _NotPushed(f"concat of {a.type}: its text differs between the source and Arrow")
                parts.append(a.sql if _is_text(a.type) else f"CAST({a.sql} AS {self.text_type()})")
            if self.pg:
                return _Col("concat(" + ", ".join(parts) + ")", pa.string())
            return _Col("CONCAT_WS(''" + "".join(", " + p for p in parts) + ")", pa.string())
        if op == "coalesce":
            if len({a.type for a in args}) != 1:
                raise _NotPushed("coalesce of mixed types")
            return _Col("COALESCE(" + ", ".join(a.sql for a in args) + ")", args[0].type)
        if op == "div":
            a, b = args
            if not (0 < _int_bits(a.type) <= 32 and 0 < _int_bits(b.type) <= 32):
                raise _NotPushed("division other than of 8-32-bit integers (rounding, overflow)")
            dbl = "double precision" if self.pg else "DOUBLE"
            return _Col(
                f"CASE WHEN {b.sql} = 0 THEN NULL ELSE CAST({a.sql} AS {dbl}) / CAST({b.sql} AS {dbl}) END",
                pa.float64(),
            )
        if not self.pg:
            raise _NotPushed("MySQL/MariaDB integer arithmetic widens where Arrow's checked kernels raise")
        widths = [_int_bits(a.type) for a in args]
        if min(widths) < 16:  # not integers (float overflow: PostgreSQL raises, Arrow gives inf), or int8
            raise _NotPushed(f"{op} of {', '.join(str(a.type) for a in args)}")
        # Both widen to the wider operand at each step and raise on overflow there (Arrow's *_checked kernels).
        sym = {"add": " + ", "sub": " - ", "mul": " * "}[op]
        return _Col("(" + sym.join(a.sql for a in args) + ")", args[widths.index(max(widths))].type)

    # -- privacy
    def privacy(self, p: Privacy) -> None:
        if p.action == "drop":
            self.drop([p.column])
            return
        if p.action == "encrypt":
            raise _NotPushed("encryption runs on the client")
        c = self.text(p.column)
        x = c.sql
        if p.action == "mask":
            hidden = f"GREATEST(char_length({x}) - {self.bind(p.keep_last, 'integer' if self.pg else 'SIGNED')}, 0)"
            stars = f"repeat({self.bind(p.mask_char, self.text_type())}, {hidden})"
            keep = self.bind(p.keep_last, "integer" if self.pg else "SIGNED")
            tail = f"right({x}, {keep})"
            sql = f"({stars} || {tail})" if self.pg else f"CONCAT({stars}, {tail})"
            self.cols[p.column] = _Col(sql, pa.string())
            return
        assert p.salt_secret is not None
        if not self.pg or self.caps.pgcrypto_schema is None:
            raise _NotPushed("a salted hash runs on the source only with PostgreSQL's pgcrypto installed")
        if not self.caps.utf8:
            raise _NotPushed("the source database's encoding is not UTF8")
        if p.salt_secret not in self.salts:
            self.salts.append(p.salt_secret)
        name = self.bind(p.salt_secret, "text")
        salt = f"(SELECT s.salt FROM pg_temp.{SALT_TABLE} AS s WHERE s.name = {name})"  # noqa: S608 - bound
        schema = self.q(self.caps.pgcrypto_schema)
        digest = f"{schema}.hmac(convert_to({x}, 'UTF8'), {salt}, 'sha256')"
        self.cols[p.column] = _Col(f"encode({digest}, 'hex')", pa.string())


def _arith(e: Expr) -> bool:
    """Does the expression add, subtract or multiply (which can overflow and fail)?"""
    if e.op in ("add", "sub", "mul"):
        return True
    if e.op in ("col", "lit"):
        return False
    arg = getattr(e, e.op)
    return any(_arith(a) for a in (arg if isinstance(arg, list) else [arg]))


def _total(rule: Rule, cols: dict[str, _Col], compiled: bool) -> bool:
    """Does the rule keep every column and row and never fail (so another rule may be pushed past it)?

    Trim, case mapping and privacy other than drop; a fill of text columns with text; and, when it compiled for the
    source (so its casts are exact widenings), a derive without integer arithmetic (division by zero gives null).
    """
    name = rule.name
    if name in ("trim", "lower", "upper"):
        return True
    if name == "privacy":
        return rule.privacy is not None and rule.privacy.action != "drop"
    if name == "fill" and rule.fill:
        return all(isinstance(v, str) and c in cols and _is_text(cols[c].type) for c, v in rule.fill.items())
    if name == "derive" and rule.derive is not None:
        return compiled and not _arith(rule.derive.expr)
    return False


def _touched(rule: Rule) -> set[str]:
    from tasks.transforms.rules import referenced_columns

    return referenced_columns([rule])


def plan_pushdown(rules: Sequence[Rule], source: pa.Schema, caps: SourceCapabilities) -> Pushdown:
    """Place each rule on the source or the client, and build the pushed query's pieces."""
    comp = _Compiler(caps, {f.name: _Col(quote_ident(f.name, caps.dialect), f.type) for f in source})
    placements: list[Placement] = []
    client: list[tuple[int, Rule]] = []
    client_total = True  # every client rule so far keeps columns and rows and never fails
    client_touched: set[str] = set()
    for i, rule in enumerate(rules):
        name = rule.name
        spec = getattr(rule, name)
        reason = ""
        if spec is None or name == "dedupe":
            reason = "keeps rows seen across batches" if name == "dedupe" else "empty rule"
        elif client and not client_total:
            reason = "follows a client rule that changes columns, rows or types, or could fail"
        elif client and _touched(rule) & client_touched:
            reason = "reads or writes a column a client rule touches"
        if not reason:
            trial = _Compiler(caps, dict(comp.cols), dict(comp.params), list(comp.where), list(comp.salts))
            try:
                getattr(trial, name)(spec)
            except _NotPushed as exc:
                reason = str(exc)
            else:
                if client and not (name == "filter" or _total(rule, comp.cols, compiled=True)):
                    reason = "follows a client rule, and could fail or change columns"
                else:
                    comp = trial
                    placements.append(Placement(i, name, "source"))
                    continue
        placements.append(Placement(i, name, "client", reason))
        client_total = client_total and _total(rule, comp.cols, compiled=False)
        client.append((i, rule))
        client_touched |= _touched(rule)
    return Pushdown(
        select=tuple((c.sql, n) for n, c in comp.cols.items()),
        where=tuple(comp.where),
        params=comp.params,
        schema=pa.schema([(n, c.type) for n, c in comp.cols.items()]),
        client_rules=tuple(client),
        placements=tuple(placements),
        salts=tuple(comp.salts),
    )
