"""The big-key range planner (issue 15): every row in exactly one range, whatever the boundaries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.transforms.split import (
    MAX_RANGES,
    TableSize,
    boundary_offsets,
    default_split_rows,
    pg_table_size,
    plan_ranges,
    range_query,
    ranges_wanted,
)

VALUES = st.one_of(
    st.lists(st.none() | st.integers(-5, 5), max_size=60),  # few distinct values: duplicates everywhere
    st.lists(st.none() | st.integers(), max_size=60),
    st.lists(st.none() | st.text(max_size=3), max_size=40),
    st.lists(st.none() | st.dates(dt.date(2000, 1, 1), dt.date(2000, 1, 9)), max_size=40),
)


def quantiles(values: list[Any], n: int) -> list[Any]:
    """The boundaries the source samples: the sorted non-NULL values at the planner's offsets."""
    present = sorted(v for v in values if v is not None)
    return [present[o] for o in boundary_offsets(len(present), n)]


@given(VALUES, st.integers(1, 10))
def test_every_value_falls_in_exactly_one_range(values: list[Any], n: int) -> None:
    ranges = plan_ranges(quantiles(values, n))
    assert 1 <= len(ranges) <= max(n, 1)
    for v in values:
        assert sum(r.holds(v) for r in ranges) == 1, (v, ranges)
    assert [r.index for r in ranges] == list(range(len(ranges)))
    assert sum(r.nulls for r in ranges) == 1  # NULLs land in one range only


@given(st.lists(st.none() | st.integers(-3, 3), max_size=40), st.lists(st.none() | st.integers(-3, 3), max_size=8))
def test_any_boundaries_partition_the_values(values: list[Any], boundaries: list[Any]) -> None:
    """Unsorted, repeated or NULL boundaries still give a partition (the planner never trusts their order)."""
    ranges = plan_ranges(boundaries)
    for v in values:
        assert sum(r.holds(v) for r in ranges) == 1


@given(st.integers(0, 10**9), st.integers(1, 10**6))
def test_ranges_wanted(rows: int, split_rows: int) -> None:
    n = ranges_wanted(rows, split_rows)
    assert n == 1 if rows <= split_rows else 2 <= n <= MAX_RANGES
    if n < MAX_RANGES:
        assert -(-rows // n) <= split_rows  # each range within split_rows, as far as quantiles allow


@given(st.integers(0, 10**6), st.integers(1, 70))
def test_boundary_offsets_are_increasing_inside_the_values(rows: int, n: int) -> None:
    offsets = boundary_offsets(rows, n)
    assert offsets == sorted(set(offsets))
    assert all(0 < o < rows for o in offsets)
    assert len(offsets) <= n - 1


def test_unset_split_rows_never_splits() -> None:
    assert ranges_wanted(10**9, None) == 1


@pytest.mark.parametrize(("dialect", "quote"), [("postgres", '"'), ("mysql", "`")])
def test_range_predicates_bind_their_bounds(dialect: Any, quote: str) -> None:
    first, middle, last = plan_ranges([10, 20])
    q = f"{quote}id{quote}"
    sql, params = range_query("SELECT * FROM t WHERE k = :key", first, "id", dialect)
    assert sql == f"SELECT * FROM t WHERE k = :key AND (({q} < :split_hi OR {q} IS NULL))" and params == {
        "split_hi": 10
    }
    sql, params = range_query("SELECT * FROM t WHERE k = :key", middle, "id", dialect)
    assert sql.endswith(f"AND ({q} >= :split_lo AND {q} < :split_hi)") and params == {"split_lo": 10, "split_hi": 20}
    sql, params = range_query("SELECT * FROM t WHERE k = :key", last, "id", dialect)
    assert sql.endswith(f"AND ({q} >= :split_lo)") and params == {"split_lo": 20}


def test_default_split_rows_from_the_byte_budget() -> None:
    """split_bytes over the average row; none when off, unknown, or when the whole table fits in the budget."""
    assert default_split_rows(1_000_000, TableSize(bytes=10_000_000, row_bytes=200)) == 5_000
    assert default_split_rows(1_000_000, TableSize(bytes=10_000_000, row_bytes=3_000_000)) == 1  # a row per range
    assert default_split_rows(1_000_000, TableSize(bytes=1_000_000, row_bytes=200)) is None  # no key can be over
    assert default_split_rows(0, TableSize(bytes=10_000_000, row_bytes=200)) is None  # split_bytes: 0 turns it off
    assert default_split_rows(1_000_000, TableSize(bytes=10_000_000, row_bytes=0)) is None  # no statistics
    assert default_split_rows(1_000_000, None) is None  # a database without them (SQLite)


def test_pg_table_size_reads_statistics_or_the_sample() -> None:
    assert pg_table_size((81_920, 10, 40.0, 8192)) == TableSize(81_920, 2048)
    assert pg_table_size((81_920, None, None, 8192), 150) == TableSize(81_920, 150)  # never analyzed
    assert pg_table_size((None, None, None, 8192)) is None  # no such table
