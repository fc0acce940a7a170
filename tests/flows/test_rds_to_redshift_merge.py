"""target.load_mode merge: each key's rows upserted by primary key, atomic per key and reconciled, into PostgreSQL
(INSERT … ON CONFLICT), Redshift through the Data API on the stand-in (MERGE; Parquet and CSV staging) and DuckDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.etl import COLUMNS, D1, EVIL, KEYS, create_pg_source, expected, put_keys, run, source_rows, warehouse
from tests.helpers.etl import write_dataset as write_etl_dataset

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROLE = "arn:aws:iam::123456789012:role/keyflow-copy"
TARGETS = ["postgres", "redshift-data-api-parquet", "redshift-data-api-csv"]


@pytest.fixture()
def source(pg: Any, names: dict[str, str]) -> Iterator[list[tuple[Any, ...]]]:
    rows = source_rows([k[0] for k in KEYS])
    create_pg_source(pg, names["src_table"], rows)
    yield rows
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def profile_for(target: str, make_profile: Any, standin: Any) -> Path:
    if target == "postgres":
        return make_profile()  # type: ignore[no-any-return]
    block = {"mode": "data_api", "workgroup": "analytics", "database": "test", "endpoint_url": standin.endpoint_url}
    return make_profile(  # type: ignore[no-any-return]
        warehouse_kind="redshift", warehouse_url="", redshift_iam_role=ROLE, redshift=block
    )


def dataset_for(target: str, tmp_path: Path, names: dict[str, str], primary_key: list[str]) -> Path:
    staging = {"format": "csv"} if target.endswith("csv") else None
    return write_etl_dataset(tmp_path, names, staging=staging, load_mode="merge", primary_key=primary_key)


@pytest.mark.parametrize("target", TARGETS)
def test_merge_updates_inserts_and_keeps_value_for_value(
    pg: Any,
    source: list[tuple[Any, ...]],
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    redshift_standin: Any,
    target: str,
) -> None:
    profile = profile_for(target, make_profile, redshift_standin)
    put_keys(profile)
    dataset = dataset_for(target, tmp_path, names, ["id"])
    state, _ = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert warehouse(pg, names) == expected(source, {"K1", "K2", EVIL})

    src = names["src_table"]
    with pg.cursor() as cur:  # K1 changes: two rows updated, one gone from the source, one new
        cur.execute(f"UPDATE {src} SET label = 'changed', amount = 7 WHERE id IN (1, 2)")
        cur.execute(f"DELETE FROM {src} WHERE id = 3")
        cur.execute(
            f"INSERT INTO {src} SELECT 10001, campaign_key, event_date, '', NULL, ratio, flag, created_at, "
            f"phone FROM {src} WHERE id = 4"
        )
        cur.execute(f"SELECT {COLUMNS} FROM {src} ORDER BY id")
        now = [tuple(r) for r in cur.fetchall()]
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    k1 = next(r for r in results if r["key"] == "K1")
    assert k1["rows_staged"] == k1["rows_loaded"] == 40  # inserted + updated = staged
    gone = [r for r in source if r[0] == 3]
    assert warehouse(pg, names) == sorted(expected(now, {"K1", "K2", EVIL}) + expected(gone, {"K1"}))  # merge keeps it


def test_a_primary_key_that_is_not_unique_fails_the_redshift_key_and_keeps_its_rows(
    pg: Any,
    source: list[tuple[Any, ...]],
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    redshift_standin: Any,
) -> None:
    profile = profile_for("redshift-data-api-parquet", make_profile, redshift_standin)
    put_keys(profile)
    by_key = dataset_for("redshift", tmp_path, names, ["campaign_key"])
    # Redshift enforces no uniqueness. Into an empty table every row is "not matched": the merge inserts them all,
    # and the count check (target rows matching the staged keys = rows staged) rolls each key back.
    state, results = run(by_key, profile, D1)
    assert state.is_failed() and {r["status"] for r in results} == {"failed"}
    for r in results:
        assert r["error"].startswith(f"key {r['key']!r}: reconciliation failed: extracted=40 staged=40"), r["error"]
    assert warehouse(pg, names) == []
    # Against rows already there, several staged rows match one target row: the MERGE itself fails.
    state, _ = run(dataset_for("redshift", tmp_path, names, ["id"]), profile, D1)
    assert state.is_completed(), state.message
    before = warehouse(pg, names)
    state, results = run(dataset_for("redshift", tmp_path, names, ["campaign_key"]), profile, D1)
    assert state.is_failed()
    assert {r["error"].split(": ", 2)[1] for r in results} == {"load failed, previous rows kept"}
    assert warehouse(pg, names) == before


def test_a_primary_key_that_is_not_unique_in_postgresql_is_a_config_error_before_any_row_moves(
    pg: Any, source: list[tuple[Any, ...]], names: dict[str, str], tmp_path: Path, make_profile: Any
) -> None:
    profile = make_profile()
    put_keys(profile)
    assert run(dataset_for("postgres", tmp_path, names, ["id"]), profile, D1)[0].is_completed()
    state, result = run(dataset_for("postgres", tmp_path, names, ["campaign_key"]), profile, D1)
    assert state.is_failed()
    assert str(result).startswith(
        f"target.primary_key: (campaign_key) is not unique in {names['wh_schema']}.facts, so load_mode merge "
        "cannot upsert by it: could not create unique index"
    ), str(result)


def test_duckdb_merges_by_primary_key(tmp_path: Path, aws_endpoint: str) -> None:
    import pyarrow as pa

    from config.types import parse_type
    from tasks.io.objectstore import S3ObjectStore
    from tasks.io.stager import PartWriter
    from tasks.io.warehouse import DuckDBWarehouse
    from tasks.transforms.sql import TableSpec
    from tasks.transforms.staging import StagedKey
    from tests.helpers.services import unique

    store = S3ObjectStore(unique("m").replace("_", "-"), "us-east-1", aws_endpoint)
    store.ensure_bucket()
    spec = TableSpec(
        "main",
        "facts",
        "k",
        (("k", parse_type("text"), False), ("id", parse_type("bigint"), False), ("v", parse_type("text"), True)),
        load_mode="merge",
        primary_key=("id",),
    )
    schema = pa.schema([("k", pa.string()), ("id", pa.int64()), ("v", pa.string())])

    def staged(rows: list[tuple[Any, ...]], run_id: str) -> StagedKey:
        writer = PartWriter(store, f"s/{run_id}/", schema, "zstd", 1, 1000)
        writer.write(pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema=schema))
        parts = writer.close()
        n = len(rows)
        return StagedKey(
            "facts",
            "K",
            run_id,
            "2017-03-20",
            store.bucket,
            f"s/{run_id}/",
            "",
            "zstd",
            ("k", "id", "v"),
            n,
            0,
            n,
            0,
            0.0,
            tuple(parts),
        )

    wh = DuckDBWarehouse(str(tmp_path / "wh.duckdb"))
    wh.prepare(spec)
    assert wh.load_key(spec, staged([("K", 1, "a"), ("K", 2, None)], "r1"), store) == 2
    assert wh.load_key(spec, staged([("K", 2, ""), ("K", 3, "c")], "r2"), store) == 2
    assert wh.query("SELECT k, id, v FROM main.facts ORDER BY id") == [("K", 1, "a"), ("K", 2, ""), ("K", 3, "c")]
