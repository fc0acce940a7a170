"""The column-type vocabulary of dataset YAML files (``bigint``, ``decimal(38,10)``, ``varchar(64)``, …)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from config.errors import quoted

# name in YAML -> canonical kind; aliases users reach for are accepted.
_KINDS = {
    "smallint": "smallint",
    "int2": "smallint",
    "integer": "integer",
    "int": "integer",
    "int4": "integer",
    "bigint": "bigint",
    "int8": "bigint",
    "real": "real",
    "float4": "real",
    "double": "double",
    "double precision": "double",
    "float8": "double",
    "float": "double",
    "decimal": "decimal",
    "numeric": "decimal",
    "boolean": "boolean",
    "bool": "boolean",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "text": "text",
    "varchar": "varchar",
    "string": "text",
}
_TYPE_RE = re.compile(r"^\s*([a-z][a-z0-9 ]*?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")


@dataclass(frozen=True)
class ColumnType:
    """A parsed column type: ``kind`` plus precision/scale (decimal) or length (varchar)."""

    kind: str
    precision: int | None = None
    scale: int | None = None
    length: int | None = None

    def __str__(self) -> str:
        if self.kind == "decimal":
            return f"decimal({self.precision},{self.scale})"
        if self.kind == "varchar" and self.length:
            return f"varchar({self.length})"
        return self.kind


def parse_type(text: str) -> ColumnType:
    """Parse a YAML type name; raise ``ValueError`` with a user-facing message when unknown."""
    m = _TYPE_RE.match(str(text).lower())
    kind = _KINDS.get(m.group(1)) if m else None
    if not m or kind is None:
        raise ValueError(f"unknown type {quoted(text)} (known: {', '.join(sorted(set(_KINDS.values())))})")
    a, b = m.group(2), m.group(3)
    if kind == "decimal":
        precision = int(a) if a else 38
        scale = int(b) if b else 0
        if not 1 <= precision <= 76 or not 0 <= scale <= precision:
            raise ValueError(f"decimal precision must be 1..76 and scale 0..precision, got {text!r}")
        return ColumnType("decimal", precision=precision, scale=scale)
    if kind == "varchar":
        length = int(a) if a else None
        if length is not None and not 1 <= length <= 65535:
            raise ValueError(f"varchar length must be 1..65535, got {text!r}")
        return ColumnType("varchar", length=length)
    if a or b:
        raise ValueError(f"type {kind!r} takes no arguments, got {text!r}")
    return ColumnType(kind)
