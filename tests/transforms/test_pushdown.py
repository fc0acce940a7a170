"""Which rules the source computes (pure): placements, SQL text with bound values, the CSV record counter."""

from __future__ import annotations

import csv
import io
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import Rule
from tasks.transforms.csvscan import CsvRecordCounter
from tasks.transforms.pushdown import (
    PROBED_UP_TO,
    SourceCapabilities,
    arrow_case_map,
    arrow_whitespace,
    code_points,
    plan_pushdown,
    render_count_query,
    render_pushed_query,
)

PG = SourceCapabilities("postgres", utf8=True, pgcrypto_schema="public")
PG_NO_CRYPTO = SourceCapabilities("postgres", utf8=True)
MY = SourceCapabilities("mysql")
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("campaign_key", pa.string()),
        ("name", pa.string()),
        ("clicks", pa.int32()),
        ("imps", pa.int32()),
        ("ratio", pa.float64()),
        ("day", pa.date32()),
    ]
)


def rules(*items: dict[str, Any]) -> list[Rule]:
    return [Rule.model_validate(i) for i in items]


BENCH = rules(
    {"rename": {"name": "label"}},
    {"trim": ["label"]},
    {"lower": ["label"]},
    {"fill": {"campaign_key": "unknown"}},
    {"filter": {"column": "id", "op": ">", "value": 0}},
    {"derive": {"column": "ctr", "expr": {"div": ["clicks", "imps"]}, "type": "double"}},
    {"privacy": {"column": "label", "action": "mask", "keep_last": 2}},
    {"privacy": {"column": "campaign_key", "action": "hash", "salt_secret": "salt"}},
)


def test_every_rule_of_the_benchmark_kind_is_pushed_to_postgres_with_pgcrypto() -> None:
    push = plan_pushdown(BENCH, SCHEMA, PG)
    assert [p.where for p in push.placements] == ["source"] * 8
    assert push.client_rules == () and push.salts == ("salt",)
    assert push.schema.names == ["id", "campaign_key", "label", "clicks", "imps", "ratio", "day", "ctr"]
    assert push.schema.field("ctr").type == pa.float64()
    sql = render_pushed_query('SELECT * FROM "t" WHERE "campaign_key" = :key', push, "postgres")
    assert sql.startswith('SELECT "id" AS "id", encode("public".hmac(convert_to(COALESCE("campaign_key", ')
    assert 'FROM (SELECT * FROM "t" WHERE "campaign_key" = :key) AS kf_src WHERE ("id" > CAST(:kf_p' in sql
    assert "pg_temp.keyflow_salts" in sql
    # Every constant is a bound parameter: neither the fill value nor the secret's name is in the text.
    assert "unknown" not in sql and "'salt'" not in sql
    assert "unknown" in push.params.values() and "salt" in push.params.values()


def test_without_pgcrypto_the_hash_stays_on_the_client_and_says_why() -> None:
    push = plan_pushdown(BENCH, SCHEMA, PG_NO_CRYPTO)
    assert [p.where for p in push.placements] == ["source"] * 7 + ["client"]
    assert push.placements[-1].describe() == (
        "rules[7].privacy: client (a salted hash runs on the source only with PostgreSQL's pgcrypto installed)"
    )
    assert [i for i, _ in push.client_rules] == [7] and push.salts == ()


def test_mysql_keeps_trim_and_case_on_the_client_and_pushes_what_commutes_with_them() -> None:
    push = plan_pushdown(BENCH, SCHEMA, MY)
    where = {p.index: p.where for p in push.placements}
    # trim and lower stay (collations, whitespace); they never fail and keep every row, so the rules after them on
    # other columns still go to the source, except the mask of the trimmed column and the hash (no pgcrypto).
    assert [where[i] for i in range(8)] == [
        "source",
        "client",
        "client",
        "source",
        "source",
        "source",
        "client",
        "client",
    ]
    assert push.placements[6].reason == "reads or writes a column a client rule touches"


def test_a_client_rule_that_can_fail_keeps_every_later_rule_on_the_client() -> None:
    push = plan_pushdown(
        rules(
            {"cast": {"ratio": "integer"}},
            {"trim": ["name"]},
            {"filter": {"column": "id", "op": ">", "value": 0}},
        ),
        SCHEMA,
        PG,
    )
    assert [p.where for p in push.placements] == ["client"] * 3
    assert push.placements[1].reason == "follows a client rule that changes columns, rows or types, or could fail"


def test_integer_arithmetic_is_not_pushed_past_a_client_rule() -> None:
    push = plan_pushdown(
        rules(
            {"privacy": {"column": "name", "action": "encrypt", "key": "k"}},
            {"derive": {"column": "x", "expr": {"add": ["clicks", "imps"]}}},
            {"derive": {"column": "y", "expr": {"div": ["clicks", "imps"]}}},
        ),
        SCHEMA,
        PG,
    )
    assert [p.where for p in push.placements] == ["client", "client", "client"]
    assert push.placements[1].reason == "follows a client rule, and could fail or change columns"


def test_encryption_and_dedupe_stay_on_the_client_and_rules_after_them_too() -> None:
    push = plan_pushdown(
        rules(
            {"dedupe": {"on": ["id"]}},
            {"rename": {"name": "label"}},
            {"privacy": {"column": "campaign_key", "action": "encrypt", "key": "k"}},
        ),
        SCHEMA,
        PG,
    )
    assert [p.where for p in push.placements] == ["client"] * 3
    assert push.placements[0].reason == "keeps rows seen across batches"
    assert push.placements[1].reason == "follows a client rule that changes columns, rows or types, or could fail"


