"""Map keyflow column types to Arrow types and to each warehouse's SQL types, and back from Arrow."""

from __future__ import annotations

import pyarrow as pa

from config.types import ColumnType, parse_type

Dialect = str  # "postgres" | "redshift" | "duckdb" | "mysql" | "sqlite"


def arrow_type(ct: ColumnType | str) -> pa.DataType:
    """The Arrow type that carries values of a keyflow column type exactly."""
    t = parse_type(ct) if isinstance(ct, str) else ct
    match t.kind:
        case "smallint":
            return pa.int16()
        case "integer":
            return pa.int32()
        case "bigint":
            return pa.int64()
        case "real":
            return pa.float32()
        case "double":
            return pa.float64()
        case "decimal":
            p, s = t.precision or 38, t.scale or 0
            return pa.decimal128(p, s) if p <= 38 else pa.decimal256(p, s)
        case "boolean":
            return pa.bool_()
        case "date":
            return pa.date32()
        case "timestamp":
            return pa.timestamp("us")
        case "timestamptz":
            return pa.timestamp("us", tz="UTC")
        case _:
            return pa.string()


def column_type_from_arrow(t: pa.DataType) -> ColumnType:
    """The keyflow column type for an Arrow type (used to derive target DDL from the source and rules)."""
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return ColumnType("smallint")
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return ColumnType("integer")
    if pa.types.is_integer(t):
        return ColumnType("bigint")
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        return ColumnType("real")
    if pa.types.is_floating(t):
        return ColumnType("double")
    if pa.types.is_decimal(t):
        return ColumnType("decimal", precision=t.precision, scale=t.scale)
    if pa.types.is_boolean(t):
        return ColumnType("boolean")
    if pa.types.is_date(t):
        return ColumnType("date")
    if pa.types.is_timestamp(t):
        return ColumnType("timestamptz" if t.tz else "timestamp")
    return ColumnType("text")


def sql_type(ct: ColumnType | str, dialect: Dialect) -> str:
    """SQL type name of a keyflow column type in one warehouse dialect."""
    t = parse_type(ct) if isinstance(ct, str) else ct
    match t.kind:
        case "double":
            return "DOUBLE PRECISION" if dialect in ("postgres", "redshift") else "DOUBLE"
        case "real":
            return "REAL"
        case "decimal":
            p = min(t.precision or 38, 38) if dialect == "redshift" else t.precision
            return f"DECIMAL({p},{t.scale})"
        case "timestamptz":
            return "TIMESTAMPTZ"
        case "text":
            # Redshift has no unbounded text: VARCHAR(MAX) is 65535 bytes.
            return "VARCHAR(65535)" if dialect == "redshift" else "TEXT"
        case "varchar":
            return f"VARCHAR({t.length})" if t.length else ("VARCHAR(65535)" if dialect == "redshift" else "TEXT")
        case _:
            return t.kind.upper()
