"""Source adapter on real PostgreSQL and MariaDB: exact types, streaming in batches, errors mapped to retry-or-fail."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from config.errors import ConfigError, KeyFailedError, RetryableError
from config.models import SourceConfig
from tasks.io.source import SqlSource
from tests.helpers.services import MYSQL_URL, PG_URL


@contextmanager
def mysql_table(
    mysql: Any, name: str, columns: str, rows: Sequence[Sequence[Any]] = (), options: str = ""
) -> Iterator[str]:
    """A MariaDB table for one test, with its rows; dropped afterwards whatever the test did."""
    with mysql.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} ({columns}) {options}")
        if rows:
            marks = ",".join(["%s"] * len(rows[0]))
            cur.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)
    try:
        yield name
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")


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
    rows = [
        (i, "A", Decimal("12345678901234567890.0123456789"), dt.date(2020, 1, i % 28 + 1), 'ü\t\n,"')
        for i in range(1, 1201)
    ]
    columns = "id BIGINT, k VARCHAR(10), amount DECIMAL(38,10), d DATE, note TEXT"
    with mysql_table(mysql, names["src_table"], columns, rows, "CHARACTER SET utf8mb4") as t:
        src = SqlSource(MYSQL_URL)
        schema = src.source_schema(SourceConfig(table=t, key_column="k"))
        assert schema is not None and str(schema.field("amount").type) == "decimal128(38, 10)"
        batches = list(src.stream(f"SELECT * FROM `{t}` WHERE k = :key", {"key": "A"}, schema, 500))
        assert [b.num_rows for b in batches] == [500, 500, 200]
        row = batches[0].slice(0, 1).to_pylist()[0]
        assert row["amount"] == Decimal("12345678901234567890.0123456789") and row["note"] == 'ü\t\n,"'


NASTY = ["ü\t\n,\"'\\", "", "🙂 utf8mb4", "x'); DROP TABLE t; --", None, " lead/trail ", "NULL"]


def test_mariadb_plain_tables_take_the_arrow_path_with_the_cursor_paths_values(
    mysql: Any, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Integers, doubles, text and dates come through connectorx; every value equals what the cursor path gives."""
    import connectorx

    import tasks.io.source as source_module

    rows = [
        (
            [-(2**63), 2**63 - 1, 0, None][i % 4] if i < 8 else i,
            "x'); DROP TABLE t; --" if i % 3 else "A",
            [-(2**31), 2**31 - 1, None, 7][i % 4],
            [-32768, 32767, None][i % 3],
            [-128, 127, None][i % 3],
            [dt.date(1000, 1, 1), dt.date(9999, 12, 31), None, dt.date(2020, 2, 29)][i % 4],
            [0.1, -1e308, 5e-324, None, 1 / 3][i % 5],
            NASTY[i % len(NASTY)],
        )
        for i in range(1500)
    ]
    calls = []
    real = connectorx.read_sql
    monkeypatch.setattr(connectorx, "read_sql", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    columns = "id BIGINT, k VARCHAR(40), i INT, s SMALLINT, ti TINYINT, d DATE, x DOUBLE, note TEXT"
    options = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    with mysql_table(mysql, names["src_table"], columns, rows, options) as t:
        src = SqlSource(MYSQL_URL)
        schema = src.source_schema(SourceConfig(table=t, key_column="k"))
        assert source_module.arrow_native_mysql(schema)
        sql = f"SELECT * FROM `{t}` WHERE k = :key ORDER BY id"
        for key in ("x'); DROP TABLE t; --", "A", "nobody"):
            fast = list(src.stream(sql, {"key": key}, schema, 400))
            cursor = list(src._stream_cursor(sql, {"key": key}, schema, 400))
            assert all(b.num_rows <= 400 for b in fast) and all(b.schema == schema for b in fast)
            got = pa.Table.from_batches([b for t_ in fast for b in t_.to_batches()], schema)
            want = pa.Table.from_batches([b for t_ in cursor for b in t_.to_batches()], schema)
            assert got.to_pylist() == want.to_pylist()
            assert got.num_rows == sum(1 for r in rows if r[1] == key)
        assert len(calls) == 3 and "DROP TABLE t" in calls[0]  # the key was escaped into the SQL, not run
        with mysql.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {t}")
            assert cur.fetchone()[0] == 1500


def test_mariadb_arrow_path_falls_back_to_the_cursor_for_float_columns(mysql: Any, names: dict[str, str]) -> None:
    """A FLOAT arrives as float32: widening it would not give the cursor's values, so the key reads by cursor."""
    rows = [(i, "A", 0.1 * i) for i in range(50)]
    with mysql_table(mysql, names["src_table"], "id BIGINT, k VARCHAR(4), f FLOAT", rows) as t:
        src = SqlSource(MYSQL_URL)
        schema = src.source_schema(SourceConfig(table=t, key_column="k"))
        sql = f"SELECT * FROM `{t}` WHERE k = :key ORDER BY id"
        got = pa.concat_tables(list(src.stream(sql, {"key": "A"}, schema, 100)))
        want = pa.concat_tables(list(src._stream_cursor(sql, {"key": "A"}, schema, 100)))
        assert got.to_pylist() == want.to_pylist() and got.column("f")[1].as_py() == 0.1


def test_mariadb_arrow_path_errors_fail_or_retry_without_the_password(mysql: Any, names: dict[str, str]) -> None:
    with mysql_table(mysql, names["src_table"], "id BIGINT, k VARCHAR(4)") as t:
        src = SqlSource(MYSQL_URL)
        schema = pa.schema([("id", pa.int64()), ("k", pa.string())])
        with pytest.raises(KeyFailedError, match="extract from source: .*nope") as failed:
            list(src.stream(f"SELECT nope, k FROM `{t}` WHERE k = :key", {"key": "A"}, schema, 100))
        assert "Traceback" not in str(failed.value)
        down = SqlSource("mysql+pymysql://root@127.0.0.1:1/test", password="s3cret-Sentinel")
        with pytest.raises(RetryableError) as retry:
            list(down.stream("SELECT 1 AS id, 'A' AS k WHERE :key = 'A'", {"key": "A"}, schema, 100))
        assert "s3cret-Sentinel" not in str(retry.value)


# -- a table's size from its statistics (issue 15: the default split) -------------------------------------------------


def test_postgres_table_size_from_statistics_or_a_sample(pg: Any, names: dict[str, str]) -> None:
    """Analyzed, never analyzed (autovacuum off: no statistics, a sample), partitioned (its leaves summed), absent."""
    t = names["src_table"]
    fill = "SELECT g, 'K', repeat('x', 100) FROM generate_series(1, 2000) g"
    with pg.cursor() as cur:
        cur.execute(f"CREATE TABLE {t}_a (id bigint PRIMARY KEY, k text, payload text)")
        cur.execute(f"INSERT INTO {t}_a {fill}")
        cur.execute(f"ANALYZE {t}_a")
        cur.execute(f"CREATE TABLE {t}_n (id bigint, k text, payload text) WITH (autovacuum_enabled = false)")
        cur.execute(f"INSERT INTO {t}_n {fill}")
        cur.execute(f"CREATE TABLE {t}_p (id bigint, k text, payload text) PARTITION BY RANGE (id)")
        cur.execute(f"CREATE TABLE {t}_p1 PARTITION OF {t}_p FOR VALUES FROM (0) TO (1000)")
        cur.execute(f"CREATE TABLE {t}_p2 PARTITION OF {t}_p FOR VALUES FROM (1000) TO (3000)")
        cur.execute(f"INSERT INTO {t}_p {fill}")
        cur.execute(f"ANALYZE {t}_p")
    try:
        src = SqlSource(PG_URL)
        sizes = {s: src.table_size(SourceConfig(table=f"{t}_{s}", key_column="k")) for s in "anp"}
        for s, size in sizes.items():
            assert size is not None, s
            assert 2000 * 100 < size.bytes < 2000 * 400, (s, size)  # 2,000 rows of about 140 bytes as stored
            assert 100 < size.row_bytes < 400, (s, size)
        assert src.table_size(SourceConfig(table=f"{t}_gone", key_column="k")) is None
        assert src.primary_key(SourceConfig(table=f"{t}_a", key_column="k")) == "id"
        assert src.primary_key(SourceConfig(table=f"{t}_n", key_column="k")) is None
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {t}_a, {t}_n, {t}_p")


def test_mariadb_table_size_from_information_schema(mysql: Any, names: dict[str, str]) -> None:
    rows = [(i, "K", "x" * 100) for i in range(1, 2001)]
    with mysql_table(mysql, names["src_table"], "id BIGINT PRIMARY KEY, k VARCHAR(8), payload TEXT", rows) as t:
        with mysql.cursor() as cur:
            cur.execute(f"ANALYZE TABLE {t}")
        src = SqlSource(MYSQL_URL)
        size = src.table_size(SourceConfig(table=t, key_column="k"))
        assert size is not None and 2000 * 100 < size.bytes < 2000 * 400 and 100 < size.row_bytes < 400, size
        assert src.table_size(SourceConfig(table=f"{t}_gone", key_column="k")) is None
