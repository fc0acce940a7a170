"""Source adapter on real PostgreSQL and MariaDB: exact types, streaming in batches, errors mapped to retry-or-fail."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from config.errors import ConfigError, KeyFailedError, RetryableError
from config.models import SourceConfig
from tasks.io.source import SqlSource
from tests.conftest import MYSQL_URL, PG_URL


@pytest.fixture()
def pg_table(pg: Any, names: dict[str, str]) -> Any:
    t = names["src_table"]
    with pg.cursor() as cur:
        cur.execute(
            f"""CREATE TABLE {t} (id bigint, k text, ts timestamptz, n numeric, s smallint, r real, v varchar(5))"""
        )
        cur.execute(
            f"INSERT INTO {t} SELECT g, CASE WHEN g % 2 = 0 THEN 'A' ELSE 'B' END, "
            "timestamptz '2024-01-01 10:00:00.5+02' + g * interval '1 minute', 123456789012345678901234567890.5, "
            "g % 100, 0.25, 'x' FROM generate_series(1, 2500) g"
        )
    yield t
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE {t}")


def test_postgres_types_and_batches(pg_table: str) -> None:
    src = SqlSource(PG_URL)
    cfg = SourceConfig(table=pg_table, key_column="k")
    schema = src.source_schema(cfg)
    assert schema is not None
    assert [str(f.type) for f in schema] == [
        "int64",
        "string",
        "timestamp[us, tz=UTC]",
        "string",
        "int16",
        "float",
        "string",
    ]  # unconstrained numeric stays text: every digit kept
    batches = list(src.stream(f'SELECT * FROM "{pg_table}" WHERE "k" = :key', {"key": "A"}, schema, 500))
    table = pa.Table.from_batches([b for t in batches for b in t.to_batches()])
    assert table.num_rows == 1250 and len(batches) > 1 and max(b.num_rows for b in batches) <= 500
    first = table.slice(0, 1).to_pylist()[0]
    assert first["ts"] == dt.datetime(2024, 1, 1, 8, 2, 0, 500000, tzinfo=dt.UTC)
    assert first["n"] == "123456789012345678901234567890.5"


def test_postgres_errors_fail_the_key_or_retry(pg_table: str) -> None:
    src = SqlSource(PG_URL)
    schema = pa.schema([("id", pa.int64())])
    with pytest.raises(KeyFailedError, match='extract from source: column "nope" does not exist'):
        list(src.stream(f'SELECT nope FROM "{pg_table}" WHERE k = :key', {"key": "A"}, schema, 100))
    down = SqlSource("postgresql+psycopg2://postgres@127.0.0.1:1/test")
    with pytest.raises(RetryableError, match="extract from source"):
        list(down.stream("SELECT 1 AS id WHERE :key = 'x'", {"key": "x"}, schema, 100))


def test_missing_table_and_columns_are_config_errors(pg_table: str) -> None:
    src = SqlSource(PG_URL)
    with pytest.raises(ConfigError, match="source.table: table 'no_such_table' does not exist"):
        src.source_schema(SourceConfig(table="no_such_table", key_column="k"))
    with pytest.raises(ConfigError, match=f"source.columns: not in table '{pg_table}': zz"):
        src.source_schema(SourceConfig(table=pg_table, key_column="k", columns=["id", "zz"]))


def test_mariadb_streams_exact_values(mysql: Any, names: dict[str, str]) -> None:
    t = names["src_table"]
    with mysql.cursor() as cur:
        cur.execute(
            f"CREATE TABLE {t} (id BIGINT, k VARCHAR(10), amount DECIMAL(38,10), d DATE, note TEXT) "
            "CHARACTER SET utf8mb4"
        )
        cur.executemany(
            f"INSERT INTO {t} VALUES (%s,%s,%s,%s,%s)",
            [
                (i, "A", Decimal("12345678901234567890.0123456789"), dt.date(2020, 1, i % 28 + 1), 'ü\t\n,"')
                for i in range(1, 1201)
            ],
        )
    try:
        src = SqlSource(MYSQL_URL)
        schema = src.source_schema(SourceConfig(table=t, key_column="k"))
        assert schema is not None and str(schema.field("amount").type) == "decimal128(38, 10)"
        batches = list(src.stream(f"SELECT * FROM `{t}` WHERE k = :key", {"key": "A"}, schema, 500))
        assert [b.num_rows for b in batches] == [500, 500, 200]
        row = batches[0].slice(0, 1).to_pylist()[0]
        assert row["amount"] == Decimal("12345678901234567890.0123456789") and row["note"] == 'ü\t\n,"'
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP TABLE {t}")
