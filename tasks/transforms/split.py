"""Big keys split (issue 15): a key's rows as ranges of one orderable column, extracted in parallel.

Pure planning, no I/O: how many ranges a key gets, the ranges from the column's sampled boundary values, and each
range's predicate. Ranges are half-open ``[lo, hi)``; the first has no lower bound and also takes the column's NULLs,
the last has no upper bound, so every row — NULL, duplicate or boundary value — falls in exactly one range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasks.transforms.sql import quote_ident
from tasks.transforms.types import Dialect

MAX_RANGES = 64  # a key is never cut finer than this, however small split_rows is


@dataclass(frozen=True)
class SplitRange:
    """Rows with ``lo <= column < hi`` (an absent bound is open); ``nulls``: the column's NULLs too."""

    index: int
    lo: Any = None
    hi: Any = None
    has_lo: bool = False
    has_hi: bool = False
    nulls: bool = False

    def holds(self, value: Any) -> bool:
        """Whether a row whose split column is ``value`` belongs to this range (what the predicate selects)."""
        if value is None:
            return self.nulls
        return (not self.has_lo or value >= self.lo) and (not self.has_hi or value < self.hi)

    def predicate(self, column: str, dialect: Dialect) -> tuple[str, dict[str, Any]]:
        """The SQL condition of the range on ``column``, with its bound values (``:split_lo``, ``:split_hi``)."""
        col = quote_ident(column, dialect)
        parts, params = [], {}
        if self.has_lo:
            parts.append(f"{col} >= :split_lo")
            params["split_lo"] = self.lo
        if self.has_hi:
            parts.append(f"{col} < :split_hi")
            params["split_hi"] = self.hi
        cond = " AND ".join(parts) or "1 = 1"
        if self.nulls:
            cond = f"({cond} OR {col} IS NULL)" if parts else "1 = 1"
        return cond, params

    @property
    def label(self) -> str:
        """The range for a log line."""
        lo = repr(self.lo) if self.has_lo else "-∞"
        hi = repr(self.hi) if self.has_hi else "+∞"
        return f"[{lo}, {hi}){' and NULLs' if self.nulls else ''}"


@dataclass(frozen=True)
class TableSize:
    """What a source table's statistics say: its bytes on the source, and the bytes of an average row (0: unknown)."""

    bytes: int
    row_bytes: int


def default_split_rows(split_bytes: int, size: TableSize | None) -> int | None:
    """Rows of one range when ``source.split_rows`` is unset: ``split_bytes`` over the average row.

    None (no key is split) when the budget is 0, the statistics are unknown, or the whole table fits in the budget,
    so that no key of it can pass it (and no key needs counting).
    """
    if not split_bytes or size is None or size.row_bytes <= 0 or size.bytes <= split_bytes:
        return None
    return max(1, split_bytes // size.row_bytes)


# A table's bytes now (pg_table_size, TOAST included) and, from the statistics of its last ANALYZE or VACUUM, its
# pages and rows; summed over the leaf partitions of a partitioned table. :name is the quoted, qualified name.
PG_TABLE_SIZE = """\
WITH rel AS (SELECT to_regclass(:name) AS oid),
parts AS (
  SELECT p.relid AS oid FROM rel, pg_partition_tree(rel.oid) AS p WHERE p.isleaf
  UNION ALL
  SELECT rel.oid FROM rel WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(rel.oid))
)
SELECT sum(pg_table_size(c.oid))::bigint,
       (sum(c.relpages + COALESCE(t.relpages, 0)) FILTER (WHERE c.reltuples > 0))::bigint,
       (sum(c.reltuples) FILTER (WHERE c.reltuples > 0))::float8,
       current_setting('block_size')::int
FROM parts JOIN pg_class AS c ON c.oid = parts.oid LEFT JOIN pg_class AS t ON t.oid = c.reltoastrelid"""

# Without statistics (never analyzed): the average size of a sample of rows, as stored.
PG_SAMPLE_ROW_BYTES = "SELECT avg(pg_column_size(s.*))::bigint FROM (SELECT * FROM {table} LIMIT 1000) AS s"

# InnoDB's estimates: the clustered index's bytes and DATA_LENGTH / TABLE_ROWS.
MYSQL_TABLE_SIZE = (
    "SELECT DATA_LENGTH, AVG_ROW_LENGTH FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
)


def pg_table_size(row: Any, sample: Any = None) -> TableSize | None:
    """The size from :data:`PG_TABLE_SIZE`'s row (and a sampled average row when there are no statistics)."""
    total, pages, tuples, block = row
    if total is None:
        return None
    if pages is not None and tuples:
        return TableSize(int(total), int(pages * block / tuples))
    return TableSize(int(total), int(sample or 0))


def ranges_wanted(rows: int, split_rows: int | None) -> int:
    """How many ranges a key of ``rows`` rows is cut into: 1 (not split) unless it has more than ``split_rows``."""
    if not split_rows or rows <= split_rows:
        return 1
    return min(MAX_RANGES, -(-rows // split_rows))


def boundary_offsets(non_null_rows: int, ranges: int) -> list[int]:
    """The positions, in the column's sorted non-NULL values, of the ``ranges - 1`` boundary values (quantiles)."""
    if ranges <= 1 or non_null_rows <= 0:
        return []
    return sorted({non_null_rows * i // ranges for i in range(1, ranges)} - {0})


def plan_ranges(boundaries: Sequence[Any]) -> list[SplitRange]:
    """Ranges cut at ``boundaries`` (sampled values of the column, in any order, duplicates allowed).

    Duplicate boundaries collapse (a value repeated across a quantile cannot be cut): the ranges may then be fewer
    than asked for, never empty by construction and never overlapping. No boundary: one range, the whole key.
    """
    cuts = sorted({b for b in boundaries if b is not None})
    if not cuts:
        return [SplitRange(0, nulls=True)]
    out = [SplitRange(0, hi=cuts[0], has_hi=True, nulls=True)]
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False), start=1):
        out.append(SplitRange(i, lo=lo, hi=hi, has_lo=True, has_hi=True))
    out.append(SplitRange(len(cuts), lo=cuts[-1], has_lo=True))
    return out


def range_query(key_sql: str, rng: SplitRange, column: str, dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """The key's query narrowed to one range: its predicate ANDed onto the key query's WHERE (table sources)."""
    cond, params = rng.predicate(column, dialect)
    return f"{key_sql} AND ({cond})", params


def _from_where(key_sql: str) -> str:
    """``FROM … WHERE …`` of a table source's key query (its select list is quoted identifiers only)."""
    return key_sql.partition(" FROM ")[2]


def boundary_query(key_sql: str, column: str, dialect: Dialect) -> str:
    """The split column's value at position ``:split_offset`` of the key's sorted non-NULL values."""
    col = quote_ident(column, dialect)
    return (
        f"SELECT {col} FROM {_from_where(key_sql)} AND {col} IS NOT NULL "  # noqa: S608 - quoted idents, bound values
        f"ORDER BY {col} LIMIT 1 OFFSET :split_offset"
    )


def count_query(key_sql: str, column: str, dialect: Dialect) -> str:
    """The key's rows, and those whose split column is not NULL: one statement."""
    col = quote_ident(column, dialect)
    return f"SELECT count(*), count({col}) FROM {_from_where(key_sql)}"  # noqa: S608 - quoted idents, bound values
