"""Big keys split (issue 15): a key over source.split_rows is extracted as ranges in parallel, staged as parts of the
key, loaded in its one transaction and reconciled as one — the same warehouse, value for value, as unsplit."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from tasks.io.source import SqlSource
from tests.helpers.config_files import write_yaml
from tests.helpers.etl import (
    D1,
    EVIL,
    KEYS,
    PATHS,
    create_pg_source,
    expected,
    put_keys,
    run,
    source_rows,
    warehouse,
    write_dataset,
)
from tests.helpers.services import MYSQL_URL, PG_DSN, PG_URL

pytestmark = pytest.mark.usefixtures("prefect_harness")

ACTIVE = {"K1", "K2", EVIL}


@pytest.fixture()
def pg_rows(pg: Any, names: dict[str, str]) -> Any:
    rows = source_rows([k[0] for k in KEYS])
    create_pg_source(pg, names["src_table"], rows)
    yield rows
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def split_dataset(tmp_path: Path, names: dict[str, str], path: str, **split: Any) -> Path:
    """The awkward-values dataset on ``path`` with ``split`` added to its source."""
    plain = write_dataset(tmp_path, names, path=path)
    import yaml

    data = yaml.safe_load(plain.read_text())
    data["source"].update(split)
    return write_yaml(plain, data)


def ranges_logged(text: str) -> dict[str, int]:
    found = re.findall(r"Splitting key (['\"])(.*?)\1 \(\d+ rows.*?\) into (\d+) ranges", text)
    return {k: int(n) for _, k, n in found}


def assert_one_row_per_key(results: list[dict[str, Any]], per_key: int = 40) -> None:
    assert sorted(r["key"] for r in results) == sorted(ACTIVE)  # one summary row per key, not per range
    for r in results:
        assert r["status"] == "loaded", r
        assert r["rows_extracted"] == r["rows_staged"] == r["rows_loaded"] == per_key
        assert r["rows_filtered"] == 0


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("column", [None, "ratio"], ids=["primary-key", "nulls-and-duplicates"])
def test_a_split_key_loads_the_same_rows_as_unsplit(
    pg: Any,
    pg_rows: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
    path: str,
    column: str | None,
) -> None:
    """On each path; split on the primary key, or on ``ratio`` (NULL every fifth row, four values repeated)."""
    caplog.set_level(logging.INFO)
    profile = make_profile()
    put_keys(profile)
    split = {"split_rows": 10} | ({"split_column": column} if column else {})
    state, results = run(split_dataset(tmp_path, names, path, **split), profile, D1)
    assert state.is_completed(), state.message
    if path == "pushed-and-client" and column == "ratio":
        # A dedupe on the client must see every duplicate of `id`: rows of one id could sit in two ratio ranges.
        assert not ranges_logged(caplog.text)
        assert "a dedupe on ['id'] is not on the split column 'ratio'" in caplog.text
    else:
        assert all(n >= 3 for n in ranges_logged(caplog.text).values()) and set(ranges_logged(caplog.text)) == ACTIVE
    assert_one_row_per_key(results)
    assert warehouse(pg, names) == expected(pg_rows, ACTIVE)


@pytest.mark.parametrize("pushdown", [True, False], ids=["filter-on-source", "filter-on-client"])
def test_a_split_key_with_a_filter_reconciles_with_the_sum_of_its_ranges(
    pg: Any,
    pg_rows: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
    pushdown: bool,
) -> None:
    caplog.set_level(logging.INFO)
    profile = make_profile()
    put_keys(profile)
    dataset = write_yaml(
        tmp_path / "datasets" / "filtered.yaml",
        {
            "name": "facts",
            "source": {
                "table": names["src_table"],
                "key_column": "campaign_key",
                "pushdown": pushdown,
                "split_rows": 12,
            },
            "rules": [{"rename": {"label": "title"}}, {"filter": {"column": "ratio", "op": ">", "value": 0}}],
            "target": {"schema": names["wh_schema"], "table": "facts"},
        },
    )
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert set(ranges_logged(caplog.text).values()) == {4}
    kept = {r[0] for r in pg_rows if r[1] in ACTIVE and r[5] is not None and r[5] > 0}
    assert len(results) == 3
    for r in results:
        assert r["rows_extracted"] == 40  # the source's count, summed over the ranges
        assert r["rows_filtered"] == 40 - r["rows_staged"] and r["rows_staged"] == r["rows_loaded"]
    assert sum(r["rows_loaded"] for r in results) == len(kept)
    with pg.cursor() as cur:
        cur.execute(f"SELECT id FROM {names['wh_schema']}.facts")
        assert {r[0] for r in cur.fetchall()} == kept


@pytest.mark.parametrize("path", ["passthrough", "client"])
def test_a_writer_during_the_ranges_changes_nothing_the_split_key_loads(
    pg: Any,
    pg_rows: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    """K1's split is planned; then, before its first range reads, a writer deletes a row of its first range and
    inserts five in its last. Every range reads the snapshot the planning exported (PostgreSQL): the key loads the
    40 rows it was planned with, and reconciles."""
    caplog.set_level(logging.INFO)
    src = names["src_table"]
    first_id = min(r[0] for r in pg_rows if r[1] == "K1")
    copy_out = SqlSource._copy_out
    wrote = threading.Event()
    lock = threading.Lock()

    def write_then_copy(self: SqlSource, sql: str, params: Any, session: Any) -> Any:
        with lock:
            if params.get("key") == "K1" and not wrote.is_set():
                with pg.cursor() as cur:  # autocommit: committed before the range's query starts
                    cur.execute(f"DELETE FROM {src} WHERE id = %s", (first_id,))
                    cur.execute(
                        f"INSERT INTO {src} (id, campaign_key, event_date) "
                        "SELECT 10000 + i, 'K1', date '2017-03-05' FROM generate_series(1, 5) AS i"
                    )
                wrote.set()
        return copy_out(self, sql, params, session)

    monkeypatch.setattr(SqlSource, "_copy_out", write_then_copy)
    profile = make_profile()
    put_keys(profile)
    state, results = run(split_dataset(tmp_path, names, path, split_rows=10), profile, D1)
    assert state.is_completed(), state.message
    assert wrote.is_set()
    assert_one_row_per_key(results)  # 40 extracted = staged = loaded for K1 too
    assert warehouse(pg, names) == expected(pg_rows, ACTIVE)  # the rows as planned: none deleted, none added
    assert re.search(r"Splitting key 'K1' \(40 rows .* ranges of 'id', all in one snapshot", caplog.text)
    with pg.cursor() as cur:  # the planning transactions ended with their keys
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%' AND query LIKE %s",
            (f"%{src}%",),
        )
        assert cur.fetchone() == (0,)


def test_without_an_exported_snapshot_the_ranges_read_their_own_and_the_log_says_why(
    pg: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A source where pg_export_snapshot() is refused (EXECUTE revoked, as a hardened server may; a hot standby
    before PostgreSQL 10 refuses it too): the key is still split and loads whole, each range in its own snapshot."""
    import psycopg2

    caplog.set_level(logging.INFO)
    db, role = f"{names['src_table']}_db", f"{names['src_table']}_reader"
    with pg.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"CREATE ROLE {role} LOGIN")
    try:
        conn = psycopg2.connect(PG_DSN.replace("dbname=test", f"dbname={db}"))
        conn.autocommit = True
        try:
            rows = source_rows(["K1", "K2", EVIL])
            create_pg_source(conn, names["src_table"], rows)
            with conn.cursor() as cur:
                cur.execute("REVOKE EXECUTE ON FUNCTION pg_export_snapshot() FROM PUBLIC")
                cur.execute(f"GRANT SELECT ON {names['src_table']} TO {role}")
        finally:
            conn.close()
        url = PG_URL.replace("postgres@", f"{role}@").rsplit("/", 1)[0] + f"/{db}"
        profile = make_profile(source_url=url)
        put_keys(profile)
        state, results = run(split_dataset(tmp_path, names, "passthrough", split_rows=10), profile, D1)
        assert state.is_completed(), state.message
        assert set(ranges_logged(caplog.text)) == ACTIVE
        assert "each in its own snapshot (pg_export_snapshot() failed: permission denied for function" in caplog.text
        assert_one_row_per_key(results)
        assert warehouse(pg, names) == expected(rows, ACTIVE)
    finally:
        with pg.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (db,),
            )
            cur.execute(f"DROP DATABASE IF EXISTS {db}")
            cur.execute(f"DROP ROLE IF EXISTS {role}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.parametrize(("path", "column"), [("pushed-and-client", "id"), ("client", "ratio")])
def test_mariadb_split_key_value_for_value(
    mysql: Any,
    pg: Any,
    tmp_path: Path,
    names: dict[str, str],
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
    path: str,
    column: str,
) -> None:
    caplog.set_level(logging.INFO)
    rows = source_rows([k[0] for k in KEYS], per_key=25)
    table = names["src_table"]
    with mysql.cursor() as cur:
        cur.execute(
            f"""CREATE TABLE {table} (id BIGINT PRIMARY KEY, campaign_key VARCHAR(64) NOT NULL, event_date DATE,
                label TEXT, amount DECIMAL(38,10), ratio DOUBLE, flag BOOLEAN, created_at DATETIME(6), phone TEXT)
                CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"""
        )
        cur.executemany(f"INSERT INTO {table} VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows)
    try:
        profile = make_profile(source_url=MYSQL_URL)
        put_keys(profile)
        state, results = run(split_dataset(tmp_path, names, path, split_rows=8, split_column=column), profile, D1)
        assert state.is_completed(), state.message
        assert all(n >= 3 for n in ranges_logged(caplog.text).values()) and set(ranges_logged(caplog.text)) == ACTIVE
        assert_one_row_per_key(results, per_key=25)
        want = [(*r[:6], None if r[6] is None else int(r[6]), *r[7:]) for r in expected(rows, ACTIVE)]
        assert warehouse(pg, names) == want
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_a_failed_range_fails_the_key_and_keeps_its_previous_rows(
    pg: Any, names: dict[str, str], tmp_path: Path, make_profile: Any
) -> None:
    """One range's rows fail a rule (a cast on the client): the key fails whole; its previous slice stays."""
    src, wh = names["src_table"], names["wh_schema"]
    with pg.cursor() as cur:
        cur.execute(f"CREATE TABLE {src} (id bigint primary key, campaign_key text not null, v text)")
        cur.execute(f"INSERT INTO {src} SELECT i, 'K1', (i * 10)::text FROM generate_series(1, 40) i")
    try:
        profile = make_profile()
        put_keys(profile)
        dataset = write_yaml(
            tmp_path / "datasets" / "cast.yaml",
            {
                "name": "facts",
                "source": {"table": src, "key_column": "campaign_key", "pushdown": False, "split_rows": 10},
                "rules": [{"cast": {"v": "bigint"}}],
                "target": {"schema": wh, "table": "facts"},
            },
        )
        state, _ = run(dataset, profile, D1)
        assert state.is_completed(), state.message
        with pg.cursor() as cur:
            cur.execute(f"SELECT id, v FROM {wh}.facts ORDER BY id")
            before = cur.fetchall()
            assert before == [(i, i * 10) for i in range(1, 41)]
            cur.execute(
                f"UPDATE {src} SET v = (i_v.v::bigint + 1)::text FROM (SELECT id, v FROM {src}) i_v "
                f"WHERE {src}.id = i_v.id"
            )
            cur.execute(f"UPDATE {src} SET v = 'not a number' WHERE id = 25")  # the third range of four
        state, results = run(dataset, profile, D1)
        assert state.is_failed()
        (k1,) = [r for r in results if r["key"] == "K1"]
        assert k1["status"] == "failed" and "cannot cast to" in k1["error"], k1
        with pg.cursor() as cur:
            cur.execute(f"SELECT id, v FROM {wh}.facts ORDER BY id")
            assert cur.fetchall() == before  # no range of the failed key landed
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {src}")
            cur.execute(f"DROP SCHEMA IF EXISTS {wh} CASCADE")
