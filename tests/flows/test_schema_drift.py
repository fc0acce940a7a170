"""target.on_schema_change: the source, the rules' output and the target compared before extracting — one test per
case, end to end (PostgreSQL source → S3 → PostgreSQL, and Redshift through the Data API on the stand-in)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.etl import D1, EVIL, KEYS, create_pg_source, put_keys, run, source_rows
from tests.helpers.etl import write_dataset as write_etl_dataset

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROLE = "arn:aws:iam::123456789012:role/keyflow-copy"


@pytest.fixture()
def loaded(pg: Any, names: dict[str, str], tmp_path: Path, make_profile: Any) -> Iterator[Path]:
    """A PostgreSQL warehouse loaded once for D1; yields the profile."""
    create_pg_source(pg, names["src_table"], source_rows([k[0] for k in KEYS]))
    profile = make_profile()
    put_keys(profile)
    assert run(write_etl_dataset(tmp_path, names), profile, D1)[0].is_completed()
    yield profile
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def columns(pg: Any, names: dict[str, str]) -> list[str]:
    with pg.cursor() as cur:
        cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'facts' "
            "ORDER BY ordinal_position",
            (names["wh_schema"],),
        )
        return [r[0] for r in cur.fetchall()]


def sql(pg: Any, statement: str) -> list[tuple[Any, ...]]:
    with pg.cursor() as cur:
        cur.execute(statement)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


def rerun(tmp_path: Path, names: dict[str, str], profile: Path, mode: str | None) -> tuple[Any, Any]:
    target = {"on_schema_change": mode} if mode else {}
    return run(write_etl_dataset(tmp_path, names, **target), profile, D1)


def test_a_new_source_column_fails_by_default_naming_it_before_any_row_moves(
    pg: Any, loaded: Path, names: dict[str, str], tmp_path: Path
) -> None:
    sql(pg, f"ALTER TABLE {names['src_table']} ADD COLUMN qty integer DEFAULT 7")
    before = sql(pg, f"SELECT * FROM {names['wh_schema']}.facts ORDER BY id")
    state, error = rerun(tmp_path, names, loaded, None)
    assert state.is_failed()
    assert str(error) == (
        f"{tmp_path}/datasets/facts.yaml: target: the dataset now produces column(s) qty that "
        f"{names['wh_schema']}.facts lacks (target.on_schema_change: add_columns adds them, ignore leaves them out)"
    )
    assert sql(pg, f"SELECT * FROM {names['wh_schema']}.facts ORDER BY id") == before


def test_add_columns_adds_the_new_column_and_loads_it(
    pg: Any, loaded: Path, names: dict[str, str], tmp_path: Path
) -> None:
    sql(pg, f"ALTER TABLE {names['src_table']} ADD COLUMN qty integer DEFAULT 7")
    state, _ = rerun(tmp_path, names, loaded, "add_columns")
    assert state.is_completed(), state.message
    assert columns(pg, names)[-1] == "qty"
    assert sql(pg, f"SELECT DISTINCT qty FROM {names['wh_schema']}.facts") == [(7,)]


def test_ignore_leaves_the_new_column_out(pg: Any, loaded: Path, names: dict[str, str], tmp_path: Path) -> None:
    sql(pg, f"ALTER TABLE {names['src_table']} ADD COLUMN qty integer DEFAULT 7")
    before = columns(pg, names)
    state, results = rerun(tmp_path, names, loaded, "ignore")
    assert state.is_completed(), state.message
    assert columns(pg, names) == before and "qty" not in before
    assert {r["rows_loaded"] for r in results} == {40}


def test_a_column_gone_from_the_source_fails_or_loads_as_null_with_a_warning(
    pg: Any, loaded: Path, names: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sql(pg, f"ALTER TABLE {names['src_table']} DROP COLUMN ratio")
    state, error = rerun(tmp_path, names, loaded, None)
    assert state.is_failed()
    assert str(error).endswith(
        f"target: column(s) ratio of {names['wh_schema']}.facts no longer come from the source "
        "(target.on_schema_change: add_columns or ignore loads them as NULL)"
    )
    with caplog.at_level(logging.WARNING):
        state, _ = rerun(tmp_path, names, loaded, "ignore")
    assert state.is_completed(), state.message
    assert sql(pg, f"SELECT count(*), count(ratio) FROM {names['wh_schema']}.facts") == [(120, 0)]
    assert f"column(s) ratio of {names['wh_schema']}.facts no longer come from the source: loaded as NULL" in (
        caplog.text
    )


@pytest.mark.parametrize("mode", ["fail", "add_columns", "ignore"])
def test_a_changed_type_fails_with_the_difference_in_every_mode(
    pg: Any, loaded: Path, names: dict[str, str], tmp_path: Path, mode: str
) -> None:
    sql(pg, f"ALTER TABLE {names['src_table']} ALTER COLUMN flag TYPE text")
    state, error = rerun(tmp_path, names, loaded, mode)
    assert state.is_failed()
    assert str(error).endswith(
        f"target: {names['wh_schema']}.facts has other types than the dataset now produces: "
        "column flag: boolean → text (migrate the column, or cast it with a rule)"
    )


def test_add_columns_through_the_data_api(
    pg: Any, names: dict[str, str], tmp_path: Path, make_profile: Any, redshift_standin: Any
) -> None:
    create_pg_source(pg, names["src_table"], source_rows([k[0] for k in KEYS]))
    try:
        block = {"mode": "data_api", "workgroup": "analytics", "database": "test"}
        profile = make_profile(
            warehouse_kind="redshift",
            warehouse_url="",
            redshift_iam_role=ROLE,
            redshift=block | {"endpoint_url": redshift_standin.endpoint_url},
        )
        put_keys(profile)
        assert run(write_etl_dataset(tmp_path, names), profile, D1)[0].is_completed()
        sql(pg, f"ALTER TABLE {names['src_table']} ADD COLUMN qty numeric(12,2) DEFAULT 1.5")
        state, results = rerun(tmp_path, names, profile, "add_columns")
        assert state.is_completed(), state.message
        assert sorted(r["key"] for r in results) == sorted(["K1", "K2", EVIL])
        assert sql(pg, f"SELECT DISTINCT qty::text FROM {names['wh_schema']}.facts") == [("1.50",)]
        altered = [s for batch in redshift_standin.submitted_sql() for s in batch if s.startswith("ALTER TABLE")]
        assert f'ALTER TABLE "{names["wh_schema"]}"."facts" ADD COLUMN "qty" DECIMAL(12,2)' in altered
    finally:
        sql(pg, f"DROP TABLE IF EXISTS {names['src_table']}")
        sql(pg, f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")
