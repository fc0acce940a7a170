"""Schema drift: what the dataset now produces (source + rules) against the target table as it stands. Pure.

``target.on_schema_change`` decides: ``fail`` (the default) names every difference; ``add_columns`` adds a new
column to the table and loads a column gone from the source as NULL; ``ignore`` leaves a new column out of the load
and loads a gone one as NULL. A changed type always fails, with the difference (``column qty: integer → text``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from config.errors import ConfigError
from config.types import ColumnType, parse_type
from tasks.transforms.sql import TableSpec

# information_schema.data_type (PostgreSQL, Redshift; DuckDB in capitals) -> keyflow's type vocabulary
_CATALOG = {
    "smallint": "smallint",
    "integer": "integer",
    "bigint": "bigint",
    "real": "real",
    "float": "real",
    "double precision": "double",
    "double": "double",
    "numeric": "decimal",
    "decimal": "decimal",
    "boolean": "boolean",
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp": "timestamp",
    "timestamp with time zone": "timestamptz",
    "text": "text",
    "character varying": "text",
    "varchar": "text",
    "character": "text",
}


def type_from_catalog(data_type: str, precision: int | None = None, scale: int | None = None) -> ColumnType | None:
    """A catalog's type name as keyflow's (None for a type keyflow never creates: it is not compared)."""
    text = data_type.strip().lower()
    m = re.match(r"^(decimal|numeric)\s*\((\d+)\s*,\s*(\d+)\)$", text)
    if m:
        return ColumnType("decimal", precision=int(m.group(2)), scale=int(m.group(3)))
    kind = _CATALOG.get(re.sub(r"\s*\(.*\)$", "", text))
    if kind == "decimal":
        return ColumnType("decimal", precision=precision or 38, scale=scale or 0)
    return parse_type(kind) if kind else None


def same_type(target: ColumnType, produced: ColumnType) -> bool:
    """Whether the table's column holds what the dataset produces.

    Text of any length is text; decimals compare by scale, since Redshift caps precision at 38.
    """
    family = {"varchar": "text"}
    if family.get(target.kind, target.kind) != family.get(produced.kind, produced.kind):
        return False
    return target.kind != "decimal" or target.scale == produced.scale


@dataclass(frozen=True)
class DriftPlan:
    """What to load and how to prepare the table: the spec COPY names, the columns to add, the warnings to log."""

    spec: TableSpec
    add: tuple[tuple[str, ColumnType, bool], ...] = ()
    warnings: tuple[str, ...] = ()


def plan_drift(spec: TableSpec, existing: Sequence[tuple[str, ColumnType | None]], mode: str, where: str) -> DriftPlan:
    """Compare the planned ``spec`` with the table's ``existing`` columns; raise one line per problem.

    ``where`` prefixes errors (the dataset file; none when empty). A missing table (no columns) is no drift: it is
    created.
    """
    if not existing:
        return DriftPlan(spec)
    lead = f"{where}: " if where else ""
    table = f"{spec.schema}.{spec.table}"
    have = {name.lower(): (name, kind) for name, kind in existing}
    produced = {name.lower(): (name, kind) for name, kind, _ in spec.columns}
    changed = [
        f"column {name}: {old} → {kind}"
        for low, (name, kind) in produced.items()
        if low in have and (old := have[low][1]) is not None and not same_type(old, kind)
    ]
    if changed:
        raise ConfigError(
            f"{lead}target: {table} has other types than the dataset now produces: {'; '.join(changed)} "
            "(migrate the column, or cast it with a rule)"
        )
    new = [c for c in spec.columns if c[0].lower() not in have]
    gone = [name for low, (name, _) in have.items() if low not in produced]
    problems, warnings = [], []
    if new and mode == "fail":
        problems.append(
            f"{lead}target: the dataset now produces column(s) {', '.join(c[0] for c in new)} that {table} lacks "
            "(target.on_schema_change: add_columns adds them, ignore leaves them out)"
        )
    if gone and mode == "fail":
        problems.append(
            f"{lead}target: column(s) {', '.join(gone)} of {table} no longer come from the source "
            "(target.on_schema_change: add_columns or ignore loads them as NULL)"
        )
    if problems:
        raise ConfigError(problems)
    if gone:
        warnings.append(f"column(s) {', '.join(gone)} of {table} no longer come from the source: loaded as NULL")
    if new and mode == "ignore":
        warnings.append(f"column(s) {', '.join(c[0] for c in new)} are not in {table}: left out of the load (ignore)")
        keep = tuple(c for c in spec.columns if c[0].lower() in have)
        return DriftPlan(replace(spec, columns=keep), (), tuple(warnings))
    added = tuple((name, kind, True) for name, kind, _ in new)
    if added:
        warnings.append(f"column(s) {', '.join(c[0] for c in added)} added to {table} (add_columns)")
    return DriftPlan(spec, added, tuple(warnings))
