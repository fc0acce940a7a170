"""Shared units through the Redshift Data API (issue 16), on the Redshift stand-in: one BatchExecuteStatement per
unit, every key reconciled inside it, a bad key or a swallowed key isolated by the per-key retry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.flows.test_fanout import ledger, task_runs
from tests.helpers.etl import (
    D1,
    create_narrow_pg_source,
    many_keys,
    narrow_expected,
    narrow_rows,
    narrow_warehouse,
    put_many_keys,
    run,
    write_narrow_dataset,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROLE = "arn:aws:iam::123456789012:role/keyflow-copy"


def data_api_profile(make_profile: Any, standin: Any, **settings: Any) -> Path:
    block = {"mode": "data_api", "workgroup": "analytics", "database": "test", "endpoint_url": standin.endpoint_url}
    return make_profile(  # type: ignore[no-any-return]
        warehouse_kind="redshift", warehouse_url="", redshift_iam_role=ROLE, redshift=block, **settings
    )


def unit_batches(standin: Any, since: int) -> list[list[str]]:
    """The load batches submitted since ``since`` that load a shared unit (their DELETE names several keys)."""
    return [b for b in standin.submitted_sql()[since:] if len(b) > 2 and re.search(r"IN \(:k1, :k2", b[1])]


@pytest.fixture()
def drop_after(pg: Any, names: dict[str, str]) -> Any:
    yield
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.usefixtures("drop_after")
def test_300_keys_through_the_data_api_in_one_run_every_key_exact_with_bounded_task_runs(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any, redshift_standin: Any
) -> None:
    keys = many_keys(300)
    rows = narrow_rows([k for k, _, _ in keys] + ["X1"])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = data_api_profile(make_profile, redshift_standin, max_parallel_keys=4)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names)
    before = len(redshift_standin.submitted_sql())

    state, results = run(dataset, profile, D1)

    assert state.is_completed(), state.message
    want = narrow_expected(rows, keys)
    assert [r["key"] for r in results] == [k for k, _, _ in keys]
    for r in results:
        n = len(want[r["key"]])
        assert (r["status"], r["rows_loaded"], r["rows_staged"]) == ("loaded", n, n), r
    assert narrow_warehouse(pg, names) == {k: v for k, v in want.items() if v}
    assert ledger(pg, names) == {k: len(v) for k, v in want.items()}
    batches = unit_batches(redshift_standin, before)
    assert len(batches) == 4  # one batch per unit: 4 units of 75 keys
    for batch in batches:
        assert batch[0].startswith("LOCK ") and batch[2].startswith("COPY ") and len(batch) <= 40
        assert all("K0" not in sql for sql in batch)  # keys travel as bound parameters, never in the SQL text
    assert len(task_runs(state)) <= 20

    # A rerun replaces, never adds; the statement ledger is left empty.
    state, _ = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert narrow_warehouse(pg, names) == {k: v for k, v in want.items() if v}
    from config.loader import load_profile
    from tasks.resources import object_store_for

    assert [
        k for k in object_store_for(load_profile(profile, environ={})).list_keys("staging/") if "_loads/" in k
    ] == []


@pytest.mark.usefixtures("drop_after")
def test_a_poisoned_key_fails_alone_through_the_data_api(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any, redshift_standin: Any
) -> None:
    keys = many_keys(120)
    rows = narrow_rows([k for k, _, _ in keys])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = data_api_profile(make_profile, redshift_standin, max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names, max_keys_per_unit=40)
    assert run(dataset, profile, D1)[0].is_completed()
    before = narrow_warehouse(pg, names)
    src, wh = names["src_table"], names["wh_schema"]
    want = narrow_expected(rows, keys)
    poisoned = next(k for k, v in want.items() if k >= "K0050" and v)  # in the middle unit, with rows to load
    with pg.cursor() as cur:
        cur.execute(f"UPDATE {src} SET v = v || '-v2'")
        cur.execute(f"UPDATE {src} SET v = 'poison' WHERE k = %s", (poisoned,))  # every row: one is extracted
        cur.execute(f"ALTER TABLE {wh}.narrow ADD CONSTRAINT no_poison CHECK (v IS DISTINCT FROM 'poison')")

    state, results = run(dataset, profile, D1)

    assert state.is_failed() and state.message == f"1 of 120 key(s) failed: {poisoned}"
    by_key = {r["key"]: r for r in results}
    bad = by_key.pop(poisoned)
    assert bad["error"].startswith(f"key {poisoned!r}: load failed, previous rows kept: ")
    assert bad["unit"] == "K0040..K0079 (40 keys), retried alone"
    assert all(r["status"] == "loaded" for r in by_key.values())
    assert sum(r["unit"] == "K0000..K0039 (40 keys)" for r in by_key.values()) == 40
    after = narrow_warehouse(pg, names)
    assert after[poisoned] == before[poisoned]
    assert all(row[4].endswith("-v2") for k, v in after.items() if k != poisoned for row in v)


@pytest.mark.usefixtures("drop_after")
def test_a_reconciliation_mismatch_fails_the_data_api_unit_and_the_retry_isolates_the_key(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any, redshift_standin: Any
) -> None:
    """A trigger swallows one key's rows: the batch's check divides by zero, the unit rolls back, keys load alone."""
    keys = many_keys(60)
    rows = narrow_rows([k for k, _, _ in keys])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = data_api_profile(make_profile, redshift_standin, max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names)
    assert run(dataset, profile, D1)[0].is_completed()
    want = narrow_expected(rows, keys)
    swallowed = next(k for k, v in want.items() if k >= "K0030" and len(v) >= 2)
    wh = names["wh_schema"]
    with pg.cursor() as cur:
        cur.execute(
            f"""CREATE FUNCTION {wh}.swallow() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF NEW.k = '{swallowed}' THEN RETURN NULL; END IF; RETURN NEW; END $$"""
        )
        cur.execute(f"CREATE TRIGGER swallow BEFORE INSERT ON {wh}.narrow FOR EACH ROW EXECUTE FUNCTION {wh}.swallow()")
        cur.execute(f"UPDATE {wh}.keyflow_loads SET run_id = 'before'")
    since = len(redshift_standin.submitted_sql())

    state, results = run(dataset, profile, D1)

    assert state.is_failed() and state.message == f"1 of 60 key(s) failed: {swallowed}"
    by_key = {r["key"]: r for r in results}
    assert by_key[swallowed]["error"].startswith(f"key {swallowed!r}: reconciliation failed: extracted=")
    assert by_key[swallowed]["unit"] == "K0030..K0059 (30 keys), retried alone"
    assert [k for k, r in by_key.items() if r["status"] != "loaded"] == [swallowed]
    got = narrow_warehouse(pg, names)
    assert {k: v for k, v in got.items() if k != swallowed} == {k: v for k, v in want.items() if v and k != swallowed}
    assert got[swallowed] == want[swallowed]  # the previous run's rows, intact
    with pg.cursor() as cur:
        cur.execute(f"SELECT key FROM {wh}.keyflow_loads WHERE run_id = 'before'")
        assert [r[0] for r in cur.fetchall()] == [swallowed]
    failed = [
        s
        for s in redshift_standin.statements.values()
        if s.status == "FAILED" and s.sqls in unit_batches(redshift_standin, since)
    ]
    assert len(failed) == 1 and "division by zero" in failed[0].error
