"""SQL text: quoted identifiers, bound values, Redshift COPY as it will run (tested as text)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import SourceConfig
from config.types import parse_type
from tasks.transforms.sql import (
    TableSpec,
    quote_ident,
    render_create_table,
    render_delete_key,
    render_key_query,
    render_redshift_copy,
)
from tasks.transforms.staging import key_prefix, key_segment

SPEC = TableSpec(
    schema="analytics",
    table="facts",
    key_column="campaign_key",
    columns=(
        ("campaign_key", parse_type("varchar(32)"), False),
        ("event_date", parse_type("date"), True),
        ("amount", parse_type("decimal(50,10)"), True),
        ("note", parse_type("text"), True),
    ),
    distkey="campaign_key",
    sortkey=("event_date",),
)


@pytest.mark.parametrize("bad", ['a"b', "a;drop", "1abc", "naïve", "a b", "", "x" * 64, "A\n"])
def test_unsafe_identifiers_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unsafe identifier"):
        quote_ident(bad, "postgres")


def test_key_query_binds_values() -> None:
    src = SourceConfig(table="facts", key_column="campaign_key", date_column="event_date")
    assert render_key_query(src, "postgres") == (
        'SELECT * FROM "facts" WHERE "campaign_key" = :key AND "event_date" >= :start_date '
        'AND "event_date" <= :end_date'
    )
    src = SourceConfig(table="facts", schema="mkt", key_column="k", columns=["k", "v"])
    assert render_key_query(src, "mysql") == "SELECT `k`, `v` FROM `mkt`.`facts` WHERE `k` = :key"


def test_redshift_ddl_has_distkey_sortkey_and_bounded_types() -> None:
    assert render_create_table(SPEC, "redshift") == (
        'CREATE TABLE IF NOT EXISTS "analytics"."facts" (\n'
        '  "campaign_key" VARCHAR(32) NOT NULL,\n'
        '  "event_date" DATE,\n'
        '  "amount" DECIMAL(38,10),\n'
        '  "note" VARCHAR(65535)\n'
        ")\n"
        'DISTSTYLE KEY DISTKEY ("campaign_key")\n'
        'COMPOUND SORTKEY ("event_date")'
    )
    assert "DISTKEY" not in render_create_table(SPEC, "postgres")
    assert '"amount" DECIMAL(50,10)' in render_create_table(SPEC, "postgres")


def test_redshift_copy_from_manifest_with_iam_role() -> None:
    sql = render_redshift_copy(
        SPEC,
        "s3://bucket/staging/facts/run-1/MCS2017/manifest.json",
        "arn:aws:iam::123456789012:role/copy",
        "zstd",
        "eu-west-1",
    )
    assert sql == (
        'COPY "analytics"."facts" ("campaign_key", "event_date", "amount", "note")\n'
        "FROM 's3://bucket/staging/facts/run-1/MCS2017/manifest.json'\n"
        "IAM_ROLE 'arn:aws:iam::123456789012:role/copy'\n"
        "FORMAT AS CSV\n"
        "IGNOREHEADER 1\n"
        "MANIFEST\n"
        "ZSTD\n"
        "EMPTYASNULL\n"
        "TIMEFORMAT 'auto'\n"
        "DATEFORMAT 'auto'\n"
        "COMPUPDATE OFF\n"
        "STATUPDATE OFF\n"
        "REGION 'eu-west-1'"
    )
    gz = render_redshift_copy(SPEC, "s3://b/it's/manifest.json", "arn:r", "gzip")
    assert "FROM 's3://b/it''s/manifest.json'" in gz and "\nGZIP\n" in gz and "REGION" not in gz


def test_delete_binds_the_key() -> None:
    assert render_delete_key(SPEC, "postgres") == 'DELETE FROM "analytics"."facts" WHERE "campaign_key" = %s'


@pytest.mark.parametrize(
    ("key", "segment"),
    [
        ("MCS2017", "MCS2017"),
        ("a/b", "a%2Fb"),
        ("..", "%2E%2E"),
        ("x'); drop table t; --", "x%27%29%3B%20drop%20table%20t%3B%20--"),
    ],
)
def test_key_becomes_one_safe_path_segment(key: str, segment: str) -> None:
    assert key_segment(key) == segment
    assert key_prefix("staging/", "facts", "run-1", key) == f"staging/facts/run-1/{segment}/"


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=80))
def test_any_identifier_is_refused_or_quoted_plainly(name: str) -> None:
    """Whatever text a YAML file holds, it either fails or comes back as a plain quoted ASCII identifier."""
    try:
        quoted = quote_ident(name, "postgres")
    except ValueError:
        return
    assert quoted == f'"{name}"' and name.isascii() and name.replace("_", "a").isalnum() and len(name) <= 63


@pytest.mark.parametrize(
    ("value", "safe"),
    [("=HYPERLINK(1)", "'=HYPERLINK(1)"), ("+33612", "'+33612"), ("-1", "'-1"), ("@SUM", "'@SUM"), ("ok", "ok")],
)
def test_spreadsheet_exports_neutralise_formulas(value: str, safe: str) -> None:
    from tasks.transforms.exports import spreadsheet_safe

    assert spreadsheet_safe(value) == safe
