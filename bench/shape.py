"""The reference workload: a 600-column campaign table shaped like the original (built in SQL, fast)."""

from __future__ import annotations

INT_COLS = 199
DOUBLE_COLS = 198
TEXT_COLS = 198
KEYS = ("MCS2017", "SPRING17", "VIP17")
ROWS_PER_KEY = 21_667


def column_names() -> list[str]:
    return (
        ["id", "campaign_key", "start_date", "end_date", "sku"]
        + [f"i{n:03d}" for n in range(INT_COLS)]
        + [f"d{n:03d}" for n in range(DOUBLE_COLS)]
        + [f"t{n:03d}" for n in range(TEXT_COLS)]
    )


def create_table_sql(table: str, dialect: str = "postgres") -> str:
    double = "DOUBLE PRECISION" if dialect == "postgres" else "DOUBLE"
    cols = [
        "id BIGINT PRIMARY KEY",
        "campaign_key VARCHAR(32) NOT NULL",
        "start_date DATE",
        "end_date DATE",
        "sku VARCHAR(16)",
    ]
    cols += [f"i{n:03d} INTEGER" for n in range(INT_COLS)]
    cols += [f"d{n:03d} {double}" for n in range(DOUBLE_COLS)]
    cols += [f"t{n:03d} VARCHAR(16)" for n in range(TEXT_COLS)]
    tail = " ROW_FORMAT=DYNAMIC" if dialect == "mysql" else ""
    return f"CREATE TABLE {table} (\n  " + ",\n  ".join(cols) + f"\n){tail}"


def pg_fill_sql(table: str, key: str, first_id: int, rows: int) -> str:
    """INSERT … SELECT over generate_series: deterministic values, some NULLs, no two columns alike."""
    exprs = [
        "g",
        f"'{key}'",
        "DATE '2017-03-01'",
        "DATE '2017-03-31'",
        "'SKU-' || lpad((g % 10000)::text, 5, '0')",
    ]
    exprs += [
        f"CASE WHEN (g + {n}) % 97 = 0 THEN NULL ELSE ((g * {n + 7}) % 1000003)::int END" for n in range(INT_COLS)
    ]
    exprs += [f"((g * {n + 3}) % 100003) / 7.0::float8" for n in range(DOUBLE_COLS)]
    exprs += [f"'t{n}-' || (g % {n + 11})::text" for n in range(TEXT_COLS)]
    return (
        f"INSERT INTO {table} SELECT "
        + ", ".join(exprs)
        + f" FROM generate_series({first_id}, {first_id + rows - 1}) AS g"
    )
