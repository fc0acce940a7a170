"""Dropped database connections mid-run, on real servers: every key loads within the same run.

`pg_terminate_backend` runs on the shared PostgreSQL (it ends only this test's own backend, found by its unique
table name); a server restart uses a private PostgreSQL or MariaDB of the test's own (tests/helpers/private_db.py),
never the shared ones. Each test checks what a user would: the run completed with every key loaded, the warehouse
holds exactly the source's rows (no partial or duplicated slice), nothing is left staged, and the next run works.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.helpers.etl import D1, EVIL, KEYS, create_pg_source, expected, put_keys, run, source_rows, write_dataset
from tests.helpers.faults import (
    WhenRunning,
    pg_backends,
    pg_terminate,
    restart,
    rows_read,
    slow_pg_inserts,
    slow_pg_view,
)
from tests.helpers.private_db import PrivateMariaDB, PrivatePostgres
from tests.helpers.services import PG_DSN

pytestmark = pytest.mark.usefixtures("prefect_harness")

ACTIVE = {"K1", "K2", EVIL}
PER_KEY = 40
# Small in tests: a fault of a few seconds is ridden out within 60 s, first retry after half a second.
RIDE_OUT = {"retry_window_seconds": 60, "retry_backoff_seconds": 0.5}


def staged_left(profile: Path) -> list[str]:
    """Every object left under the profile's staging prefix."""
    from config.loader import load_profile
    from tasks.resources import object_store_for

    prof = load_profile(profile, environ={})
    return list(object_store_for(prof).list_keys(prof.prefix + "/"))