def test_a_total_client_rule_lets_later_rules_on_other_columns_through() -> None:
    push = plan_pushdown(
        rules(
            {"privacy": {"column": "name", "action": "encrypt", "key": "k"}},
            {"trim": ["campaign_key"]},
            {"filter": {"column": "clicks", "op": ">=", "value": 1}},
            {"lower": ["name"]},
        ),
        SCHEMA,
        PG,
    )
    assert [p.where for p in push.placements] == ["client", "source", "source", "client"]
    assert push.placements[3].reason == "reads or writes a column a client rule touches"


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"cast": {"ratio": "integer"}}, "cast of 'ratio' from double to int32 may round or parse differently"),
        ({"cast": {"id": "double"}}, "cast of 'id' from int64 to double may round or parse differently"),
        ({"derive": {"column": "x", "expr": {"div": ["ratio", "imps"]}}}, "division other than of 8-32-bit integers"),
        ({"derive": {"column": "x", "expr": {"add": ["ratio", "ratio"]}}}, "add of double, double"),
        ({"derive": {"column": "x", "expr": {"year": "day"}}}, "date parts: PostgreSQL counts years BC"),
        ({"derive": {"column": "x", "expr": {"concat": ["name", "ratio"]}}}, "concat of double"),
        ({"fill": {"clicks": 3_000_000_000}}, "value 3000000000 against a int32 column"),
        ({"fill": {"clicks": "3"}}, "value '3' against a int32 column"),
        ({"filter": {"column": "day", "op": "<", "value": "2020-01-01"}}, "comparison on a date32[day] column"),
        ({"filter": {"column": "ratio", "op": "in", "values": [1.5]}}, "comparison on a double column"),
        ({"trim": ["clicks"]}, "column 'clicks' is int32, not text"),
        ({"lower": ["nope"]}, "column 'nope' not found"),
        ({"privacy": {"column": "clicks", "action": "mask"}}, "column 'clicks' is int32, not text"),
    ],
)
def test_rules_whose_sql_result_could_differ_stay_on_the_client(rule: dict[str, Any], reason: str) -> None:
    push = plan_pushdown(rules(rule), SCHEMA, PG)
    assert push.placements[0].where == "client"
    assert push.placements[0].reason.startswith(reason)


def test_a_non_utf8_postgres_database_keeps_text_functions_on_the_client() -> None:
    push = plan_pushdown(rules({"trim": ["name"]}), SCHEMA, SourceCapabilities("postgres", utf8=False))
    assert push.placements[0].reason == "the source database's encoding is not UTF8"


def test_mysql_text_filters_compare_code_points_without_padding() -> None:
    push = plan_pushdown(rules({"filter": {"column": "name", "op": "==", "value": "a "}}), SCHEMA, MY)
    assert push.where == (
        "CONVERT(`name` USING utf8mb4) COLLATE utf8mb4_nopad_bin = "
        "CONVERT(CAST(:kf_p0 AS CHAR) USING utf8mb4) COLLATE utf8mb4_nopad_bin",
    )
    assert push.params == {"kf_p0": "a "}


def test_float_comparisons_keep_arrows_nan_semantics() -> None:
    push = plan_pushdown(rules({"filter": {"column": "ratio", "op": ">", "value": 1}}), SCHEMA, PG)
    assert push.where == (
        '"ratio" > CAST(:kf_p0 AS double precision) AND "ratio" <> CAST(\'NaN\' AS double precision)',
    )


def test_count_and_query_wrap_the_key_query_untouched() -> None:
    base = 'SELECT * FROM "s"."t" WHERE "k" = :key'
    assert render_count_query(base) == f"SELECT count(*) FROM ({base}) AS kf_src"
    push = plan_pushdown([], SCHEMA, PG)
    assert render_pushed_query(base, push, "postgres") == (
        'SELECT "id" AS "id", "campaign_key" AS "campaign_key", "name" AS "name", "clicks" AS "clicks", '
        f'"imps" AS "imps", "ratio" AS "ratio", "day" AS "day" FROM ({base}) AS kf_src'
    )


def test_arrows_whitespace_and_case_maps_are_probed_from_arrow() -> None:
    ws = arrow_whitespace()
    assert " " in ws and "\u3000" in ws and "\u00a0" in ws and "\u200b" not in ws
    frm, to = arrow_case_map(upper=False) or ("", "")
    assert len(frm) == len(to) > 1000 and to[frm.index("Ä")] == "ä" and "A" not in frm


def test_no_code_point_beyond_the_probed_planes_is_whitespace_or_changes_case_in_arrow() -> None:
    import pyarrow.compute as pc

    rest = code_points(PROBED_UP_TO, 0x110000)
    assert len(rest) == 0x110000 - PROBED_UP_TO
    for fn in (pc.utf8_lower, pc.utf8_upper, pc.utf8_trim_whitespace):
        assert pc.all(pc.equal(fn(rest), rest)).as_py()


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(st.one_of(st.none(), st.text(alphabet='a,"\n\r x', max_size=6)), min_size=1, max_size=3)),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
)
def test_records_are_counted_wherever_the_stream_is_cut(
    rows: list[list[str | None]], cuts: list[int], limit: int | None
) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    for r in rows:
        writer.writerow(["" if v is None else v for v in r])
    data = buf.getvalue().encode()
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    counter, total = CsvRecordCounter(), 0
    for chunk in chunks:
        while chunk:
            n, used = counter.feed(chunk, limit)
            assert 0 < used <= len(chunk) and (limit is None or n <= limit)
            if limit is not None and n == limit:
                assert chunk[used - 1 : used] == b"\n"  # a cut falls right after a record's end
            total += n
            chunk = chunk[used:]
    assert total == len(rows) and not counter.inside
