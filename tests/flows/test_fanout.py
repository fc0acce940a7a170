"""Fan-out at thousands of keys (issue 16): small keys share work units, results stay per key, a bad key fails alone.

Real PostgreSQL (and MariaDB) sources, the moto server for S3 and DynamoDB, a PostgreSQL warehouse, Prefect's
test harness.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

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
from tests.helpers.services import MYSQL_URL

pytestmark = pytest.mark.usefixtures("prefect_harness")


def task_runs(state: Any) -> list[Any]:
    """The task runs of a flow run, as the Prefect API lists them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async def read() -> list[Any]:
        async with get_client() as client:
            runs: list[Any] = []
            while True:
                page = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}),
                    offset=len(runs),
                    limit=200,
                )
                runs += page
                if len(page) < 200:
                    return runs

    return asyncio.run(read())


def ledger(pg: Any, names: dict[str, str], day: dt.date = D1) -> dict[str, int]:
    with pg.cursor() as cur:
        cur.execute(
            f"SELECT key, rows_loaded FROM {names['wh_schema']}.keyflow_loads "
            "WHERE dataset = 'narrow' AND run_date = %s",
            (day,),
        )
        return dict(cur.fetchall())


@pytest.fixture()
def drop_after(pg: Any, names: dict[str, str]) -> Any:
    yield
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.usefixtures("drop_after")
def test_2000_keys_in_one_run_every_key_exact_with_bounded_task_runs(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    keys = many_keys(2000)
    # Rows of keys that are not active (never listed) must not be extracted by a shared unit either.
    rows = narrow_rows([k for k, _, _ in keys] + ["X1", "X2"])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = make_profile(max_parallel_keys=4)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names)

    state, results = run(dataset, profile, D1)

    assert state.is_completed(), state.message
    want = narrow_expected(rows, keys)
    assert [r["key"] for r in results] == [k for k, _, _ in keys]  # every key, in key order
    for r in results:
        n = len(want[r["key"]])
        assert (r["status"], r["rows_loaded"], r["rows_staged"]) == ("loaded", n, n), r
        assert r["rows_extracted"] == r["rows_staged"] + r["rows_filtered"]
    assert sum(r["rows_filtered"] for r in results) > 0 and any(not want[k] for k in want)
    got = narrow_warehouse(pg, names)
    assert got == {k: v for k, v in want.items() if v}  # value for value, each key within its own window
    assert ledger(pg, names) == {k: len(v) for k, v in want.items()}  # a ledger row per key, with its rows

    runs = task_runs(state)
    names_ = sorted(t.name for t in runs)
    assert len(runs) <= 30, names_  # 8 units of 250 keys: stage + load each, plus the run's own steps
    assert "stage-K0000..K0249 (250 keys)" in names_ and "load-K1750..K1999 (250 keys)" in names_
    assert {r["unit"] for r in results} == {n.removeprefix("load-") for n in names_ if n.startswith("load-")}

    # Rerun: the same rows, replaced not added; nothing left in staging.
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert narrow_warehouse(pg, names) == {k: v for k, v in want.items() if v}
    from config.loader import load_profile
    from tasks.resources import object_store_for

    assert list(object_store_for(load_profile(profile, environ={})).list_keys("staging/narrow/")) == []


