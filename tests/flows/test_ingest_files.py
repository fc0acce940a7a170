"""File ingestion end to end: landing files on the moto server into PostgreSQL and MariaDB tables, bad rows set
aside with their reason, unreadable files quarantined whole, each file loaded once."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_file_source, load_profile
from flows.ingest_files import ingest_files
from tasks.resources import object_store_for
from tests.helpers.config_files import write_yaml
from tests.helpers.services import MYSQL_URL, PG_URL

pytestmark = pytest.mark.usefixtures("prefect_harness")

HEADER = "id,campaign_code,fact_date,country,clicks,spend,email\n"
GOOD = HEADER + (
    "1,C1,2026-11-01,DE,5,1.50,a@example.com\n"
    '2,"C,2",2026-11-02,FR,0,0,"quoted ""name"""\n'
    "3,C3,2026-11-03,,7,2.25,\n"
    "4,C1,2026-13-01,DE,1,1,\n"  # bad date
    "5,C1,2026-11-05,XX,1,1,\n"  # country not allowed
    "6,C1,2026-11-06,US,-3,1,\n"  # clicks below min
    "7,C1,2026-11-07,US,1,123456789012.5,\n"  # does not fit decimal(12,2)
    "1,C9,2026-11-08,US,1,1,\n"  # duplicate primary key in the file
    "8,,2026-11-08,US,1,1,\n"  # required
    "9,C1,2026-11-09\n"  # too few fields
    "10,ünï,2026-11-10,JP,2,3.5,✓\n"
)
EXPECTED = [
    (1, "C1", dt.date(2026, 11, 1), "DE", 5, Decimal("1.50"), "a@example.com"),
    (2, "C,2", dt.date(2026, 11, 2), "FR", 0, Decimal("0.00"), 'quoted "name"'),
    (3, "C3", dt.date(2026, 11, 3), None, 7, Decimal("2.25"), None),
    (10, "ünï", dt.date(2026, 11, 10), "JP", 2, Decimal("3.50"), "✓"),
]
REASONS = {
    "4": "fact_date: not a date (YYYY-MM-DD): '2026-13-01'",
    "5": "country: not one of DE, FR, GB, JP, US: 'XX'",
    "6": "clicks: below the minimum 0",
    "7": "spend: does not fit decimal(12,2)",
    "1": "duplicate primary key in this file",
    "8": "campaign_code: required",
    "": "expected 7 fields, got 3",
}


def source_yaml(tmp_path: Path, names: dict[str, str], schema: str | None) -> Path:
    text = (Path(__file__).resolve().parents[2] / "config" / "sources" / "campaign_facts_files.yaml").read_text()
    path = tmp_path / "sources" / "facts.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("  table: partner_campaign_facts", f"  table: {names['src_table']}"))
    if schema:
        path.write_text(path.read_text().replace("target:\n", f"target:\n  schema: {schema}\n"))
    return path


def put_landing(profile: Any, files: dict[str, bytes]) -> None:
    store = object_store_for(profile)
    for name, data in files.items():
        store.put_bytes(data, f"landing/campaign_facts/{name}")


@pytest.fixture(params=["postgres", "mariadb"])
def target(request: Any, pg: Any, mysql: Any, tmp_path: Path, names: dict[str, str], make_profile: Any) -> Any:
    if request.param == "postgres":
        profile_path = make_profile(source_url=PG_URL)
        schema = names["wh_schema"]

        def fetch() -> list[tuple[Any, ...]]:
            with pg.cursor() as cur:
                cur.execute(f"SELECT * FROM {schema}.{names['src_table']} ORDER BY id")
                return [tuple(r) for r in cur.fetchall()]

        def ledger() -> list[tuple[Any, ...]]:
            with pg.cursor() as cur:
                cur.execute(
                    "SELECT status, rows_in, rows_loaded, rows_rejected "
                    f"FROM {schema}.keyflow_file_ledger ORDER BY file_key"
                )
                return [tuple(r) for r in cur.fetchall()]

        yield profile_path, source_yaml(tmp_path, names, schema), fetch, ledger
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    else:
        profile_path = make_profile(source_url=MYSQL_URL)
        database = names["wh_schema"]  # a database of its own: the table and the ledger live in it

        def fetch() -> list[tuple[Any, ...]]:
            with mysql.cursor() as cur:
                cur.execute(f"SELECT * FROM {database}.{names['src_table']} ORDER BY id")
                return [tuple(r) for r in cur.fetchall()]

        def ledger() -> list[tuple[Any, ...]]:
            with mysql.cursor() as cur:
                cur.execute(
                    f"SELECT status, rows_in, rows_loaded, rows_rejected FROM {database}.keyflow_file_ledger "
                    "ORDER BY file_key"
                )
                return [tuple(r) for r in cur.fetchall()]

        with mysql.cursor() as cur:
            cur.execute(f"CREATE DATABASE {database}")
        yield profile_path, source_yaml(tmp_path, names, database), fetch, ledger
        with mysql.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {database}")


