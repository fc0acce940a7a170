"""Work units (issue 16): how keys are packed, each key's own window in a unit's SQL, per-key reconciliation."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.errors import ReconciliationError
from config.models import DatasetConfig, SourceConfig
from tasks.transforms.keys import CampaignKey
from tasks.transforms.sql import (
    TableSpec,
    render_count_keys,
    render_count_keys_query,
    render_delete_keys,
    render_keys_predicate,
    render_ledger_delete_keys,
    render_ledger_insert_rows,
    render_unit_query,
)
from tasks.transforms.staging import KeyCounts, StagedKey, reconcile_unit, unit_prefix
from tasks.transforms.units import (
    WorkUnit,
    count_by_key,
    key_windows,
    plan_backfill,
    plan_units,
    why_not_shared,
    window_params,
)

D = dt.date(2017, 3, 1)


def key(name: str, start: dt.date = D, end: dt.date = D) -> CampaignKey:
    return CampaignKey("facts", name, start, end)


@given(
    sizes=st.lists(st.integers(0, 5_000), max_size=300),
    unit_rows=st.integers(1, 10_000),
    max_keys=st.integers(1, 50),
)
def test_every_key_is_in_exactly_one_unit_in_order_and_units_keep_their_bounds(
    sizes: list[int], unit_rows: int, max_keys: int
) -> None:
    keys = [key(f"K{i:04d}") for i in range(len(sizes))]
    counts = {k.key: n for k, n in zip(keys, sizes, strict=True)}
    units = plan_units(keys, counts, unit_rows, max_keys)
    assert sorted(k.key for u in units for k in u.keys) == [k.key for k in keys]  # each key exactly once
    for u in units:
        assert list(u.keys) == sorted(u.keys, key=lambda k: k.key)  # a unit's keys in key order: its label's range
        assert u.expected_rows == sum(counts[k.key] for k in u.keys)
        assert len(u.keys) <= max_keys
        if u.shared:
            assert u.expected_rows <= unit_rows  # a shared unit never passes its row target
            assert all(counts[k.key] < unit_rows for k in u.keys)  # and holds no large key
    # A unit closes only when the next small key would not fit: two neighbouring shared units could not be one.
    shared = [u for u in units if len(u.keys) > 1 or counts[u.keys[0].key] < unit_rows]
    for a, b in zip(shared, shared[1:], strict=False):
        assert a.expected_rows + counts[b.keys[0].key] > unit_rows or len(a.keys) == max_keys


def test_large_keys_keep_their_own_unit_and_small_ones_share() -> None:
    keys = [key(n) for n in ("A", "B", "BIG", "C", "D", "E")]
    units = plan_units(
        keys, {"A": 10, "B": 10, "BIG": 500, "C": 10, "D": 90, "E": 1}, unit_rows=100, max_keys_per_unit=3
    )
    # BIG does not close the unit it interrupts: small keys around it still share.
    assert [u.names for u in units] == [["BIG"], ["A", "B", "C"], ["D", "E"]]
    assert [u.label for u in units] == ["BIG", "A..C (3 keys)", "D..E (2 keys)"]
    assert [u.shared for u in units] == [False, True, True]
    assert [u.expected_rows for u in units] == [500, 30, 91]


def test_without_counts_every_key_is_its_own_unit() -> None:
    keys = [key("A"), key("B")]
    assert [u.names for u in plan_units(keys, None, 100, 50)] == [["A"], ["B"]]
    assert [u.names for u in plan_units(keys, {"A": 1, "B": 1}, 100, 1)] == [["A"], ["B"]]


def test_a_units_label_cuts_long_keys_and_its_folder_is_not_a_keys() -> None:
    unit = WorkUnit((key("x" * 300), key("y")))
    assert unit.label == f"{'x' * 40}… (300 characters)..y (2 keys)"
    assert unit_prefix("staging", "facts", "run1", unit.digest) == f"staging/facts/run1/unit={unit.digest}/"
    assert WorkUnit((key("y"), key("x" * 300))).digest != unit.digest
    with pytest.raises(ValueError, match="at least one key"):
        WorkUnit(())


def test_keys_are_grouped_by_their_own_window_and_bound_as_values() -> None:
    k = [key("A", D, D + dt.timedelta(3)), key("B'; --", D, D), key("C", D, D + dt.timedelta(3))]
    windows = key_windows(k)
    assert [(w.start_date, w.end_date, w.keys) for w in windows] == [
        (D, D + dt.timedelta(3), ("A", "C")),
        (D, D, ("B'; --",)),
    ]
    assert window_params(windows) == {
        "s0": D,
        "e0": D + dt.timedelta(3),
        "k0_0": "A",
        "k0_1": "C",
        "s1": D,
        "e1": D,
        "k1_0": "B'; --",
    }
    src = SourceConfig(table="facts", key_column="campaign_key", date_column="event_date")
    assert render_keys_predicate(src, "postgres", [2, 1]) == (
        '(("campaign_key" IN (:k0_0, :k0_1) AND "event_date" >= :s0 AND "event_date" <= :e0) OR '
        '("campaign_key" IN (:k1_0) AND "event_date" >= :s1 AND "event_date" <= :e1))'
    )
    assert render_unit_query(src, "mysql", [1]) == (
        "SELECT * FROM `facts` WHERE (`campaign_key` IN (:k0_0) AND `event_date` >= :s0 AND `event_date` <= :e0)"
    )
    no_dates = SourceConfig(table="facts", schema="mkt", key_column="k", columns=["k", "v"])
    assert render_unit_query(no_dates, "postgres", [2, 1]) == (
        'SELECT "k", "v" FROM "mkt"."facts" WHERE "k" IN (:k0_0, :k0_1, :k1_0)'
    )
    assert render_count_keys_query(no_dates, "postgres", [1]) == (
        'SELECT "k", count(*) FROM "mkt"."facts" WHERE "k" IN (:k0_0) GROUP BY "k"'
    )
    with pytest.raises(ValueError, match="at least one key in every window"):
        render_keys_predicate(src, "postgres", [1, 0])
    query = SourceConfig(query="SELECT * FROM f WHERE k = :key", key_column="k")
    with pytest.raises(ValueError, match="one key per unit"):
        render_unit_query(query, "postgres", [1])


def test_target_statements_of_a_unit_bind_every_key() -> None:
    spec = TableSpec(schema="a", table="f", key_column="k", columns=())
    assert render_delete_keys(spec, 3, "postgres") == 'DELETE FROM "a"."f" WHERE "k" IN (%s, %s, %s)'
    assert render_count_keys(spec, 2, "redshift") == (
        'SELECT "k", count(*) FROM "a"."f" WHERE "k" IN (%s, %s) GROUP BY "k"'
    )
    assert render_ledger_delete_keys("a", 2, "postgres") == (
        'DELETE FROM "a"."keyflow_loads" WHERE dataset = %s AND run_date = %s AND key IN (%s, %s)'
    )
    assert render_ledger_insert_rows("a", 2, "postgres").endswith(
        "VALUES (%s, %s, %s, %s, %s, %s), (%s, %s, %s, %s, %s, %s)"
    )
    with pytest.raises(ValueError):
        render_delete_keys(spec, 0, "postgres")


def test_count_by_key_counts_text_values_and_nulls() -> None:
    assert count_by_key(pa.array(["a", "b", "a", None])) == {"a": 2, "b": 1, "": 1}
    assert count_by_key(pa.chunked_array([pa.array([7, 7]), pa.array([8])])) == {"7": 2, "8": 1}
    assert count_by_key(pa.array([], pa.string())) == {}


def staged(members: list[KeyCounts]) -> StagedKey:
    return StagedKey(
        dataset="facts",
        key="A..C (3 keys)",
        run_id="r",
        run_date="2017-03-01",
        bucket="b",
        prefix="p/",
        manifest_key="p/manifest.json",
        compression="zstd",
        columns=("k",),
        rows_extracted=sum(m.rows_extracted for m in members),
        rows_filtered=sum(m.rows_filtered for m in members),
        rows_staged=sum(m.rows_staged for m in members),
        bytes_staged=0,
        seconds=0,
        members=tuple(members),
    )


def test_a_unit_reconciles_only_when_every_key_does() -> None:
    s = staged([KeyCounts("A", 3, 1, 2), KeyCounts("B", 0, 0, 0), KeyCounts("C", 5, 0, 5)])
    reconcile_unit(s, 7, {"A": 2, "C": 5})  # B has no rows, and none loaded
    with pytest.raises(ReconciliationError, match=r"key 'B': reconciliation failed: extracted=0 staged=0 loaded=1"):
        reconcile_unit(s, 7, {"A": 2, "B": 1, "C": 4})  # the totals agree, two keys do not: the first is named
    with pytest.raises(ReconciliationError, match=r"key 'A\.\.C \(3 keys\)'"):
        reconcile_unit(s, 6, {"A": 2, "C": 5})  # the COPY lost a row
    with pytest.raises(ReconciliationError):
        reconcile_unit(s, 7, {"A": 2, "C": 5, "Z": 1})  # a row landed under a key outside the unit


def dataset(**changes: object) -> DatasetConfig:
    data: dict[str, object] = {
        "name": "facts",
        "source": {"table": "f", "key_column": "k"},
        "target": {"table": "f"},
    } | changes
    return DatasetConfig.model_validate(data)


def test_which_datasets_can_share_units() -> None:
    assert why_not_shared(dataset()) is None
    assert why_not_shared(dataset(rules=[{"dedupe": {"on": ["k", "id"]}}])) is None
    assert why_not_shared(dataset(rules=[{"dedupe": {"on": ["id"]}}])) == (
        "rules[0].dedupe is not per key (its 'on' does not name the key column)"
    )
    assert why_not_shared(
        dataset(
            source={"query": "SELECT * FROM f WHERE k = :key", "key_column": "k"},
            target={"table": "f", "columns": [{"name": "k", "type": "text"}]},
        )
    ) == ("a query source extracts one :key at a time")
    assert "leaves out the key column 'k'" in str(
        why_not_shared(dataset(source={"table": "f", "key_column": "k", "columns": ["v"]}))
    )


@given(
    windows=st.lists(st.tuples(st.integers(-5, 20), st.integers(0, 8), st.booleans()), max_size=30),
    done_bits=st.integers(0, 2**64),
    force=st.booleans(),
)
def test_a_backfill_plan_is_each_keys_active_dates_without_a_ledger_row(
    windows: list[tuple[int, int, bool]], done_bits: int, force: bool
) -> None:
    days = [D + dt.timedelta(n) for n in range(15)]
    keys = [
        CampaignKey("facts", f"K{i:02d}", D + dt.timedelta(s), D + dt.timedelta(s + n), enabled)
        for i, (s, n, enabled) in enumerate(windows)
    ]
    pairs = [(k.key, d.isoformat()) for k in keys for d in days if k.is_active(d)]
    done = {p for i, p in enumerate(pairs) if done_bits >> (i % 64) & 1}
    plan = plan_backfill(keys, days, done, force)
    for d in days:  # the same as asking each date on its own, as a run for that date would
        on = sorted(k.key for k in keys if k.is_active(d))
        assert plan.active[d.isoformat()] == on
        assert plan.pending[d.isoformat()] == [k for k in on if force or (k, d.isoformat()) not in done]
    assert {(k, d.isoformat()) for k, ds in plan.dates.items() for d in ds} == {
        (k, d) for d, ks in plan.pending.items() for k in ks
    }
    assert [k.key for k in plan.keys] == sorted(plan.dates)  # each pending key once, loaded for all its dates
