"""The main job end to end on real services: PostgreSQL or MariaDB → S3 (moto server) → PostgreSQL warehouse."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.helpers.config_files import write_yaml
from tests.helpers.etl import (
    COLUMNS,
    D1,
    D2,
    EVIL,
    KEYS,
    PATHS,
    create_pg_source,
    expected,
    masked,
    put_keys,
    run,
    source_rows,
    warehouse,
    write_dataset,
)
from tests.helpers.services import MYSQL_URL

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture()
def pg_setup(pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any) -> Any:
    rows = source_rows([k[0] for k in KEYS])
    create_pg_source(pg, names["src_table"], rows)
    profile = make_profile()
    put_keys(profile)
    yield rows, write_dataset(tmp_path, names), profile
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.parametrize("path", list(PATHS))
def test_loads_exactly_the_active_keys_value_for_value(
    pg: Any, pg_setup: Any, names: dict[str, str], tmp_path: Path, path: str
) -> None:
    rows, dataset, profile = pg_setup
    dataset = write_dataset(tmp_path, names, path=path)
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert sorted(r["key"] for r in results) == sorted(["K1", "K2", EVIL])
    for r in results:
        assert r["status"] == "loaded"
        assert r["rows_extracted"] == r["rows_staged"] == r["rows_loaded"] == 40
    assert warehouse(pg, names) == expected(rows, {"K1", "K2", EVIL})

    # A later date with two active keys loads two; the third key's rows from D1 stay (replace_key mode).
    state, results = run(dataset, profile, D2)
    assert state.is_completed() and sorted(r["key"] for r in results) == ["K1", "K2"]
    assert warehouse(pg, names) == expected(rows, {"K1", "K2", EVIL})

    # Nothing is left in the staging prefix after a successful load.
    from config.loader import load_profile
    from tasks.resources import object_store_for

    assert list(object_store_for(load_profile(profile, environ={})).list_keys("staging/")) == []
    # The SQL-looking key was data: the source table is still there.
    with pg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {names['src_table']}")
        assert cur.fetchone()[0] == len(rows)


def test_replace_table_removes_keys_no_longer_active(
    pg: Any, pg_setup: Any, names: dict[str, str], tmp_path: Path
) -> None:
    rows, _, profile = pg_setup
    dataset = write_dataset(tmp_path, names, load_mode="replace_table")
    assert run(dataset, profile, D1)[0].is_completed()
    assert run(dataset, profile, D2)[0].is_completed()
    assert warehouse(pg, names) == expected(rows, {"K1", "K2"})


def test_no_active_key_is_success_with_nothing_to_do(pg_setup: Any) -> None:
    _, dataset, profile = pg_setup
    state, results = run(dataset, profile, dt.date(2030, 1, 1))
    assert state.is_completed() and state.message == "nothing to do" and results == []


def test_failed_key_keeps_previous_rows_and_rerun_converges(pg: Any, pg_setup: Any, names: dict[str, str]) -> None:
    rows, dataset, profile = pg_setup
    assert run(dataset, profile, D1)[0].is_completed()
    before = warehouse(pg, names)
    src, wh = names["src_table"], names["wh_schema"]
    with pg.cursor() as cur:
        cur.execute(f"UPDATE {src} SET label = 'v2' WHERE campaign_key IN ('K1', 'K2')")
        # A real fault in the warehouse: K2's 30th row violates a constraint halfway through its COPY.
        cur.execute(
            f"UPDATE {src} SET label = 'poison' WHERE id = (SELECT min(id) + 29 FROM {src} WHERE campaign_key = 'K2')"
        )
        cur.execute(f"ALTER TABLE {wh}.facts ADD CONSTRAINT no_poison CHECK (title IS DISTINCT FROM 'poison')")
    state, results = run(dataset, profile, D1)
    assert state.is_failed()
    assert state.message == "1 of 3 key(s) failed: K2"
    by_key = {r["key"]: r for r in results}
    assert by_key["K1"]["status"] == "loaded" and by_key[EVIL]["status"] == "loaded"
    assert by_key["K2"]["status"] == "failed"
    assert by_key["K2"]["error"].startswith("key 'K2': load failed, previous rows kept: new row for relation")
    after = warehouse(pg, names)
    assert [r for r in after if r[1] == "K2"] == [r for r in before if r[1] == "K2"]  # untouched
    assert {r[3] for r in after if r[1] == "K1"} == {"v2"}  # the other keys did load

    with pg.cursor() as cur:
        cur.execute(f"ALTER TABLE {wh}.facts DROP CONSTRAINT no_poison")
        cur.execute(f"SELECT {COLUMNS} FROM {src} ORDER BY id")
        now = [tuple(r) for r in cur.fetchall()]
    assert run(dataset, profile, D1)[0].is_completed()
    assert warehouse(pg, names) == expected(now, {"K1", "K2", EVIL})


def test_reconciliation_mismatch_fails_the_key_with_the_numbers(pg: Any, pg_setup: Any, names: dict[str, str]) -> None:
    rows, dataset, profile = pg_setup
    assert run(dataset, profile, D1)[0].is_completed()
    before = warehouse(pg, names)
    wh = names["wh_schema"]
    with pg.cursor() as cur:
        # A trigger that silently swallows every 4th K1 row: COPY succeeds, the counts do not agree.
        cur.execute(
            f"""CREATE FUNCTION {wh}.swallow() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF NEW.campaign_key = 'K1' AND NEW.id % 4 = 0 THEN RETURN NULL; END IF; RETURN NEW; END $$"""
        )
        cur.execute(f"CREATE TRIGGER swallow BEFORE INSERT ON {wh}.facts FOR EACH ROW EXECUTE FUNCTION {wh}.swallow()")
    state, results = run(dataset, profile, D1)
    assert state.is_failed()
    k1 = next(r for r in results if r["key"] == "K1")
    assert k1["error"] == (
        "key 'K1': reconciliation failed: extracted=40 staged=40 loaded=30; "
        "the load was rolled back and the key's previous rows are intact"
    )
    assert warehouse(pg, names) == before


def test_staged_files_are_encrypted_and_secrets_never_logged(
    pg: Any,
    pg_setup: Any,
    names: dict[str, str],
    tmp_path: Path,
    make_profile: Any,
    kms_key_id: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from config.loader import load_profile
    from tasks.resources import object_store_for

    _, dataset, _ = pg_setup
    profile = make_profile(keep_staged=True)
    ds = json.loads(json.dumps(__import__("yaml").safe_load(dataset.read_text())))
    ds["rules"].append({"privacy": {"column": "title", "action": "hash", "salt_secret": "email_salt"}})
    write_yaml(dataset, ds)
    caplog.set_level(logging.DEBUG)
    state, _ = run(dataset, profile, D1)
    assert state.is_completed(), state.message

    store = object_store_for(load_profile(profile, environ={}))
    keys = list(store.list_keys("staging/facts/"))
    parts = [k for k in keys if ".csv.zst" in k]
    assert len(parts) == 3 and sum(k.endswith("manifest.json") for k in keys) == 3
    for k in keys:
        head = store.head(k)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert kms_key_id in head["SSEKMSKeyId"]
    manifest = json.loads(store.get_bytes(next(k for k in keys if k.endswith("manifest.json"))))
    assert manifest["entries"][0]["mandatory"] is True and manifest["entries"][0]["url"].startswith("s3://")

    secret = "s3nt1nel-salt-never-logged"
    staged_text = b"".join(
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(store.get_bytes(k))).read() for k in parts
    )
    assert secret.encode() not in staged_text
    out, errs = capfd.readouterr()
    assert secret not in caplog.text and secret not in out and secret not in errs
    # Logs carry the key, the dataset and the run id.
    assert "Staged key 'K1' of facts (run 2017-03-20-" in caplog.text
    assert "Loaded key 'K1' of facts (run 2017-03-20-" in caplog.text
    with pg.cursor() as cur:
        cur.execute(f"SELECT title FROM {names['wh_schema']}.facts WHERE title IS NOT NULL LIMIT 1")
        assert len(cur.fetchone()[0]) == 64  # HMAC-SHA256 hex: the text itself never reached the warehouse


MARIADB_COLUMNS = """id BIGINT PRIMARY KEY, campaign_key VARCHAR(64) NOT NULL, event_date DATE, label TEXT,
    amount DECIMAL(38,10), ratio DOUBLE, flag BOOLEAN, created_at DATETIME(6), phone TEXT"""


@pytest.fixture()
def mariadb_source(mysql: Any, pg: Any, names: dict[str, str], make_profile: Any) -> Any:
    """The awkward rows (25 a key) in a MariaDB table, its profile with the keys; both dropped afterwards."""
    rows = source_rows([k[0] for k in KEYS], per_key=25)
    table = names["src_table"]

    def create(extra: str = "") -> None:
        with mysql.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} ({MARIADB_COLUMNS}{extra}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            marks = ",".join(["%s"] * len(rows[0]))
            cur.executemany(f"INSERT INTO {table} ({COLUMNS}) VALUES ({marks})", rows)

    profile = make_profile(source_url=MYSQL_URL, keep_staged=True)
    put_keys(profile)
    try:
        yield rows, create, profile
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def mariadb_expected(rows: list[tuple[Any, ...]], keys: set[str]) -> list[tuple[Any, ...]]:
    """The warehouse rows from MariaDB: its BOOLEAN is TINYINT(1), so a flag arrives as a small integer."""
    return [(*r[:6], None if r[6] is None else int(r[6]), *r[7:]) for r in expected(rows, keys)]


def staged_csv(profile: Path, seen: set[str]) -> dict[str, bytes]:
    """The staged CSV of each key not in ``seen`` (added to it), decompressed, parts joined in order."""
    from config.loader import load_profile
    from tasks.resources import object_store_for

    store = object_store_for(load_profile(profile, environ={}))
    out: dict[str, bytes] = {}
    for k in sorted(k for k in store.list_keys("staging/facts/") if ".csv" in k and k not in seen):
        seen.add(k)
        folder = k.rsplit("/", 1)[0]
        text = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(store.get_bytes(k))).read()
        out[folder.rsplit("/", 1)[1]] = out.get(folder.rsplit("/", 1)[1], b"") + text
    return out


@pytest.mark.parametrize("path", list(PATHS))
def test_mariadb_source_value_for_value(
    mariadb_source: Any, pg: Any, tmp_path: Path, names: dict[str, str], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """NULL vs '', quotes, commas, line breaks, unicode, extreme numbers, microseconds: the same on every path."""
    rows, create, profile = mariadb_source
    create()
    caplog.set_level(logging.INFO)
    dataset = write_dataset(tmp_path, names, path=path)
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert sorted(r["rows_loaded"] for r in results) == [25, 25, 25]
    assert warehouse(pg, names) == mariadb_expected(rows, {"K1", "K2", EVIL})
    if path == "passthrough":
        assert "2 rule(s) computed by the source, 0 by keyflow; CSV bytes passed through unparsed" in caplog.text
    else:
        assert "CSV bytes passed through unparsed" not in caplog.text


def test_mariadb_passthrough_stages_the_bytes_the_parsed_path_writes(
    mariadb_source: Any, tmp_path: Path, names: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Each key's staged CSV is byte for byte the same whether MariaDB wrote it or keyflow parsed and wrote it."""
    _, create, profile = mariadb_source
    create()
    caplog.set_level(logging.INFO)
    seen: set[str] = set()
    assert run(write_dataset(tmp_path, names, path="passthrough"), profile, D1)[0].is_completed()
    assert "CSV bytes passed through unparsed" in caplog.text
    passed = staged_csv(profile, seen)
    assert run(write_dataset(tmp_path, names, path="pushed-and-client"), profile, D1)[0].is_completed()
    parsed = staged_csv(profile, seen)
    assert len(passed) == 3 and passed == parsed