def test_files_load_once_with_rejected_rows_and_quarantined_files(target: Any) -> None:
    profile_path, source_path, fetch, ledger = target
    profile, source = load_profile(profile_path, environ={}), load_file_source(source_path)
    truncated = gzip.compress(GOOD.encode())[:-20]
    put_landing(
        profile,
        {
            "2026-11-27/good.csv": GOOD.encode(),
            "2026-11-27/empty.csv": b"",
            "2026-11-27/truncated.csv.gz": truncated,
            "2026-11-27/header.csv": b"id,campaign,fact_date\n1,C1,2026-11-01\n",
            "2026-11-27/latin1.csv": (HEADER + "11,Caf\xe9,2026-11-11,FR,1,1,\n").encode("latin-1"),
            "2026-11-27/notes.txt": b"not matched by the pattern",
            "../../escape.csv": b"x" + GOOD.encode(),  # a name that would write outside the quarantine prefix
            "2026-11-27/copy.csv": GOOD.encode(),  # the same content twice, in parallel: loaded once
        },
    )
    state = ingest_files(source=str(source_path), profile=str(profile_path), return_state=True)
    assert state.is_completed(), state.message
    by_file = {r["file"].rsplit("/", 1)[1]: r for r in state.result()}
    assert set(by_file) == {
        "good.csv",
        "copy.csv",
        "empty.csv",
        "truncated.csv.gz",
        "header.csv",
        "latin1.csv",
        "escape.csv",
    }
    assert sorted([by_file["good.csv"]["status"], by_file["copy.csv"]["status"]]) == ["loaded", "skipped"]
    if by_file["copy.csv"]["status"] == "loaded":
        by_file["good.csv"], by_file["copy.csv"] = by_file["copy.csv"], by_file["good.csv"]
    assert by_file["escape.csv"]["status"] == "quarantined"
    assert by_file["escape.csv"]["reason"].startswith("unsafe file name: file name '../../escape.csv' has '..'")
    good = by_file["good.csv"]
    assert (good["status"], good["rows_in"], good["rows_loaded"], good["rows_rejected"]) == ("loaded", 11, 4, 7)
    assert by_file["empty.csv"]["reason"] == "empty file"
    assert by_file["truncated.csv.gz"]["reason"].startswith("not a complete gzip file")
    assert by_file["header.csv"]["reason"] == (
        "wrong header: missing column(s) campaign_code, country, clicks, spend, email; unexpected column(s) campaign"
    )
    assert by_file["latin1.csv"]["reason"] == "undecodable bytes for utf-8: invalid continuation byte at byte 60"
    assert fetch() == EXPECTED

    store = object_store_for(profile)
    loaded_name = by_file["good.csv"]["file"].removeprefix("landing/campaign_facts/")
    rejected = list(
        csv.DictReader(io.StringIO(store.get_bytes(f"{source.rejected_prefix}/{loaded_name}.rejected.csv").decode()))
    )
    assert {r["id"]: r["_reason"] for r in rejected} == REASONS
    assert store.get_bytes(f"{source.quarantine_prefix}/2026-11-27/truncated.csv.gz") == truncated
    assert b"empty file" in store.get_bytes(f"{source.quarantine_prefix}/2026-11-27/empty.csv.reason.txt")

    # A rerun loads nothing twice; a corrected file (new content) upserts by primary key.
    again = ingest_files(source=str(source_path), profile=str(profile_path), return_state=True)
    assert {r["status"] for r in again.result()} == {"skipped"}
    assert fetch() == EXPECTED
    put_landing(profile, {"2026-11-28/fix.csv": (HEADER + "1,C1,2026-11-01,DE,50,9.99,fixed@example.com\n").encode()})
    fixed = ingest_files(source=str(source_path), profile=str(profile_path), return_state=True)
    assert [r["status"] for r in fixed.result() if r["status"] != "skipped"] == ["loaded"]
    rows = fetch()
    assert rows[0] == (1, "C1", dt.date(2026, 11, 1), "DE", 50, Decimal("9.99"), "fixed@example.com")
    assert rows[1:] == EXPECTED[1:]
    statuses = ledger()
    assert sorted(s[0] for s in statuses) == ["loaded", "loaded", *["quarantined"] * 5]
    assert all(rows_in == loaded + rejected for _, rows_in, loaded, rejected in statuses)

    from typer.testing import CliRunner

    from flows.cli import app

    cli = CliRunner().invoke(app, ["files", "ingest", "-s", str(source_path), "-p", str(profile_path), "--json"])
    assert cli.exit_code == 0, cli.output
    assert {r["status"] for r in json.loads(cli.output.strip().splitlines()[-1])} == {"skipped"}


def test_a_bad_source_yaml_names_file_and_field(tmp_path: Path) -> None:
    from config.errors import ConfigError

    path = write_yaml(
        tmp_path / "s.yaml",
        {
            "name": "s",
            "landing_prefix": "in",
            "columns": [{"name": "id", "type": "bigint"}],
            "primary_key": ["idd"],
            "target": {"table": "t"},
        },
    )
    with pytest.raises(ConfigError, match=r"s.yaml: \(top level\): primary_key column\(s\) not among the columns: idd"):
        load_file_source(path)