@pytest.mark.usefixtures("drop_after")
def test_a_poisoned_key_among_500_fails_alone_and_keeps_its_rows(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    keys = many_keys(500)
    rows = narrow_rows([k for k, _, _ in keys])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = make_profile(max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names, max_keys_per_unit=100)
    assert run(dataset, profile, D1)[0].is_completed()
    before = narrow_warehouse(pg, names)
    src, wh = names["src_table"], names["wh_schema"]
    poisoned = "K0123"
    with pg.cursor() as cur:
        cur.execute(f"UPDATE {src} SET v = v || '-v2'")
        # A real fault in the warehouse: one value of K0123 breaks a constraint in the middle of its unit's COPY.
        cur.execute(f"UPDATE {src} SET v = 'poison' WHERE id = (SELECT max(id) FROM {src} WHERE k = %s)", (poisoned,))
        cur.execute(f"ALTER TABLE {wh}.narrow ADD CONSTRAINT no_poison CHECK (v IS DISTINCT FROM 'poison')")

    state, results = run(dataset, profile, D1)

    assert state.is_failed()
    assert state.message == f"1 of 500 key(s) failed: {poisoned}"
    by_key = {r["key"]: r for r in results}
    assert len(by_key) == 500
    bad = by_key.pop(poisoned)
    assert bad["status"] == "failed"
    assert bad["error"].startswith(f"key {poisoned!r}: load failed, previous rows kept: new row for relation")
    assert bad["unit"] == "K0100..K0199 (100 keys), retried alone"
    assert all(r["status"] == "loaded" for r in by_key.values())
    after = narrow_warehouse(pg, names)
    assert after[poisoned] == before[poisoned]  # untouched: the previous run's rows
    assert all(row[4].endswith("-v2") for k, v in after.items() if k != poisoned for row in v)
    # The keys of the poisoned key's unit were retried one by one; the other units loaded together.
    assert {r["unit"] for r in by_key.values() if r["unit"].endswith("retried alone")} == {
        "K0100..K0199 (100 keys), retried alone"
    }
    assert sum(r["unit"] == "K0000..K0099 (100 keys)" for r in by_key.values()) == 100
    names_ = {t.name for t in task_runs(state)}
    assert "retry-K0100..K0199 (100 keys)-key-by-key" in names_


@pytest.mark.usefixtures("drop_after")
def test_a_shared_units_reconciliation_failure_is_retried_key_by_key(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """A trigger swallows one key's rows: the unit's counts disagree, it rolls back, its keys load one by one."""
    keys = many_keys(60)
    rows = narrow_rows([k for k, _, _ in keys])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = make_profile(max_parallel_keys=2)
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

    state, results = run(dataset, profile, D1)

    assert state.is_failed() and state.message == f"1 of 60 key(s) failed: {swallowed}"
    by_key = {r["key"]: r for r in results}
    assert by_key[swallowed]["error"].startswith(f"key {swallowed!r}: reconciliation failed: extracted=")
    assert by_key[swallowed]["unit"] == "K0030..K0059 (30 keys), retried alone"
    assert [k for k, r in by_key.items() if r["status"] != "loaded"] == [swallowed]
    got = narrow_warehouse(pg, names)
    assert {k: v for k, v in got.items() if k != swallowed} == {k: v for k, v in want.items() if v and k != swallowed}
    assert got[swallowed] == want[swallowed]  # the previous run's rows, intact
    with pg.cursor() as cur:  # every key but the swallowed one has this run's ledger row
        cur.execute(f"SELECT key FROM {wh}.keyflow_loads WHERE run_id = 'before'")
        assert [r[0] for r in cur.fetchall()] == [swallowed]


@pytest.mark.usefixtures("drop_after")
def test_summary_and_json_list_every_key(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import app

    keys = many_keys(300)
    rows = narrow_rows([k for k, _, _ in keys])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = make_profile(max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    args = ["etl", "run", "-d", str(dataset), "--date", D1.isoformat(), "-p", str(profile)]

    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    listed = json.loads(as_json.stdout.strip().splitlines()[-1])
    want = narrow_expected(rows, keys)
    assert {r["key"]: r["rows_loaded"] for r in listed} == {k: len(v) for k, v in want.items()}
    assert {r["unit"] for r in listed} == {"K0000..K0149 (150 keys)", "K0150..K0299 (150 keys)"}

    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    for k, _, _ in keys:
        assert f"\n {k} " in table.stdout or f"\n{k} " in table.stdout, k

    # The run's artifact has a row per key too.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def artifact() -> Any:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["narrow-run-summary"])),
                sort="CREATED_DESC",  # type: ignore[arg-type]
                limit=1,
            )
            return found[0]

    data = (asyncio.run(artifact())).data
    table_rows = json.loads(data) if isinstance(data, str) else data
    assert sorted(r["key"] for r in table_rows) == [k for k, _, _ in keys]


def test_mariadb_source_shares_units_too(
    mysql: Any, pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    keys = many_keys(90)
    rows = narrow_rows([k for k, _, _ in keys] + ["X1"])
    table = names["src_table"]
    with mysql.cursor() as cur:
        cur.execute(
            f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, k VARCHAR(64) NOT NULL, d DATE NOT NULL, n INT, v TEXT, "
            "KEY (k, d)) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
        cur.executemany(f"INSERT INTO {table} VALUES (%s,%s,%s,%s,%s)", rows)
    try:
        profile = make_profile(source_url=MYSQL_URL, max_parallel_keys=3)
        put_many_keys(profile, keys)
        dataset = write_narrow_dataset(tmp_path, names)
        state, results = run(dataset, profile, D1)
        assert state.is_completed(), state.message
        want = narrow_expected(rows, keys)
        assert {r["unit"] for r in results} == {
            "K0000..K0029 (30 keys)",
            "K0030..K0059 (30 keys)",
            "K0060..K0089 (30 keys)",
        }
        assert {r["key"]: r["rows_loaded"] for r in results} == {k: len(v) for k, v in want.items()}
        assert narrow_warehouse(pg, names) == {k: v for k, v in want.items() if v}
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.usefixtures("drop_after")
def test_units_on_a_dask_cluster_load_every_key_and_a_bad_key_fails_alone(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """The same units on a local Dask cluster of two worker processes: units, results and retries cross processes."""
    from config.errors import RunFailedError
    from flows.rds_to_redshift import for_profile

    keys = many_keys(400)
    rows = narrow_rows([k for k, _, _ in keys])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = make_profile(max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names, max_keys_per_unit=100)
    assert run(dataset, profile, D1)[0].is_completed()  # in threads first: the target and the rows are there
    before = narrow_warehouse(pg, names)
    poisoned = "K0301"
    with pg.cursor() as cur:
        cur.execute(f"UPDATE {names['src_table']} SET v = v || '-v2'")
        cur.execute(
            f"UPDATE {names['src_table']} SET v = 'poison' WHERE id = (SELECT max(id) FROM {names['src_table']} "
            "WHERE k = %s)",
            (poisoned,),
        )
        cur.execute(f"ALTER TABLE {names['wh_schema']}.narrow ADD CONSTRAINT no_poison CHECK (v <> 'poison')")
    profile = make_profile(task_runner="dask", dask_workers=2, max_parallel_keys=2)

    flow = for_profile(str(profile))
    assert type(flow.task_runner).__name__ == "DaskTaskRunner"
    state = flow(dataset=str(dataset), run_date=D1, profile=str(profile), return_state=True)

    assert state.is_failed() and state.message == f"1 of 400 key(s) failed: {poisoned}"
    result = state.result(raise_on_failure=False)
    results = result.data if isinstance(result, RunFailedError) else result
    want = narrow_expected(rows, keys)
    assert {r["key"]: r["rows_loaded"] for r in results if r["key"] != poisoned} == {
        k: len(v) for k, v in want.items() if k != poisoned
    }
    got = narrow_warehouse(pg, names)
    assert got[poisoned] == before[poisoned]  # its previous rows
    assert all(row[4].endswith("-v2") for k, v in got.items() if k != poisoned for row in v)
    assert len(task_runs(state)) <= 20


def rolling_keys(days: int, per_day: int, span: int) -> list[tuple[str, dt.date, dt.date]]:
    """Keys active ``span`` days each, ``per_day // span`` starting every day: ``per_day`` active on each date."""
    first = dt.date(2017, 3, 1)
    out = []
    for d in range(-(span - 1), days):
        start = first + dt.timedelta(days=d)
        out += [(f"R{d + span:03d}-{j}", start, start + dt.timedelta(days=span - 1)) for j in range(per_day // span)]
    return out


@pytest.mark.usefixtures("drop_after")
def test_a_backfill_of_many_dates_is_one_run_of_units_and_resumes_what_failed(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    from flows.cli import app

    days, first = 30, dt.date(2017, 3, 1)
    keys = rolling_keys(days, per_day=20, span=5)  # 20 keys active a day, 136 keys in all
    rows = []
    for i, (k, s, _) in enumerate(keys):  # 3 rows a key within its window, 1 outside it
        rows += [(i * 4 + j, k, s + dt.timedelta(days=j * 2), j, f"{k}/{j}") for j in range(3)]
        rows.append((i * 4 + 3, k, s - dt.timedelta(days=1), 3, f"{k}/out"))
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = make_profile(max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names)
    wh = names["wh_schema"]
    bad = "R012-1"

    def backfill(*extra: str) -> Any:
        args = ["etl", "backfill", "-d", str(dataset), "-p", str(profile), "--from", first.isoformat()]
        return CliRunner().invoke(app, [*args, "--to", (first + dt.timedelta(days=days - 1)).isoformat(), *extra])

    # The target exists before the backfill, with a constraint that fails one key (active 5 dates) for now.
    assert run(dataset, profile, dt.date(2016, 1, 1))[0].is_completed()  # nothing active: only prepares
    with pg.cursor() as cur:
        cur.execute(f"ALTER TABLE {wh}.narrow ADD CONSTRAINT no_bad CHECK (k <> '{bad}')")

    failed = backfill()
    assert failed.exit_code == 1, failed.output
    bad_days = [s + dt.timedelta(days=n) for k, s, _ in keys if k == bad for n in range(5)]
    assert f"{days - 5} loaded, 5 failed" in failed.output
    want = {k: [r for r in rows if r[1] == k and r[4][-3:] != "out"] for k, _, _ in keys if k != bad}
    assert narrow_warehouse(pg, names) == want  # every other key, each within its window, once
    with pg.cursor() as cur:
        cur.execute(f"SELECT key, run_date FROM {wh}.keyflow_loads WHERE dataset = 'narrow'")
        ledger_pairs = set(cur.fetchall())
    expected_pairs = {
        (k, first + dt.timedelta(days=d))
        for k, s, e in keys
        for d in range(days)
        if s <= first + dt.timedelta(days=d) <= e and k != bad
    }
    assert ledger_pairs == expected_pairs  # a ledger row for each (key, date) it was active on, none for the bad key

    # One run for the whole range: its task runs do not grow with the dates.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def last_run() -> Any:
        async with get_client() as client:
            return (await client.read_flow_runs(limit=1, sort=FlowRunSort.START_TIME_DESC))[0]

    flow_run = asyncio.run(last_run())
    run_tasks = asyncio.run(_task_runs_of(flow_run.id))
    assert len(run_tasks) <= 20, sorted(t.name for t in run_tasks)

    with pg.cursor() as cur:
        cur.execute(f"ALTER TABLE {wh}.narrow DROP CONSTRAINT no_bad")
        cur.execute(f"UPDATE {wh}.keyflow_loads SET run_id = 'first'")
    resumed = backfill()
    assert resumed.exit_code == 0, resumed.output
    assert f"5 loaded, {days - 5} skipped" in resumed.output
    with pg.cursor() as cur:  # only the bad key's dates were loaded again
        cur.execute(f"SELECT key, run_date FROM {wh}.keyflow_loads WHERE run_id <> 'first'")
        assert sorted(cur.fetchall()) == sorted((bad, d) for d in bad_days)
    again = backfill()
    assert again.exit_code == 0 and f"{days} skipped" in again.output


async def _task_runs_of(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}), limit=200)


@pytest.mark.usefixtures("drop_after")
def test_a_one_run_backfill_while_paused_starts_nothing_and_says_so_per_date(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    from flows.cli import app

    keys = rolling_keys(3, per_day=10, span=2)
    create_narrow_pg_source(pg, names["src_table"], narrow_rows([k for k, _, _ in keys]))
    profile = make_profile(max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names)
    runner = CliRunner()
    args = ["etl", "backfill", "-d", str(dataset), "-p", str(profile), "--from", "2017-03-01", "--to", "2017-03-03"]
    assert runner.invoke(app, ["pause", "etl"]).exit_code == 0
    try:
        paused = runner.invoke(app, args, env={"COLUMNS": "200"})
    finally:
        assert runner.invoke(app, ["resume", "etl"]).exit_code == 0
    assert paused.exit_code == 3, paused.output
    assert "3 paused" in paused.output
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (names["wh_schema"],))
        assert cur.fetchone()[0] == 0  # nothing was touched, not even the target table
    done = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert done.exit_code == 0 and "3 loaded" in done.output, done.output


@pytest.mark.usefixtures("drop_after")
def test_the_embedded_duckdb_warehouse_loads_shared_units_and_isolates_a_bad_key(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    import duckdb

    keys = many_keys(120)
    rows = narrow_rows([k for k, _, _ in keys])
    create_narrow_pg_source(pg, names["src_table"], rows)
    path = tmp_path / "wh.duckdb"
    profile = make_profile(warehouse_kind="duckdb", warehouse_url=str(path), max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names)
    want = narrow_expected(rows, keys)

    def loaded() -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = {}
        with duckdb.connect(str(path), read_only=True) as db:
            for r in db.execute(f"SELECT id, k, d, n, v FROM {names['wh_schema']}.narrow ORDER BY id").fetchall():
                out.setdefault(r[1], []).append(tuple(r))
            ledger = dict(db.execute(f"SELECT key, rows_loaded FROM {names['wh_schema']}.keyflow_loads").fetchall())
        assert ledger == {k: len(v) for k, v in want.items() if k in ledger}
        return out

    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    shared = {r["key"]: r["unit"] for r in results if r["unit"]}  # two slots: about half the rows each
    assert len(shared) >= 100 and len(set(shared.values())) <= 3, shared
    assert loaded() == {k: v for k, v in want.items() if v}

    # A key whose rows now break a constraint the DuckDB table enforces (NOT NULL): it fails alone.
    bad = next(k for k, v in want.items() if k >= "K0060" and v and k in shared)
    with pg.cursor() as cur:
        cur.execute(f"ALTER TABLE {names['src_table']} ALTER COLUMN v DROP NOT NULL")
        cur.execute(f"UPDATE {names['src_table']} SET v = NULL WHERE k = %s", (bad,))
        cur.execute(f"UPDATE {names['src_table']} SET v = v || '-v2' WHERE k <> %s", (bad,))
    with duckdb.connect(str(path)) as db:
        db.execute(f"ALTER TABLE {names['wh_schema']}.narrow ALTER COLUMN v SET NOT NULL")
    state, results = run(dataset, profile, D1)
    assert state.is_failed() and state.message == f"1 of 120 key(s) failed: {bad}"
    after = loaded()
    assert after[bad] == want[bad]  # its previous rows
    assert all(row[4].endswith("-v2") for k, v in after.items() if k != bad for row in v)  # the others reloaded


@pytest.mark.usefixtures("drop_after")
def test_merge_mode_upserts_a_shared_unit_and_keeps_rows_no_longer_extracted(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    from tests.helpers.config_files import write_yaml

    keys = many_keys(90)
    rows = narrow_rows([k for k, _, _ in keys])
    create_narrow_pg_source(pg, names["src_table"], rows)
    profile = make_profile(max_parallel_keys=2)
    put_many_keys(profile, keys)
    dataset = write_narrow_dataset(tmp_path, names)
    data = yaml.safe_load(dataset.read_text())
    data["target"] |= {"load_mode": "merge", "primary_key": ["id"]}
    write_yaml(dataset, data)
    want = narrow_expected(rows, keys)
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert sum(bool(r["unit"]) for r in results) >= 60
    assert narrow_warehouse(pg, names) == {k: v for k, v in want.items() if v}

    src = names["src_table"]
    gone = next(r for r in rows if r[1] in want and r in want[r[1]])  # a loaded row the source then loses
    with pg.cursor() as cur:
        cur.execute(f"UPDATE {src} SET v = v || '-v2'")
        cur.execute(f"DELETE FROM {src} WHERE id = %s", (gone[0],))
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    got = narrow_warehouse(pg, names)
    assert gone in got[gone[1]]  # merge keeps rows no longer extracted
    assert all(r[4].endswith("-v2") for v in got.values() for r in v if r != gone)  # the others upserted
    assert {r["key"]: r["rows_loaded"] for r in results} == {
        k: len(v) - (k == gone[1]) for k, v in want.items()
    }  # per key: the rows the merge matched