def warehouse_rows(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    """The loaded rows of the test's target, in id order (the columns `expected` gives)."""
    from tests.helpers.etl import COLUMNS

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {COLUMNS.replace('label', 'title')} FROM {schema}.facts ORDER BY id")
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def assert_every_key_loaded(state: Any, results: list[dict[str, Any]]) -> None:
    """The run completed and each active key loaded all its rows, in this run."""
    assert state.is_completed(), (state.message, results)
    assert sorted(r["key"] for r in results) == sorted(ACTIVE)
    for r in results:
        assert (r["status"], r["rows_extracted"], r["rows_loaded"]) == ("loaded", PER_KEY, PER_KEY), r


@pytest.fixture()
def slow_source(pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any) -> Iterator[Any]:
    """A PostgreSQL source whose rows take 25 ms each to read (a view over the table), the dataset and profile."""
    rows = source_rows([k[0] for k in KEYS], per_key=PER_KEY)
    base, helpers = names["src_table"] + "_base", names["src_table"] + "_f"
    create_pg_source(pg, base, rows)
    slow_pg_view(pg, helpers, base, names["src_table"], 0.025)
    profile = make_profile(**RIDE_OUT)
    put_keys(profile)
    yield rows, write_dataset(tmp_path, names), profile, helpers
    with pg.cursor() as cur:
        cur.execute(f"DROP VIEW IF EXISTS {names['src_table']}")
        cur.execute(f"DROP TABLE IF EXISTS {base}")
        for schema in (helpers, names["wh_schema"]):
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_a_terminated_extraction_is_retried_in_the_same_run(pg: Any, slow_source: Any, names: dict[str, str]) -> None:
    rows, dataset, profile, helpers = slow_source
    view = names["src_table"]
    fault = WhenRunning(pg_backends(PG_DSN, f"COPY (SELECT%FROM%{view}%"), pg_terminate(PG_DSN))
    fault.start()
    state, results = run(dataset, profile, D1)
    fault.check()
    assert_every_key_loaded(state, results)
    assert warehouse_rows(PG_DSN, names["wh_schema"]) == expected(rows, ACTIVE)
    assert rows_read(pg, helpers) > PER_KEY * len(ACTIVE)  # the terminated key was read again
    assert staged_left(profile) == []
    state, results = run(dataset, profile, D1)  # the next run is not blocked and changes nothing
    assert_every_key_loaded(state, results)
    assert warehouse_rows(PG_DSN, names["wh_schema"]) == expected(rows, ACTIVE)


def test_a_terminated_load_is_retried_from_its_staged_files(pg: Any, slow_source: Any, names: dict[str, str]) -> None:
    rows, dataset, profile, helpers = slow_source
    state, results = run(dataset, profile, D1)  # the first run creates the target; its rows are the previous slice
    assert_every_key_loaded(state, results)
    slow_pg_inserts(pg, names["wh_schema"], "facts", 0.02)
    read_before = rows_read(pg, helpers)
    target = f"COPY %{names['wh_schema']}%facts%FROM STDIN%"
    fault = WhenRunning(pg_backends(PG_DSN, target), pg_terminate(PG_DSN))
    fault.start()
    state, results = run(dataset, profile, D1)
    fault.check()
    assert_every_key_loaded(state, results)
    assert warehouse_rows(PG_DSN, names["wh_schema"]) == expected(rows, ACTIVE)
    # The load's retry loaded the files its key had staged: no key was extracted twice.
    assert rows_read(pg, helpers) - read_before == PER_KEY * len(ACTIVE)
    assert staged_left(profile) == []


@pytest.fixture()
def private_setup(private_pg: PrivatePostgres, tmp_path: Path, names: dict[str, str], make_profile: Any) -> Any:
    """Source and warehouse on the private server: a slow source view, the dataset, the profile."""
    conn = psycopg2.connect(private_pg.dsn)
    conn.autocommit = True
    rows = source_rows([k[0] for k in KEYS], per_key=PER_KEY)
    base, helpers = names["src_table"] + "_base", names["src_table"] + "_f"
    create_pg_source(conn, base, rows)
    slow_pg_view(conn, helpers, base, names["src_table"], 0.025)
    profile = make_profile(source_url=private_pg.url, warehouse_url=private_pg.url, **RIDE_OUT)
    put_keys(profile)
    try:
        yield rows, write_dataset(tmp_path, names), profile, conn
    finally:
        conn.close()


def test_postgres_restarted_mid_extract(private_pg: PrivatePostgres, private_setup: Any, names: dict[str, str]) -> None:
    rows, dataset, profile, _ = private_setup
    running = pg_backends(private_pg.dsn, f"COPY (SELECT%FROM%{names['src_table']}%")
    fault = WhenRunning(running, restart(private_pg, down_seconds=3))
    fault.start()
    state, results = run(dataset, profile, D1)
    fault.check()
    assert_every_key_loaded(state, results)
    assert warehouse_rows(private_pg.dsn, names["wh_schema"]) == expected(rows, ACTIVE)
    assert staged_left(profile) == []


def test_postgres_restarted_mid_load(private_pg: PrivatePostgres, private_setup: Any, names: dict[str, str]) -> None:
    rows, dataset, profile, conn = private_setup
    state, results = run(dataset, profile, D1)
    assert_every_key_loaded(state, results)
    slow_pg_inserts(conn, names["wh_schema"], "facts", 0.02)
    conn.close()
    fault = WhenRunning(
        pg_backends(private_pg.dsn, f"COPY %{names['wh_schema']}%facts%FROM STDIN%"),
        restart(private_pg, down_seconds=3),
    )
    fault.start()
    state, results = run(dataset, profile, D1)
    fault.check()
    assert_every_key_loaded(state, results)
    assert warehouse_rows(private_pg.dsn, names["wh_schema"]) == expected(rows, ACTIVE)
    assert staged_left(profile) == []
    state, results = run(dataset, profile, D1)  # the next run is not blocked
    assert_every_key_loaded(state, results)


@pytest.fixture()
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """A MariaDB server of this test alone, which it may restart (never the shared one)."""
    server = PrivateMariaDB()
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.remove()


def test_mariadb_restarted_mid_extract(
    private_mariadb: PrivateMariaDB, pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    import pymysql

    rows = source_rows([k[0] for k in KEYS], per_key=PER_KEY)
    table = names["src_table"]
    conn = pymysql.connect(host="127.0.0.1", port=private_mariadb.port, user="root", database="test", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(
            f"""CREATE TABLE {table}_base (id BIGINT PRIMARY KEY, campaign_key VARCHAR(64) NOT NULL,
                event_date DATE, label TEXT, amount DECIMAL(38,10), ratio DOUBLE, flag BOOLEAN,
                created_at DATETIME(6), phone TEXT) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"""
        )
        cur.executemany(f"INSERT INTO {table}_base VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows)
        cur.execute(f"CREATE VIEW {table} AS SELECT * FROM {table}_base WHERE SLEEP(0.025) = 0")
    conn.close()

    def running() -> bool:
        probe = pymysql.connect(host="127.0.0.1", port=private_mariadb.port, user="root", autocommit=True)
        try:
            with probe.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM information_schema.processlist WHERE command = 'Query' AND info LIKE %s",
                    (f"SELECT%FROM%{table}%",),
                )
                return bool(cur.fetchone()[0])
        finally:
            probe.close()

    try:
        profile = make_profile(source_url=private_mariadb.url, **RIDE_OUT)
        put_keys(profile)
        dataset = write_dataset(tmp_path, names)
        fault = WhenRunning(running, restart(private_mariadb, down_seconds=3))
        fault.start()
        state, results = run(dataset, profile, D1)
        fault.check()
        assert_every_key_loaded(state, results)
        # MySQL BOOLEAN is TINYINT(1): it arrives as a small integer.
        want = [(*r[:6], None if r[6] is None else int(r[6]), *r[7:]) for r in expected(rows, ACTIVE)]
        assert warehouse_rows(PG_DSN, names["wh_schema"]) == want
        assert staged_left(profile) == []
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_two_overlapping_runs_of_one_key_load_it_once(pg: Any, slow_source: Any, names: dict[str, str]) -> None:
    """Whatever the orchestrator's limits say, two runs loading one key never add up: the second waits, replaces."""
    from concurrent.futures import ThreadPoolExecutor

    rows, dataset, profile, _ = slow_source
    state, results = run(dataset, profile, D1)  # creates the target
    assert_every_key_loaded(state, results)
    slow_pg_inserts(pg, names["wh_schema"], "facts", 0.1)  # each load takes 4 s, its extraction 1 s: they overlap
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda _: run(dataset, profile, D1), range(2)))
    for state, results in outcomes:
        assert_every_key_loaded(state, results)  # no reconciliation failure: neither saw the other's rows
    assert warehouse_rows(PG_DSN, names["wh_schema"]) == expected(rows, ACTIVE)
    assert staged_left(profile) == []


def test_throttling_on_the_key_listing_is_ridden_out(
    pg: Any, slow_source: Any, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto never throttles: the key table's Query is refused twice (as DynamoDB does under load), then answers."""
    from botocore.exceptions import ClientError

    from tasks.io.keystore import DynamoKeyStore

    rows, dataset, profile, _ = slow_source
    refused: list[str] = []
    real_init = DynamoKeyStore.__init__

    def throttled(self: DynamoKeyStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        ddb = self._ddb

        def query(**request: Any) -> Any:
            if len(refused) < 2:
                refused.append(request["TableName"])
                error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}
                raise ClientError(error, "Query")  # type: ignore[arg-type]
            return ddb.query(**request)

        self._ddb = type("Throttled", (), {"query": staticmethod(query), "meta": ddb.meta})()

    monkeypatch.setattr(DynamoKeyStore, "__init__", throttled)
    state, results = run(dataset, profile, D1)
    assert refused == [names["keys_table"]] * 2
    assert_every_key_loaded(state, results)
    assert warehouse_rows(PG_DSN, names["wh_schema"]) == expected(rows, ACTIVE)
