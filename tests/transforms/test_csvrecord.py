"""Which columns MariaDB renders as staged CSV, and the reason a user reads when one is not. Pure."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.transforms.csvrecord import csv_header, render_record_query, why_not_rendered

SCHEMA = pa.schema([("id", pa.int64()), ("amount", pa.decimal128(38, 10)), ("title", pa.string())])


def test_covered_columns_give_no_reason() -> None:
    assert why_not_rendered(SCHEMA, [8, 246, 252], [0, 10, None], {"title": "utf8mb4"}) is None


@pytest.mark.parametrize(
    ("schema", "codes", "scales", "charsets", "why"),
    [
        (SCHEMA, [8, 246], [0, 10], {}, "the query returns 2 columns, the target has 3"),
        (
            SCHEMA,
            [8, 246, 252],
            [0, 4, None],
            {"title": "utf8mb4"},
            "column 'amount' has scale 4 on the source, 10 staged",
        ),
        (
            SCHEMA,
            [8, 246, 252],
            [0, 10, None],
            {"title": "binary"},
            "column 'title' holds bytes (binary charset), not text",
        ),
        (
            SCHEMA,
            [13, 246, 252],
            [0, 10, None],
            {"title": "latin1"},
            "column 'id' is YEAR on the source, staged as int64: no exact text for it",
        ),
        (
            pa.schema([("ok", pa.bool_())]),
            [1],
            [0],
            {},
            "column 'ok' is staged as bool, which MariaDB cannot write as Arrow does",
        ),
        (
            pa.schema([("at", pa.timestamp("us", tz="UTC"))]),
            [7],
            [0],
            {},
            "column 'at' is staged as timestamp[us, tz=UTC], which MariaDB cannot write as Arrow does",
        ),
    ],
)
def test_an_uncovered_column_is_named_with_the_reason(
    schema: pa.Schema, codes: list[int], scales: list[int | None], charsets: dict[str, str], why: str
) -> None:
    assert why_not_rendered(schema, codes, scales, charsets) == why


def test_the_record_query_wraps_the_key_query_and_the_header_is_arrows() -> None:
    sql = render_record_query("SELECT * FROM t WHERE k = :key", SCHEMA)
    assert sql.startswith("SELECT CAST(CONVERT(CONCAT(IF(kf_rec.`id` IS NULL, '', CAST(kf_rec.`id` AS CHAR)), ',', ")
    assert sql.endswith(" USING utf8mb4) AS BINARY) FROM (SELECT * FROM t WHERE k = :key) AS kf_rec")
    assert csv_header(SCHEMA.names) == b'"id","amount","title"\n'