def test_a_mariadb_key_filtered_on_the_source_reconciles_three_ways(
    mariadb_source: Any, pg: Any, tmp_path: Path, names: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Rows the pushed filter drops never reach keyflow: MariaDB counts the key in the snapshot of its rows."""
    rows, create, profile = mariadb_source
    create()
    caplog.set_level(logging.INFO)
    dataset = write_yaml(
        tmp_path / "datasets" / "filtered.yaml",
        {
            "name": "facts",
            "source": {"table": names["src_table"], "key_column": "campaign_key"},
            "rules": [
                {"rename": {"label": "title"}},
                {"filter": {"column": "title", "op": "not_in", "values": ["", "a,b", "NULL"]}},
                {"privacy": {"column": "phone", "action": "mask", "keep_last": 2}},
            ],
            "target": {"schema": names["wh_schema"], "table": "facts"},
        },
    )
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert "3 rule(s) computed by the source, 0 by keyflow; CSV bytes passed through unparsed" in caplog.text
    kept = [r for r in rows if r[1] in ("K1", "K2", EVIL) and r[3] is not None and r[3] not in ("", "a,b", "NULL")]
    for r in results:
        assert r["rows_extracted"] == 25
        assert r["rows_filtered"] == 25 - r["rows_staged"] and r["rows_staged"] == r["rows_loaded"] < 25
    assert sum(r["rows_loaded"] for r in results) == len(kept)
    assert warehouse(pg, names) == mariadb_expected(kept, {"K1", "K2", EVIL})


def test_a_mariadb_column_without_an_exact_rendering_keeps_the_parsed_path(
    mariadb_source: Any, pg: Any, tmp_path: Path, names: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A FLOAT column: MariaDB's text of it is not Arrow's, so every key is parsed, and the log says why once."""
    rows, create, profile = mariadb_source
    create(", f FLOAT DEFAULT 0.1")
    caplog.set_level(logging.INFO)
    state, results = run(write_dataset(tmp_path, names), profile, D1)
    assert state.is_completed(), state.message
    assert sorted(r["rows_loaded"] for r in results) == [25, 25, 25]
    why = (
        "Dataset facts: rows are parsed, not passed through as bytes: "
        "column 'f' is FLOAT on the source, staged as double: no exact text for it"
    )
    assert caplog.text.count(why) == 1
    assert "CSV bytes passed through unparsed" not in caplog.text
    assert warehouse(pg, names) == mariadb_expected(rows, {"K1", "K2", EVIL})
    with pg.cursor() as cur:
        cur.execute(f"SELECT DISTINCT f FROM {names['wh_schema']}.facts")
        assert cur.fetchall() == [(0.1,)]


def test_dask_cluster_gives_the_same_warehouse(
    pg: Any, pg_setup: Any, names: dict[str, str], make_profile: Any
) -> None:
    """Scale-out: the profile picks a local Dask cluster of 2 worker processes; the result is the same."""
    from flows.rds_to_redshift import for_profile

    rows, dataset, _ = pg_setup
    profile = make_profile(task_runner="dask", dask_workers=2)
    put_keys(profile)
    flow = for_profile(str(profile))
    assert type(flow.task_runner).__name__ == "DaskTaskRunner"
    state = flow(dataset=str(dataset), run_date=D1, profile=str(profile), return_state=True)
    assert state.is_completed(), state.message
    assert warehouse(pg, names) == expected(rows, {"K1", "K2", EVIL})


def test_embedded_duckdb_warehouse_value_for_value(
    pg_setup: Any, names: dict[str, str], make_profile: Any, tmp_path: Path
) -> None:
    """The no-server warehouse reads the staged CSV back with the target types: the same awkward values survive."""
    import duckdb

    rows, dataset, _ = pg_setup
    path = tmp_path / "wh.duckdb"
    profile = make_profile(warehouse_kind="duckdb", warehouse_url=str(path))
    put_keys(profile)
    state, _ = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    with duckdb.connect(str(path), read_only=True) as db:
        got = [
            tuple(r)
            for r in db.execute(
                f"SELECT {COLUMNS.replace('label', 'title')} FROM {names['wh_schema']}.facts ORDER BY id"
            ).fetchall()
        ]
    assert got == expected(rows, {"K1", "K2", EVIL})


def test_a_long_key_logs_how_many_rows_it_staged_so_far(
    pg_setup: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.etl

    _, dataset, profile = pg_setup
    monkeypatch.setattr(tasks.etl, "PROGRESS_SECONDS", 0.0)  # every batch is "long" here
    caplog.set_level(logging.INFO)
    state, _ = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    assert re.search(r"Staging key 'K1': \d+ rows staged so far \(\d+s\)", caplog.text)


@pytest.mark.parametrize("pushdown", [True, False], ids=["filter-on-source", "filter-on-client"])
def test_a_filtered_key_reconciles_with_the_sources_count(
    pg: Any, pg_setup: Any, names: dict[str, str], tmp_path: Path, pushdown: bool
) -> None:
    """Rows a pushed filter drops never reach keyflow: the source counts the key's slice in the same snapshot."""
    rows, _, profile = pg_setup
    dataset = write_yaml(
        tmp_path / "datasets" / "filtered.yaml",
        {
            "name": "facts",
            "source": {"table": names["src_table"], "key_column": "campaign_key", "pushdown": pushdown},
            "rules": [{"rename": {"label": "title"}}, {"filter": {"column": "ratio", "op": ">", "value": 0}}],
            "target": {"schema": names["wh_schema"], "table": "facts"},
        },
    )
    state, results = run(dataset, profile, D1)
    assert state.is_completed(), state.message
    kept = {r[0] for r in rows if r[1] in ("K1", "K2", EVIL) and r[5] is not None and r[5] > 0}
    for r in results:
        assert r["rows_extracted"] == 40
        assert r["rows_filtered"] == 40 - r["rows_staged"] and r["rows_staged"] == r["rows_loaded"]
    assert sum(r["rows_loaded"] for r in results) == len(kept)
    with pg.cursor() as cur:
        cur.execute(f"SELECT id FROM {names['wh_schema']}.facts")
        assert {r[0] for r in cur.fetchall()} == kept


def test_a_hash_computed_by_pgcrypto_equals_keyflows_and_the_salt_stays_out_of_the_logs(
    pg: Any,
    tmp_path: Path,
    names: dict[str, str],
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A source database with pgcrypto computes the salted hash: every rule runs there and the bytes pass through."""
    import hashlib
    import hmac

    import psycopg2

    from tests.helpers.services import PG_DSN, PG_URL, unique

    db = unique("kf_crypto")
    pg_admin = pg
    with pg_admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db} TEMPLATE template0 ENCODING 'UTF8'")
    src = psycopg2.connect(PG_DSN.replace("dbname=test", f"dbname={db}"))
    src.autocommit = True
    try:
        with src.cursor() as cur:
            cur.execute("CREATE EXTENSION pgcrypto")
        rows = source_rows([k[0] for k in KEYS], per_key=20)
        create_pg_source(src, names["src_table"], rows)
        profile = make_profile(source_url=PG_URL.rsplit("/", 1)[0] + f"/{db}")
        put_keys(profile)
        dataset = write_dataset(tmp_path, names)
        ds = __import__("yaml").safe_load(dataset.read_text())
        ds["rules"].append({"privacy": {"column": "title", "action": "hash", "salt_secret": "email_salt"}})
        write_yaml(dataset, ds)
        caplog.set_level(logging.DEBUG)
        state, _ = run(dataset, profile, D1)
        assert state.is_completed(), state.message
        assert "3 rule(s) computed by the source, 0 by keyflow; CSV bytes passed through unparsed" in caplog.text

        secret = "s3nt1nel-salt-never-logged"  # the conftest's KEYFLOW_EMAIL_SALT
        salt = secret.encode()

        def hashed(v: str | None) -> str | None:
            return None if v is None else hmac.new(salt, v.encode(), hashlib.sha256).hexdigest()

        want = [(*r[:3], hashed(r[3]), *r[4:8], masked(r[8])) for r in rows if r[1] in ("K1", "K2", EVIL)]
        assert warehouse(pg, names) == want
        out, errs = capfd.readouterr()
        assert secret not in caplog.text and secret not in out and secret not in errs
    finally:
        src.close()
        with pg_admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")
