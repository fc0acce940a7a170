"""Every statement keyflow sends to Redshift parses with sqlglot's ``redshift`` dialect (syntax only PostgreSQL
accepts would fail here), and every COPY uses only options AWS documents for its format."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace

import pytest
import sqlglot
from sqlglot import exp

from config.types import parse_type
from tasks.transforms.sql import (
    COLUMNS_QUERY,
    DATA_API_MAX_SQL_BYTES,
    DATA_API_MAX_STATEMENTS,
    DATA_API_UNIT_KEYS,
    TableSpec,
    UnitMember,
    merge_stage,
    named_parameters,
    render_add_column,
    render_count_key,
    render_count_merged,
    render_create_ledger,
    render_create_merge_stage,
    render_create_schema,
    render_create_table,
    render_data_api_load,
    render_data_api_unit_load,
    render_delete_key,
    render_delete_other_keys,
    render_ledger_delete,
    render_ledger_insert,
    render_ledger_keys,
    render_lock_target,
    render_merge,
    render_redshift_copy,
)

SPEC = TableSpec(
    schema="analytics",
    table="facts",
    key_column="campaign_key",
    columns=(
        ("campaign_key", parse_type("varchar(32)"), False),
        ("event_date", parse_type("date"), True),
        ("amount", parse_type("decimal(38,10)"), True),
        ("created_at", parse_type("timestamp"), True),
        ("note", parse_type("text"), True),
    ),
    distkey="campaign_key",
    sortkey=("event_date",),
)
ROLE = "arn:aws:iam::123456789012:role/keyflow-copy"
MANIFEST = "s3://bucket/keyflow/facts/run/K1/manifest.json"
COPIES = {
    f"{fmt}-{compression}-{region}": render_redshift_copy(SPEC, MANIFEST, ROLE, compression, region, fmt)
    for fmt in ("csv", "parquet")
    for compression in ("zstd", "gzip", "none")
    for region in (None, "eu-west-1")
}


def statements() -> dict[str, str]:
    """Every rendered Redshift statement, by name."""
    out = {
        "create schema": render_create_schema(SPEC, "redshift"),
        "create table": render_create_table(SPEC, "redshift"),
        "create ledger": render_create_ledger("analytics", "redshift"),
        "delete key": render_delete_key(SPEC, "redshift"),
        "delete other keys": render_delete_other_keys(SPEC, 3, "redshift"),
        "delete all keys": render_delete_other_keys(SPEC, 0, "redshift"),
        "count key": render_count_key(SPEC, "redshift"),
        "ledger delete": render_ledger_delete("analytics", "redshift"),
        "ledger insert": render_ledger_insert("analytics", "redshift"),
        "ledger keys": render_ledger_keys("analytics", "redshift"),
        "data api count key": named_parameters(render_count_key(SPEC, "redshift")),
        "data api delete other keys": named_parameters(render_delete_other_keys(SPEC, 2, "redshift")),
        "data api ledger keys": named_parameters(render_ledger_keys("analytics", "redshift")),
        "pg_last_copy_count": "SELECT pg_last_copy_count()",
        "columns": named_parameters(COLUMNS_QUERY),
        "add column": render_add_column(SPEC, "qty", parse_type("decimal(12,2)"), "redshift"),
    }
    out |= {f"copy {name}": sql for name, sql in COPIES.items()}
    merging = replace(SPEC, load_mode="merge", primary_key=("campaign_key", "event_date"))
    out |= {
        "create merge stage": render_create_merge_stage(merging, "redshift"),
        "merge": render_merge(merging, "redshift"),
        "count merged": render_count_merged(merging, "redshift"),
    }
    for fmt in ("csv", "parquet"):
        batch, _ = render_data_api_load(SPEC, COPIES[f"{fmt}-zstd-None"])
        out |= {f"data api load {fmt} [{i}]": sql for i, sql in enumerate(batch) if i}  # [0] is the LOCK: below
        stage_copy = render_redshift_copy(merge_stage(merging), MANIFEST, ROLE, "zstd", None, fmt)
        batch, _ = render_data_api_load(merging, stage_copy)
        out |= {f"data api merge {fmt} [{i}]": sql for i, sql in enumerate(batch) if i}
        batch, _, _ = render_data_api_unit_load(SPEC, COPIES[f"{fmt}-zstd-None"], UNIT)
        out |= {f"data api unit {fmt} [{i}]": sql for i, sql in enumerate(batch) if i}
        batch, _, _ = render_data_api_unit_load(merging, stage_copy, UNIT)
        out |= {f"data api unit merge {fmt} [{i}]": sql for i, sql in enumerate(batch) if i}
    return out


# A unit of three keys: two with today's date, one a backfill's two dates (two ledger groups).
UNIT = (
    UnitMember("K1", 3, ("2026-11-28",)),
    UnitMember("it's; DROP TABLE x --", 0, ("2026-11-28",)),
    UnitMember("K3", 5, ("2026-11-01", "2026-11-02")),
)


def test_a_unit_batch_binds_every_key_and_date_and_renders_only_its_own_numbers() -> None:
    merging = replace(SPEC, load_mode="merge", primary_key=("campaign_key", "event_date"))
    for spec in (SPEC, merging):
        batch, params, checks = render_data_api_unit_load(spec, COPIES["csv-zstd-None"], UNIT)
        assert batch[0] == render_lock_target(spec, "redshift") and batch[2].startswith("COPY ")
        assert batch[checks[0]] == (
            "SELECT 1 / CASE WHEN pg_last_copy_count() = 8 THEN 1 ELSE 0 END AS copied_rows_match"
        )
        assert "unit_rows_match" in batch[checks[1]]
        assert params == {
            "k1": "K1",
            "k2": "it's; DROP TABLE x --",
            "k3": "K3",
            "d1": "2026-11-28",
            "d2": "2026-11-01",
            "d3": "2026-11-02",
        }
        text = " ".join(batch)
        assert "DROP TABLE" not in text and "K3" not in text and "2026" not in text  # values only as parameters
        # The Data API refuses a parameter no statement of the batch references.
        for name in [*params, "dataset", "run_id", "loaded_at"]:
            assert re.search(rf":{name}\b", text), name


def test_a_full_unit_of_long_keys_and_a_year_of_dates_stays_within_the_data_api_limits() -> None:
    days = tuple(str(dt.date(2025, 1, 1) + dt.timedelta(days=d)) for d in range(365))
    members = [UnitMember(f"{i:0>64}", 10_000, days) for i in range(DATA_API_UNIT_KEYS)]
    merging = replace(SPEC, load_mode="merge", primary_key=("campaign_key", "event_date"))
    for spec in (SPEC, merging):
        batch, params, _ = render_data_api_unit_load(spec, COPIES["csv-zstd-None"], members)
        assert len(batch) <= DATA_API_MAX_STATEMENTS
        assert max(len(sql.encode()) for sql in batch) < DATA_API_MAX_SQL_BYTES
        assert len(params) == DATA_API_UNIT_KEYS + 365


def test_every_load_locks_its_target_first_as_redshift_documents_lock() -> None:
    """``LOCK [ TABLE ] table_name [, ...]`` (docs.aws.amazon.com/redshift/latest/dg/r_LOCK.html).

    sqlglot has no grammar for LOCK (it keeps it as an unparsed command), so the statement is checked against the
    documented form, and its table name parses in the redshift dialect as the target's schema and table.
    """
    merging = replace(SPEC, load_mode="merge", primary_key=("campaign_key", "event_date"))
    stage_copy = render_redshift_copy(merge_stage(merging), MANIFEST, ROLE, "zstd", None, "csv")
    for spec, copy_sql in ((SPEC, COPIES["csv-zstd-None"]), (merging, stage_copy)):
        lock = render_lock_target(spec, "redshift")
        batch, checks = render_data_api_load(spec, copy_sql)
        assert batch[0] == lock  # before any statement that reads or writes the target
        assert [batch[i].startswith("SELECT 1 / CASE") for i in checks] == [True, True]  # the checks moved with it
        match = re.fullmatch(r"LOCK (?P<table>\S+)", lock)
        assert match is not None, lock
        table = sqlglot.parse_one(f"SELECT 1 FROM {match['table']}", read="redshift").find(exp.Table)
        assert table is not None and (table.db, table.name) == ("analytics", "facts")


def parses_as_redshift(sql: str) -> bool:
    """One statement sqlglot's redshift dialect parses into a syntax tree (not an unparsed fallback command)."""
    try:
        parsed = sqlglot.parse(sql, read="redshift", error_level=sqlglot.ErrorLevel.RAISE)
    except sqlglot.errors.ParseError:
        return False
    return len(parsed) == 1 and parsed[0] is not None and not isinstance(parsed[0], exp.Command)


