"""Rows to Arrow and back, and the CSV dialect of staged files. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv


def rows_to_table(rows: Sequence[Sequence[Any]], names: Sequence[str], schema: pa.Schema | None) -> pa.Table:
    """Turn DB-API rows into an Arrow table, typed by ``schema`` when given (inferred otherwise)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = []
    for i, name in enumerate(names):
        values = list(columns[i])
        want = schema.field(name).type if schema is not None else None
        if want is None:
            arrays.append(pa.array(values))
            continue
        try:
            arrays.append(pa.array(values, type=want))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Drivers such as sqlite3 return dates and decimals as text or floats: convert through Arrow's cast.
            arrays.append(pa.array(values).cast(want))
    return pa.Table.from_arrays(arrays, names=list(names))


def csv_write_options() -> pacsv.WriteOptions:
    """Staged CSV: header line, strings always quoted, NULL as an empty unquoted field."""
    return pacsv.WriteOptions(include_header=True, quoting_style="needed", batch_size=256)


def csv_read_options(schema: pa.Schema, block_size: int = 1 << 20) -> tuple[Any, Any, Any]:
    """Read options that give back exactly what :func:`csv_write_options` wrote (NULL vs empty string too)."""
    read = pacsv.ReadOptions(block_size=block_size, use_threads=False)
    parse = pacsv.ParseOptions(newlines_in_values=True)
    convert = pacsv.ConvertOptions(
        column_types=schema,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["true", "t"],
        false_values=["false", "f"],
    )
    return read, parse, convert
