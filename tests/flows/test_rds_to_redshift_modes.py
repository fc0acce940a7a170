"""The main job into Redshift's production modes, on the Redshift stand-in: PostgreSQL source → S3 (moto server) →
the Data API (statements run on PostgreSQL), and a direct connection with IAM temporary credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_profile
from tasks.io.warehouse import RedshiftWarehouse
from tasks.resources import object_store_for, resources_for
from tests.helpers.etl import D1, D2, EVIL, KEYS, create_pg_source, expected, put_keys, run, source_rows, warehouse
from tests.helpers.etl import write_dataset as write_etl_dataset
from tests.helpers.services import PG_URL, unique

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROLE = "arn:aws:iam::123456789012:role/keyflow-copy"


def data_api_profile(make_profile: Any, standin: Any, **redshift: Any) -> Path:
    block = {"mode": "data_api", "workgroup": "analytics", "database": "test", "endpoint_url": standin.endpoint_url}
    return make_profile(  # type: ignore[no-any-return]
        warehouse_kind="redshift", warehouse_url="", redshift_iam_role=ROLE, redshift=block | redshift
    )


@pytest.fixture()
def source(pg: Any, names: dict[str, str]) -> Iterator[list[tuple[Any, ...]]]:
    rows = source_rows([k[0] for k in KEYS])
    create_pg_source(pg, names["src_table"], rows)
    yield rows
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.parametrize(
    ("fmt", "path"),
    [(None, "passthrough"), ("csv", "passthrough"), ("csv", "pushed-and-client"), ("csv", "client")],
    ids=["parquet-by-default", "csv-passthrough", "csv-pushed-and-client", "csv-client"],
)
def test_data_api_loads_the_awkward_values_value_for_value(
    pg: Any,
    source: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    redshift_standin: Any,
    fmt: Any,
    path: str,
) -> None:
    profile = data_api_profile(make_profile, redshift_standin)
    put_keys(profile)
    dataset = write_etl_dataset(tmp_path, names, staging={"format": fmt} if fmt else None, path=path)
    before = len(redshift_standin.submitted_sql())
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert sorted(r["key"] for r in results) == sorted(["K1", "K2", EVIL])
    assert all(r["rows_extracted"] == r["rows_staged"] == r["rows_loaded"] == 40 for r in results)
    assert warehouse(pg, names) == expected(source, {"K1", "K2", EVIL})
    loads = [b for b in redshift_standin.submitted_sql()[before:] if len(b) > 2 and b[2].startswith("COPY")]
    assert len(loads) == 3  # one BatchExecuteStatement per key, the target locked first
    assert {b[0] for b in loads} == {f'LOCK "{names["wh_schema"]}"."facts"'}
    copy = loads[0][2]
    assert copy.startswith(f'COPY "{names["wh_schema"]}"."facts" ("id", "campaign_key", "event_date", "title", ')
    assert ("FORMAT AS PARQUET\nMANIFEST" in copy) == (fmt is None) and ("FORMAT AS CSV" in copy) == (fmt == "csv")

    state, _ = run(dataset, profile, D2)
    assert state.is_completed()
    assert warehouse(pg, names) == expected(source, {"K1", "K2", EVIL})
    store = object_store_for(load_profile(profile, environ={}))
    assert list(store.list_keys("staging/")) == []  # staged files and ledger entries gone


def test_data_api_replace_table_removes_keys_no_longer_active(
    pg: Any, source: Any, names: dict[str, str], tmp_path: Path, make_profile: Any, redshift_standin: Any
) -> None:
    profile = data_api_profile(
        make_profile, redshift_standin, workgroup=None, cluster_id="analytics", db_user="etl_loader"
    )
    put_keys(profile)
    dataset = write_etl_dataset(tmp_path, names, load_mode="replace_table")
    assert run(dataset, profile, D1)[0].is_completed()
    assert run(dataset, profile, D2)[0].is_completed()
    assert warehouse(pg, names) == expected(source, {"K1", "K2"})


@pytest.fixture()
def iam_user(pg: Any) -> Iterator[str]:
    """A PostgreSQL role named as Redshift names an IAM user's database user (``IAM:<db_user>``)."""
    user = unique("loader")
    with pg.cursor() as cur:
        cur.execute(f'CREATE ROLE "IAM:{user}" LOGIN')
    yield user
    with pg.cursor() as cur:
        cur.execute(f'DROP ROLE "IAM:{user}"')


