"""Two loads of one key at once never add up, on Redshift and DuckDB too (PostgreSQL: test_dropped_connections.py).

Redshift has no advisory locks: a load ``LOCK``s its target first, in both modes, so the second waits, then replaces
the first's rows. Both run here on PostgreSQL, where ``LOCK`` works the same way: the Data API batch through the
Redshift stand-in, the direct mode's statements on a connection of its own (its ``COPY … FROM 's3://…'`` replaced by
PostgreSQL's ``COPY … FROM STDIN`` of the same staged files, which PostgreSQL can read). Without the lock, the second
load counts both runs' rows and fails reconciliation.

DuckDB lets one process at a time open its file: a keyflow run that finds the file held by another process waits
for it and loads every key, instead of failing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.io.warehouse import PostgresWarehouse, RedshiftWarehouse
from tasks.transforms.sql import render_create_ledger
from tasks.transforms.staging import StagedKey
from tests.faults.test_dropped_connections import ACTIVE, PER_KEY, RIDE_OUT, assert_every_key_loaded, staged_left
from tests.helpers.etl import D1, KEYS, create_pg_source, expected, put_keys, run, source_rows, write_dataset
from tests.helpers.faults import WhenRunning, pg_backends, slow_pg_inserts, slow_pg_view
from tests.helpers.services import PG_DSN, PG_URL
from tests.io.test_redshift_data_api import ROLE, rows_of, schema, spec, stage, store, warehouse

__all__ = ["schema", "store"]  # fixtures of tests/io/test_redshift_data_api.py used here

ROWS = 20


def lock_waiter(pattern: str) -> Callable[[], list[int]]:
    """A probe: backends waiting for a lock while running a statement like ``pattern`` (the second load, queued)."""
    import psycopg2

    def probe() -> list[int]:
        conn = psycopg2.connect(PG_DSN)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s", (pattern,)
                )
                return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()

    return probe


def overlapping(load: Callable[[StagedKey], int], first: StagedKey, second: StagedKey, schema: str) -> list[int]:
    """Load ``first`` and ``second`` (one key) at once; the rows each load reports. Fails unless one waited."""
    waited = WhenRunning(lock_waiter(f'LOCK "{schema}"."facts"%'), lambda _: None, seconds=60)
    waited.start()
    out: dict[str, int | BaseException] = {}

    def go(name: str, staged: StagedKey) -> None:
        try:
            out[name] = load(staged)
        except BaseException as exc:  # reported below with the other load's outcome
            out[name] = exc

    threads = [threading.Thread(target=go, args=(n, s)) for n, s in (("first", first), ("second", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(v, int) for v in out.values()), out  # neither failed (reconciliation, a conflict)
    waited.check()  # and they overlapped: one of them queued behind the other's LOCK
    return [int(v) for v in out.values()]  # type: ignore[call-overload]


def two_slices(store: Any) -> tuple[StagedKey, StagedKey, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    a = [("K1", f"a{i}", i) for i in range(ROWS)]
    b = [("K1", f"b{i}", i) for i in range(ROWS)]
    return stage(store, "K1", a, "r1"), stage(store, "K1", b, "r2"), a, b


def ledger_rows(pg: Any, schema: str) -> list[tuple[Any, ...]]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT dataset, key, rows_loaded FROM {schema}.keyflow_loads")
        return [tuple(r) for r in cur.fetchall()]


def test_two_data_api_loads_of_one_key_take_turns(pg: Any, redshift_standin: Any, schema: str, store: Any) -> None:
    wh = warehouse(redshift_standin)
    wh.prepare(spec(schema))
    slow_pg_inserts(pg, schema, "facts", 0.05)  # a load takes a second: the second batch arrives while it runs
    first, second, a, b = two_slices(store)
    assert overlapping(lambda s: wh.load_key(spec(schema), s, store), first, second, schema) == [ROWS, ROWS]
    assert rows_of(pg, schema) in (a, b)  # the later load's slice, whole: never both, never a mix
    assert ledger_rows(pg, schema) == [("facts", "K1", ROWS)]


class DirectOnPostgres(RedshiftWarehouse):
    """The direct mode's load, statement for statement, except its COPY: PostgreSQL reads the parts from STDIN."""

    _copy = PostgresWarehouse._copy


def test_two_direct_loads_of_one_key_take_turns(pg: Any, schema: str, store: Any) -> None:
    with pg.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"CREATE TABLE {schema}.facts (k text NOT NULL, label text, n bigint)")
        cur.execute(render_create_ledger(schema, "postgres"))
    slow_pg_inserts(pg, schema, "facts", 0.05)
    wh = DirectOnPostgres(PG_URL.replace("+psycopg2", ""), None, ROLE, "us-east-1")
    first, second, a, b = two_slices(store)
    assert overlapping(lambda s: wh.load_key(spec(schema), s, store), first, second, schema) == [ROWS, ROWS]
    assert rows_of(pg, schema) in (a, b)
    assert ledger_rows(pg, schema) == [("facts", "K1", ROWS)]


HOLD = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
conn.execute("BEGIN TRANSACTION")
conn.execute("CREATE TABLE IF NOT EXISTS other_job (n INTEGER)")
conn.execute("INSERT INTO other_job VALUES (1)")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
"""


def test_a_duckdb_file_held_by_another_process_is_waited_for(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    import duckdb

    rows = source_rows([k[0] for k in KEYS], per_key=PER_KEY)
    base, helpers = names["src_table"] + "_base", names["src_table"] + "_f"
    create_pg_source(pg, base, rows)
    slow_pg_view(pg, helpers, base, names["src_table"], 0.02)
    path = tmp_path / "wh.duckdb"
    profile = make_profile(warehouse_kind="duckdb", warehouse_url=str(path), **RIDE_OUT)
    put_keys(profile)
    dataset = write_dataset(tmp_path, names)
    holders: list[subprocess.Popen[str]] = []

    def hold(_: Any) -> None:
        """Another process opens the file and writes to it for 4 s while the run extracts its keys."""
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path), "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        holders.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held", proc.stderr

    try:
        state, results = run(dataset, profile, D1)  # creates the target: the previous slice
        assert_every_key_loaded(state, results)
        fault = WhenRunning(pg_backends(PG_DSN, f"COPY (SELECT%FROM%{names['src_table']}%"), hold)
        fault.start()
        state, results = run(dataset, profile, D1)
        fault.check()
        assert_every_key_loaded(state, results)
        assert holders[0].wait(timeout=60) == 0, holders[0].stderr.read() if holders[0].stderr else ""
        with duckdb.connect(str(path), read_only=True) as db:
            got = db.execute(
                f"SELECT id, campaign_key, event_date, title, amount, ratio, flag, created_at, phone "
                f"FROM {names['wh_schema']}.facts ORDER BY id"
            ).fetchall()
            assert got == expected(rows, ACTIVE)
            assert db.execute("SELECT count(*) FROM other_job").fetchone() == (1,)  # the other process's write
        assert staged_left(profile) == []
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()
        with pg.cursor() as cur:
            cur.execute(f"DROP VIEW IF EXISTS {names['src_table']}")
            cur.execute(f"DROP TABLE IF EXISTS {base}")
            cur.execute(f"DROP SCHEMA IF EXISTS {helpers} CASCADE")


pytestmark = pytest.mark.usefixtures("prefect_harness")