@pytest.mark.parametrize(("name", "sql"), sorted(statements().items()))
def test_every_redshift_statement_parses_in_the_redshift_dialect(name: str, sql: str) -> None:
    assert parses_as_redshift(sql), name


@pytest.mark.parametrize(
    "postgres_only",
    ["COPY t (a) FROM STDIN WITH (FORMAT csv, HEADER true)", "SELECT 1 FROM t WHERE a = ANY(%s) FOR UPDATE SKIP"],
)
def test_the_check_catches_syntax_only_postgresql_accepts(postgres_only: str) -> None:
    assert not parses_as_redshift(postgres_only)


# COPY parameters AWS documents (docs.aws.amazon.com/redshift/latest/dg/r_COPY.html and its parameter pages); for
# Parquet, the few that "COPY from columnar data formats" allows.
CSV_OPTIONS = {"IAM_ROLE", "FORMAT", "IGNOREHEADER", "MANIFEST", "ZSTD", "GZIP", "EMPTYASNULL", "TIMEFORMAT"}
CSV_OPTIONS |= {"DATEFORMAT", "COMPUPDATE", "STATUPDATE", "REGION"}
PARQUET_OPTIONS = {"IAM_ROLE", "FORMAT", "MANIFEST", "ACCEPTINVCHARS", "SERIALIZETOJSON"}


@pytest.mark.parametrize(("name", "sql"), sorted(COPIES.items()))
def test_every_copy_names_its_columns_and_uses_documented_options(name: str, sql: str) -> None:
    head, _, options = sql.partition(f"FROM '{MANIFEST}'")
    assert head.strip() == 'COPY "analytics"."facts" ("campaign_key", "event_date", "amount", "created_at", "note")'
    words = {line.split()[0] for line in options.strip().splitlines()}
    assert words <= (PARQUET_OPTIONS if name.startswith("parquet") else CSV_OPTIONS)
    if name.startswith("parquet"):
        assert re.search(r"^FORMAT AS PARQUET$", options, re.MULTILINE)
