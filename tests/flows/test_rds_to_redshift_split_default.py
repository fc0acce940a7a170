"""Big keys split by default (issue 15): with ``source.split_rows`` unset, a key is cut into ranges of about
``source.split_bytes`` of the source, by the table's average row from its statistics — only a table with a
single-column primary key, and never a key the work-unit planner counted as small."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tasks.io.source import SqlSource
from tests.flows.test_rds_to_redshift_split import ranges_logged
from tests.helpers.config_files import write_yaml
from tests.helpers.etl import D1, EVIL, put_keys, run
from tests.helpers.services import MYSQL_URL

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROWS = {"K1": 1000, "K2": 50, EVIL: 30}  # the keys active on D1: one big, two small
BUDGET = 30_000  # about 200 rows of the table below (about 140 bytes each as stored): K1 is over, K2 and EVIL not


def fill_sql(table: str) -> list[str]:
    """Inserts of :data:`ROWS` (ids 1… in key order, a 100-character payload)."""
    out, first = [], 1
    for key, n in ROWS.items():
        out.append(
            f"INSERT INTO {table} SELECT i, '{key.replace(chr(39), chr(39) * 2)}', repeat('x', 100) "
            f"FROM (SELECT {first} + g AS i FROM ({series(n)}) AS s) AS t"
        )
        first += n
    return out


def series(n: int) -> str:
    """``g`` from 0 to ``n - 1`` on both databases (MariaDB has no generate_series): a cross join of digits."""
    digits = " UNION ALL ".join(f"SELECT {d} AS d" for d in range(10))
    return (
        f"SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d AS g FROM ({digits}) AS a, ({digits}) AS b, ({digits}) AS c, "
        f"({digits}) AS e WHERE a.d + 10 * b.d + 100 * c.d + 1000 * e.d < {n}"
    )


@pytest.fixture()
def pg_source(pg: Any, names: dict[str, str]) -> Any:
    """``make(pk)``: the PostgreSQL source table, with or without a primary key, analyzed."""
    src = names["src_table"]

    def make(pk: bool = True) -> str:
        with pg.cursor() as cur:
            cur.execute(
                f"CREATE TABLE {src} (id bigint{' PRIMARY KEY' if pk else ''}, campaign_key text, payload text)"
            )
            for sql in fill_sql(src):
                cur.execute(sql)
            cur.execute(f"ANALYZE {src}")
        return src

    yield make
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {src}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def dataset(tmp_path: Path, names: dict[str, str], units: dict[str, Any] | None = None, **source: Any) -> Path:
    return write_yaml(
        tmp_path / "datasets" / "big.yaml",
        {
            "name": "facts",
            "source": {"table": names["src_table"], "key_column": "campaign_key", **source},
            **({"units": units} if units else {}),
            "target": {"schema": names["wh_schema"], "table": "facts"},
        },
    )


def loaded(pg: Any, names: dict[str, str]) -> dict[str, int]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT campaign_key, count(DISTINCT id) FROM {names['wh_schema']}.facts GROUP BY 1")
        return dict(cur.fetchall())


def assert_loaded_whole(results: list[dict[str, Any]]) -> None:
    assert {r["key"]: (r["status"], r["rows_extracted"], r["rows_loaded"]) for r in results} == {
        k: ("loaded", n, n) for k, n in ROWS.items()
    }


def test_the_default_splits_a_big_key_and_not_a_small_one(
    pg: Any,
    pg_source: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pg_source()
    profile = make_profile()
    put_keys(profile)
    state, results = run(dataset(tmp_path, names, split_bytes=BUDGET), profile, D1)
    assert state.is_completed(), state.message
    split = ranges_logged(caplog.text)
    assert set(split) == {"K1"} and split["K1"] >= 3, split
    assert f"from split_bytes {BUDGET})" in caplog.text
    assert_loaded_whole(results)
    assert loaded(pg, names) == ROWS


def test_without_a_primary_key_no_key_is_split_by_default(
    pg: Any,
    pg_source: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pg_source(pk=False)
    profile = make_profile()
    put_keys(profile)
    state, results = run(dataset(tmp_path, names, split_bytes=BUDGET), profile, D1)
    assert state.is_completed(), state.message
    assert ranges_logged(caplog.text) == {}
    assert_loaded_whole(results)


@pytest.mark.parametrize(
    ("source", "split"),
    [
        ({"split_rows": 0, "split_bytes": BUDGET}, {}),  # split_rows: 0 turns splitting off, whatever the budget
        ({"split_rows": 400, "split_bytes": 0}, {"K1": 3}),  # an explicit split_rows wins over the budget
        ({"split_rows": 400}, {"K1": 3}),  # … and over the default budget, which no key here reaches
        ({"split_bytes": 0}, {}),  # split_bytes: 0 turns the default off
        ({}, {}),  # the default budget (512 MiB): no key of this table reaches it
    ],
    ids=["split_rows-0", "split_rows-wins", "split_rows-over-default", "split_bytes-0", "default"],
)
def test_explicit_settings_win(
    pg: Any,
    pg_source: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
    source: dict[str, Any],
    split: dict[str, int],
) -> None:
    caplog.set_level(logging.INFO)
    pg_source()
    profile = make_profile()
    put_keys(profile)
    state, results = run(dataset(tmp_path, names, **source), profile, D1)
    assert state.is_completed(), state.message
    assert ranges_logged(caplog.text) == split
    assert_loaded_whole(results)


def test_explicit_split_rows_without_a_primary_key_fails_the_keys_with_the_reason(
    pg_source: Any, names: dict[str, str], tmp_path: Path, make_profile: Any
) -> None:
    pg_source(pk=False)
    profile = make_profile()
    put_keys(profile)
    state, results = run(dataset(tmp_path, names, split_rows=400), profile, D1)
    assert state.is_failed()
    why = (
        f"source.split_rows: table {names['src_table']!r} has no single-column primary key to split keys on "
        "(set source.split_column)"
    )
    assert {r["key"]: (r["status"], why in r["error"]) for r in results} == {k: ("failed", True) for k in ROWS}


def test_a_key_the_planner_counted_small_is_not_counted_again(
    pg_source: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More keys than run at once: the work-unit planner counts them (one GROUP BY); with unit_rows 1 each keeps a
    unit of its own, and only the big one is counted again, in its split's snapshot."""
    caplog.set_level(logging.INFO)
    pg_source()
    planned: list[Any] = []
    plan_split = SqlSource.plan_split

    def spy(self: SqlSource, key_sql: str, params: Any, *args: Any, **kwargs: Any) -> Any:
        planned.append(params["key"])
        return plan_split(self, key_sql, params, *args, **kwargs)

    monkeypatch.setattr(SqlSource, "plan_split", spy)
    profile = make_profile(max_parallel_keys=1)
    put_keys(profile)
    state, results = run(dataset(tmp_path, names, units={"unit_rows": 1}, split_bytes=BUDGET), profile, D1)
    assert state.is_completed(), state.message
    assert "3 keys, 1080 rows on the source" in caplog.text  # the planner's count
    assert planned == ["K1"]
    assert set(ranges_logged(caplog.text)) == {"K1"}
    assert_loaded_whole(results)


def test_mariadb_default_splits_a_big_key_by_its_average_row(
    mysql: Any,
    pg: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """information_schema.TABLES' AVG_ROW_LENGTH (InnoDB: about 150 bytes a row here, in 16 KiB pages)."""
    caplog.set_level(logging.INFO)
    src = names["src_table"]
    with mysql.cursor() as cur:
        cur.execute(f"CREATE TABLE {src} (id BIGINT PRIMARY KEY, campaign_key VARCHAR(64), payload TEXT)")
        for sql in fill_sql(src):
            cur.execute(sql)
        cur.execute(f"ANALYZE TABLE {src}")
        cur.fetchall()
    try:
        profile = make_profile(source_url=MYSQL_URL)
        put_keys(profile)
        state, results = run(dataset(tmp_path, names, split_bytes=BUDGET), profile, D1)
        assert state.is_completed(), state.message
        split = ranges_logged(caplog.text)
        assert set(split) == {"K1"} and split["K1"] >= 3, split
        assert "each in its own snapshot (MySQL/MariaDB has no snapshot to share between connections)" in caplog.text
        assert_loaded_whole(results)
        assert loaded(pg, names) == ROWS
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {src}")
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")
