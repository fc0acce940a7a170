"""Apply a dataset's declarative rules to Arrow batches, vectorised with ``pyarrow.compute``.

The same :class:`RuleEngine` run on an empty table of the source schema gives the output schema, so a rule that
names a missing column is found before any row moves.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from config.errors import first_line
from config.models import Condition, Dedupe, Derive, Expr, Privacy, Rule, secret_names
from tasks.transforms.crypto import DataKey, DataKeySource, encrypt_values
from tasks.transforms.types import arrow_type


class RuleError(ValueError):
    """A rule cannot apply; ``path`` is where it stands in the YAML, e.g. ``rules[2].cast.amount``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def _col(table: pa.Table, name: str, path: str) -> pa.ChunkedArray:
    i = table.schema.get_field_index(name)  # C++ lookup: wide tables (600 columns) stay cheap per batch
    if i < 0:
        raise RuleError(path, f"column {name!r} not found (have: {', '.join(table.column_names)})")
    return table.column(i)


def _set(table: pa.Table, name: str, values: Any) -> pa.Table:
    i = table.schema.get_field_index(name)
    if i >= 0:
        return table.set_column(i, name, values)
    return table.append_column(name, values)


def _cast(values: Any, to: pa.DataType, path: str) -> Any:
    try:
        return pc.cast(values, to, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise RuleError(path, f"cannot cast to {to}: {exc}") from None


def _require_string(table: pa.Table, name: str, path: str) -> pa.ChunkedArray:
    col = _col(table, name, path)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise RuleError(path, f"column {name!r} is {col.type}, not text")
    return col


def _map_text(table: pa.Table, columns: Sequence[str], fn: Callable[[Any], Any], path: str) -> pa.Table:
    for c in columns:
        table = _set(table, c, fn(_require_string(table, c, f"{path}.{c}")))
    return table


class RuleEngine:
    """Applies rules in order to successive batches of one key (dedupe remembers rows across batches)."""

    def __init__(
        self,
        rules: Sequence[Rule],
        salts: Mapping[str, bytes] | None = None,
        data_keys: Mapping[str, DataKeySource] | None = None,
        positions: Sequence[int] | None = None,
    ) -> None:
        self.rules = list(rules)
        # Where each rule stands in the dataset's YAML (the rules left for the client after a pushdown skip some).
        self.positions = list(positions) if positions is not None else list(range(len(self.rules)))
        self.salts = dict(salts or {})
        self.data_keys = dict(data_keys or {})
        self._seen: dict[int, set[tuple[Any, ...]]] = {}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """The schema the rules produce from ``schema`` (raises :class:`RuleError` naming the rule)."""
        needs = secret_names(self.rules)
        probe = RuleEngine(
            self.rules,
            {name: b"" for name in needs.secrets},
            {name: (lambda: DataKey("probe", bytes(32), b"")) for name in needs.encryption_keys},
            self.positions,
        )
        return probe.apply(pa.Table.from_batches([], schema)).schema  # (empty_table() would import pandas)

    def apply(self, table: pa.Table | pa.RecordBatch) -> pa.Table:
        """Apply every rule to one batch."""
        t = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
        for i, rule in zip(self.positions, self.rules, strict=True):
            t = self._apply_one(i, rule, t)
        return t

    def _apply_one(self, i: int, rule: Rule, t: pa.Table) -> pa.Table:
        name = rule.name
        path = f"rules[{i}].{name}"
        spec = getattr(rule, name)
        if spec is None:  # `- select:` with no value: the one key is there, its value is not
            raise RuleError(path, "empty rule")
        return self._APPLY[name](self, i, t, spec, path)

    # One handler per rule kind, (engine, i, table, the rule's value, path) -> table; ``_APPLY`` maps names to them.
    def _select(self, i: int, t: pa.Table, columns: list[str], path: str) -> pa.Table:
        for c in columns:
            _col(t, c, path)
        return t.select(columns)

    def _drop(self, i: int, t: pa.Table, columns: list[str], path: str) -> pa.Table:
        for c in columns:
            _col(t, c, path)
        return t.drop_columns(columns)

    def _rename(self, i: int, t: pa.Table, renames: dict[str, str], path: str) -> pa.Table:
        for old in renames:
            _col(t, old, f"{path}.{old}")
        names = [renames.get(c, c) for c in t.column_names]
        dup = sorted(n for n, count in Counter(names).items() if count > 1)
        if dup:
            raise RuleError(path, f"renaming would give two columns named {', '.join(dup)}")
        return t.rename_columns(names)

    def _cast_columns(self, i: int, t: pa.Table, types: dict[str, str], path: str) -> pa.Table:
        for c, ty in types.items():
            t = _set(t, c, _cast(_col(t, c, f"{path}.{c}"), arrow_type(ty), f"{path}.{c}"))
        return t

    def _trim(self, i: int, t: pa.Table, columns: list[str], path: str) -> pa.Table:
        return _map_text(t, columns, pc.utf8_trim_whitespace, path)

    def _lower(self, i: int, t: pa.Table, columns: list[str], path: str) -> pa.Table:
        return _map_text(t, columns, pc.utf8_lower, path)

    def _upper(self, i: int, t: pa.Table, columns: list[str], path: str) -> pa.Table:
        return _map_text(t, columns, pc.utf8_upper, path)

    def _fill(self, i: int, t: pa.Table, values: dict[str, Any], path: str) -> pa.Table:
        for c, v in values.items():
            col = _col(t, c, f"{path}.{c}")
            t = _set(t, c, pc.fill_null(col, _cast(pa.scalar(v), col.type, f"{path}.{c}")))
        return t

    def _filter(self, i: int, t: pa.Table, conditions: list[Condition], path: str) -> pa.Table:
        mask = None
        for j, cond in enumerate(conditions):
            m = self._condition(t, cond, f"{path}[{j}]")
            mask = m if mask is None else pc.and_kleene(mask, m)
        if mask is None or (mask.null_count == 0 and pc.all(mask).as_py() is not False):
            return t  # every row passes: no copy of the whole batch
        return t.filter(mask, null_selection_behavior="drop")

    # -- filter
    def _condition(self, t: pa.Table, cond: Condition, path: str) -> Any:
        col = _col(t, cond.column, f"{path}.column")
        if cond.op == "is_null":
            return pc.is_null(col)
        if cond.op == "not_null":
            return pc.is_valid(col)
        if cond.op in ("in", "not_in"):
            values = _cast(pa.array(cond.values), col.type, f"{path}.values")
            hit = pc.is_in(col, value_set=values)
            return pc.and_kleene(pc.invert(hit), pc.is_valid(col)) if cond.op == "not_in" else hit
        value = _cast(pa.scalar(cond.value), col.type, f"{path}.value")
        fn = {
            "eq": pc.equal,
            "ne": pc.not_equal,
            "lt": pc.less,
            "le": pc.less_equal,
            "gt": pc.greater,
            "ge": pc.greater_equal,
        }[cond.op]
        return fn(col, value)

    # -- derive
    def _derive(self, i: int, t: pa.Table, d: Derive, path: str) -> pa.Table:
        out = self._eval(t, d.expr, f"{path}.expr")
        if isinstance(out, pa.Scalar):
            out = pa.repeat(out, t.num_rows)
        if d.type:
            out = _cast(out, arrow_type(d.type), f"{path}.type")
        return _set(t, d.column, out)

    def _eval(self, t: pa.Table, e: Expr, path: str) -> Any:
        op = e.op
        here = f"{path}.{op}"
        try:
            if op == "col":
                assert e.col is not None
                return _col(t, e.col, here)
            if op == "lit":
                return pa.scalar(e.lit)
            if op in ("year", "month", "day", "hour"):
                arg = self._eval(t, getattr(e, op), here)
                return getattr(pc, op)(arg)
            args = [self._eval(t, a, f"{here}[{k}]") for k, a in enumerate(getattr(e, op))]
            if op == "concat":
                texts = [pc.fill_null(_cast(a, pa.string(), here), "") for a in args]
                return pc.binary_join_element_wise(*texts, "")
            if op == "coalesce":
                return pc.coalesce(*args)
            if op == "div":
                a, b = args
                if pa.types.is_integer(a.type) and pa.types.is_integer(b.type):
                    a, b = pc.cast(a, pa.float64()), pc.cast(b, pa.float64())
                zero = pc.equal(b, _cast(pa.scalar(0), b.type, here))
                return pc.if_else(zero, pa.scalar(None, pc.divide(a, b).type), pc.divide(a, b))
            fn = {"add": pc.add_checked, "sub": pc.subtract_checked, "mul": pc.multiply_checked}[op]
            acc = args[0]
            for a in args[1:]:
                acc = fn(acc, a)
            return acc
        except RuleError:
            raise
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise RuleError(here, first_line(exc)) from None

    # -- dedupe
    def _dedupe(self, i: int, t: pa.Table, d: Dedupe, path: str) -> pa.Table:
        cols = [_col(t, c, f"{path}.on").to_pylist() for c in d.on]
        seen = self._seen.setdefault(i, set())
        keep = []
        for row, k in enumerate(zip(*cols, strict=True)):
            if k not in seen:
                seen.add(k)
                keep.append(row)
        return t.take(pa.array(keep, pa.int64())) if len(keep) != t.num_rows else t

    # -- privacy
    def _privacy(self, i: int, t: pa.Table, p: Privacy, path: str) -> pa.Table:
        col = _col(t, p.column, f"{path}.column")
        if p.action == "drop":
            return t.drop_columns([p.column])
        text = _cast(col, pa.string(), path)
        if p.action == "mask":
            length = pc.utf8_length(text)
            hidden = pc.max_element_wise(pc.subtract(length, p.keep_last), 0)
            stars = pc.binary_repeat(p.mask_char, hidden)
            tail = (
                pc.utf8_slice_codeunits(text, start=-p.keep_last)
                if p.keep_last
                else pc.utf8_slice_codeunits(text, start=0, stop=0)
            )
            return _set(t, p.column, pc.binary_join_element_wise(stars, tail, ""))
        if p.action == "encrypt":
            assert p.key is not None
            if p.key not in self.data_keys:
                raise RuleError(f"{path}.key", f"encryption key {p.key!r} is not defined in the profile")
            data_key = self.data_keys[p.key]()  # a fresh data key per batch
            return _set(t, p.column, pa.array(encrypt_values(text.to_pylist(), p.column, data_key), pa.string()))
        assert p.salt_secret is not None
        if p.salt_secret not in self.salts:
            raise RuleError(f"{path}.salt_secret", f"secret {p.salt_secret!r} is not defined in the profile")
        salt = self.salts[p.salt_secret]
        hashed = [
            None if v is None else hmac.new(salt, v.encode("utf-8"), hashlib.sha256).hexdigest()
            for v in text.to_pylist()
        ]
        return _set(t, p.column, pa.array(hashed, pa.string()))

    _APPLY: ClassVar[dict[str, Callable[[RuleEngine, int, pa.Table, Any, str], pa.Table]]] = {
        "select": _select,
        "drop": _drop,
        "rename": _rename,
        "cast": _cast_columns,
        "trim": _trim,
        "lower": _lower,
        "upper": _upper,
        "fill": _fill,
        "filter": _filter,
        "derive": _derive,
        "dedupe": _dedupe,
        "privacy": _privacy,
    }


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder and cast a rules-output batch to the target schema (raises ``RuleError`` on a bad value)."""
    if table.schema.equals(schema, check_metadata=False):
        return table
    index = {name: i for i, name in enumerate(table.column_names)}
    cols = []
    for field in schema:
        if field.name not in index:
            raise RuleError("target.columns", f"column {field.name!r} not found (have: {', '.join(index)})")
        col = table.column(index[field.name])
        cols.append(col if col.type == field.type else _cast(col, field.type, f"target.columns.{field.name}"))
    return pa.Table.from_arrays(cols, schema=schema)


def _expr_columns(e: Expr) -> set[str]:
    op = e.op
    if op == "col":
        return {e.col} if e.col else set()
    if op == "lit":
        return set()
    arg = getattr(e, op)
    args = arg if isinstance(arg, list) else [arg]
    return set().union(*(_expr_columns(a) for a in args))


def referenced_columns(rules: Sequence[Rule]) -> set[str]:
    """Every column whose values a rule reads or writes (``select`` and ``drop`` only move columns)."""
    names: set[str] = set()
    for r in rules:
        if r.rename:
            names |= set(r.rename) | set(r.rename.values())
        for mapping in (r.cast, r.fill):
            names |= set(mapping or {})
        for listed in (r.trim, r.lower, r.upper):
            names |= set(listed or [])
        names |= {c.column for c in r.filter or []}
        if r.derive:
            names |= {r.derive.column} | _expr_columns(r.derive.expr)
        if r.dedupe:
            names |= set(r.dedupe.on)
        if r.privacy:
            names.add(r.privacy.column)
    return names


def passthrough_columns(rules: Sequence[Rule], source: pa.Schema, target: pa.Schema) -> set[str]:
    """Columns no rule touches and whose type the target keeps: they can travel as the source's own text."""
    touched = referenced_columns(rules)
    kept = {f.name: f.type for f in target}  # once: `target.names` is a new list on every use (600 columns here)
    return {f.name for f in source if f.name not in touched and kept.get(f.name) == f.type}


def as_text(schema: pa.Schema, names: set[str]) -> pa.Schema:
    """``schema`` with the named columns as text."""
    return pa.schema([f.with_type(pa.string()) if f.name in names else f for f in schema])