def test_direct_mode_connects_with_iam_credentials_and_no_password(
    make_profile: Any, redshift_standin: Any, iam_user: str
) -> None:
    profile = make_profile(
        warehouse_kind="redshift",
        warehouse_url=PG_URL.replace("+psycopg2", "").replace("postgres@", "nobody@"),
        redshift_iam_role=ROLE,
        redshift={
            "iam_auth": True,
            "cluster_id": "c1",
            "db_user": iam_user,
            "endpoint_url": redshift_standin.endpoint_url,
        },
    )
    wh = resources_for(load_profile(profile, environ={})).warehouse()
    assert isinstance(wh, RedshiftWarehouse)
    with wh.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone()[0] == f"IAM:{iam_user}"  # the user GetClusterCredentials returned, not the URL's
    assert wh.loaded_keys("no_such_schema", "facts", "2017-03-20") == set()
    asked = [c[1] for c in redshift_standin.calls if c[0] == "GetClusterCredentials"][-1]
    assert (asked["ClusterIdentifier"], asked["DbUser"], asked["DbName"]) == ("c1", iam_user, "test")


def crash_load(dataset: Path, profile: Path, key: str, day: Any) -> None:
    """Stage and submit one key's load in another process that dies before the load's outcome is known."""
    root = Path(__file__).resolve().parents[2]
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.helpers.crash_load", str(dataset), str(profile), key, day.isoformat()],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 17, crashed.stderr


def test_a_rerun_after_a_crash_mid_load_waits_for_the_submitted_load_instead_of_resubmitting(
    pg: Any, source: Any, names: dict[str, str], tmp_path: Path, make_profile: Any, redshift_standin: Any
) -> None:
    profile = data_api_profile(make_profile, redshift_standin)
    put_keys(profile)
    dataset = write_etl_dataset(tmp_path, names)
    redshift_standin.hold = 12.0  # the orphaned batch stays STARTED while the worker dies and the rerun starts
    try:
        crash_load(dataset, profile, "K1", D1)
    finally:
        redshift_standin.hold = 0.0
    (crashed,) = k1_loads(redshift_standin, names)
    try:
        assert crashed.status in ("SUBMITTED", "STARTED")
        store = object_store_for(load_profile(profile, environ={}))
        assert [k for k in store.list_keys("staging/_loads/") if "/K1/" in k]  # the ledger holds its id
        state, results = run(dataset, profile, D1)
    finally:
        redshift_standin.wait_idle()
    assert state.is_completed(), state.message
    assert crashed.status == "FINISHED"
    assert k1_loads(redshift_standin, names) == [crashed]  # waited for, never submitted again
    polls = [c for c in redshift_standin.calls if c[0] == "DescribeStatement" and c[1]["Id"] == crashed.id]
    assert len(polls) >= 2  # the rerun found it still running and polled it until it finished
    assert {r["key"]: r["rows_loaded"] for r in results} == {"K1": 40, "K2": 40, EVIL: 40}
    assert warehouse(pg, names) == expected(source, {"K1", "K2", EVIL})  # every row exactly once
    assert list(store.list_keys("staging/_loads/")) == []


def k1_loads(standin: Any, names: dict[str, str]) -> list[Any]:
    """The Data API loads of key K1 into this test's schema, in the order submitted."""
    return sorted(
        (
            s
            for s in standin.statements.values()
            if names["wh_schema"] in s.sqls[0] and s.request.get("StatementName", "").endswith("facts K1")
        ),
        key=lambda s: s.created,
    )


def test_a_load_the_ledger_knows_as_failed_is_submitted_again(
    pg: Any, source: Any, names: dict[str, str], tmp_path: Path, make_profile: Any, redshift_standin: Any
) -> None:
    profile = data_api_profile(make_profile, redshift_standin)
    put_keys(profile)
    dataset = write_etl_dataset(tmp_path, names)
    redshift_standin.hold = 2.0
    try:
        crash_load(dataset, profile, "K1", D1)
        with pg.cursor() as cur:  # while the orphaned load waits to run, the warehouse turns against it
            cur.execute(f"ALTER TABLE {names['wh_schema']}.facts ADD CONSTRAINT no_k1 CHECK (campaign_key <> 'K1')")
        redshift_standin.wait_idle()
    finally:
        redshift_standin.hold = 0.0
    (orphan,) = k1_loads(redshift_standin, names)
    assert orphan.status == "FAILED"
    with pg.cursor() as cur:
        cur.execute(f"ALTER TABLE {names['wh_schema']}.facts DROP CONSTRAINT no_k1")
    state, _ = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert [s.status for s in k1_loads(redshift_standin, names)] == ["FAILED", "FINISHED"]
    assert warehouse(pg, names) == expected(source, {"K1", "K2", EVIL})


def test_parquet_staging_into_postgresql_is_a_config_error_before_any_row_moves(
    names: dict[str, str], tmp_path: Path, make_profile: Any
) -> None:
    from config.errors import ConfigError
    from config.loader import load_dataset
    from tasks.etl import prepare_target

    dataset = load_dataset(write_etl_dataset(tmp_path, names, staging={"format": "parquet"}))
    resources = resources_for(load_profile(make_profile(), environ={}))
    with pytest.raises(ConfigError) as err:
        prepare_target.fn(dataset, resources)
    assert str(err.value) == (
        f"{dataset.file}: staging.format: parquet loads only into Redshift; the profile's warehouse is 'postgres' "
        "(use csv)"
    )
