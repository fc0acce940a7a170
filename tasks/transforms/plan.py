"""Plan the target table of a dataset from the source schema and the rules, before any row moves. Pure."""

from __future__ import annotations

import pyarrow as pa

from config.errors import ConfigError
from config.models import DatasetConfig
from config.types import parse_type
from tasks.transforms.rules import RuleEngine, RuleError
from tasks.transforms.sql import TableSpec
from tasks.transforms.types import arrow_type, column_type_from_arrow


def plan_table(dataset: DatasetConfig, source_schema: pa.Schema | None, where: str) -> TableSpec:
    """The target :class:`TableSpec`; raise :class:`ConfigError` lines prefixed with ``where`` (the YAML file)."""
    target = dataset.target
    key_col = dataset.target_key_column
    produced: pa.Schema | None = None
    if source_schema is not None:
        try:
            produced = RuleEngine(dataset.rules).output_schema(source_schema)
        except RuleError as exc:
            raise ConfigError(f"{where}: {exc.path}: {exc.message}") from None
    if target.columns:
        columns = tuple((c.name, parse_type(c.type), c.nullable) for c in target.columns)
        if produced is not None:
            missing = [c.name for c in target.columns if c.name not in produced.names]
            extra = [n for n in produced.names if n not in {c.name for c in target.columns}]
            if missing:
                raise ConfigError(f"{where}: target.columns: the rules do not produce {', '.join(missing)}")
            if extra:
                raise ConfigError(
                    f"{where}: target.columns: the rules also produce {', '.join(extra)}; "
                    "list them or drop them with a rule"
                )
    else:
        assert produced is not None, "a query source needs target.columns (enforced by the model)"
        columns = tuple((f.name, column_type_from_arrow(f.type), True) for f in produced)
    names = [c[0] for c in columns]
    if key_col not in names:
        raise ConfigError(
            f"{where}: target.key_column: {key_col!r} is not among the target columns ({', '.join(names)})"
        )
    for col in [target.distkey, *target.sortkey]:
        if col and col not in names:
            raise ConfigError(f"{where}: target: distkey/sortkey column {col!r} is not a target column")
    for col in target.primary_key:
        if col not in names:
            raise ConfigError(f"{where}: target.primary_key: {col!r} is not among the target columns")
    return TableSpec(
        schema=target.db_schema,
        table=target.table,
        key_column=key_col,
        columns=columns,
        distkey=target.distkey,
        sortkey=tuple(target.sortkey),
        load_mode=target.load_mode,
        primary_key=tuple(target.primary_key),
        on_schema_change=target.on_schema_change,
    )


def arrow_schema(spec: TableSpec) -> pa.Schema:
    """Arrow schema of a target table."""
    return pa.schema([pa.field(n, arrow_type(t), nullable) for n, t, nullable in spec.columns])
