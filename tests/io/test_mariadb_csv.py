"""MariaDB renders each row as the staged CSV record the parsed path writes: byte for byte, on generated rows."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.errors import KeyFailedError
from config.models import SourceConfig
from tasks.io.source import CopySession, SqlSource
from tasks.transforms.arrow import csv_read_options, csv_write_options
from tests.helpers.services import MYSQL_URL, unique

# Every type the server renders; "native" is the connectorx (Arrow) path's subset, the rest reads through the cursor.
COLUMNS = {
    "all": "id BIGINT PRIMARY KEY, i BIGINT, s TINYINT, d DOUBLE, x DECIMAL(38,10), y DECIMAL(65,30), "
    "day DATE, ts DATETIME(6), txt TEXT CHARACTER SET utf8mb4, lat VARCHAR(40) CHARACTER SET latin1",
    "native": "id BIGINT PRIMARY KEY, i BIGINT, d DOUBLE, day DATE, txt TEXT CHARACTER SET utf8mb4",
}
BIG = Decimal("9999999999999999999999999999.9999999999")


def maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "i": maybe(st.integers(-(2**63), 2**63 - 1)),
    "s": maybe(st.integers(-128, 127)),
    "d": maybe(
        st.floats(allow_nan=False, allow_infinity=False)
        | st.sampled_from([1e-7, 9.999999999999999e-7, 1e-6, 9999999999.999998, 1e10, 1e15, 0.1 + 0.2])
    ),
    "x": maybe(
        st.decimals(-BIG, BIG, places=10).filter(lambda v: abs(v) <= BIG)  # Decimal's 28-digit context rounds
        | st.decimals(Decimal("-0.0000009999"), Decimal("0.0000009999"), places=10)
    ),
    "y": maybe(st.decimals(Decimal("-1e34"), Decimal("1e34"), places=30).filter(lambda v: abs(v) < 10**35)),
    "day": maybe(st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31))),
    "ts": maybe(st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999))),
    "txt": maybe(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
        | st.sampled_from(["", '"', '""', "a,b", "line\nbreak", "cr\r\nlf", "\\N", "NULL", "ünïcødé 🎉"])
    ),
    "lat": maybe(st.text(st.sampled_from(list("ab ,\"'\n\\é")), max_size=8)),
}


@pytest.fixture(scope="module", params=list(COLUMNS))
def table(request: Any, mysql: Any) -> Any:
    name = unique("kf_csvrec")
    with mysql.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} ({COLUMNS[request.param]})")
    source = SqlSource(MYSQL_URL)
    schema = source.source_schema(SourceConfig(table=name, key_column="id"))
    yield name, schema, source, request.param
    with mysql.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def parsed_csv(source: SqlSource, sql: str, schema: pa.Schema) -> bytes:
    """What the parsed path stages: the rows as Arrow values, written by Arrow's CSV writer."""
    batches = list(source.stream(sql, {}, schema, 1000))
    table = pa.concat_tables(batches) if batches else schema.empty_table()
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, csv_write_options())
    return buf.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_server_rendered_record_is_the_parsed_paths_record(mysql: Any, table: Any, data: Any) -> None:
    name, schema, source, _ = table
    cols = [f.name for f in schema][1:]
    rows = data.draw(st.lists(st.tuples(*(VALUES[c] for c in cols)), max_size=30))
    with mysql.cursor() as cur:
        cur.execute(f"DELETE FROM {name}")
        if rows:
            marks = ",".join(["%s"] * len(schema))
            plain = [(i, *(format(v, "f") if isinstance(v, Decimal) else v for v in r)) for i, r in enumerate(rows)]
            cur.executemany(f"INSERT INTO {name} VALUES ({marks})", plain)
    sql = f"SELECT * FROM `{name}` ORDER BY id"
    if table[3] == "native":  # connectorx's binary read costs less than the server's text: parsed on purpose
        assert source.why_not_passthrough(sql, {}, schema) == (
            "connectorx reads every column in the binary protocol, cheaper than the server writing text"
        )
    else:
        assert source.why_not_passthrough(sql, {}, schema) is None
    session = CopySession()
    staged = b"".join(source.stream_csv(sql, {}, session, schema, 100))
    want = parsed_csv(source, sql, schema)
    assert staged == want
    assert session.streamed == len(rows)
    # Arrow's CSV reader has no decimal256: those columns are compared as their text (equal bytes above).
    readable = pa.schema([f.with_type(pa.string()) if pa.types.is_decimal256(f.type) else f for f in schema])
    read, parse, convert = csv_read_options(readable)
    back = pacsv.read_csv(io.BytesIO(staged), read_options=read, parse_options=parse, convert_options=convert)
    assert (
        back.to_pylist()
        == pacsv.read_csv(io.BytesIO(want), read_options=read, parse_options=parse, convert_options=convert).to_pylist()
    )


@pytest.mark.parametrize(
    ("column", "why"),
    [
        ("f FLOAT", "column 'f' is FLOAT on the source, staged as double: no exact text for it"),
        ("t TIME", "column 't' is TIME on the source, staged as string: no exact text for it"),
        ("b VARBINARY(8)", "column 'b' holds bytes (binary charset), not text"),
    ],
)
def test_a_column_type_without_an_exact_rendering_is_named(
    mysql: Any, names: dict[str, str], column: str, why: str
) -> None:
    name = names["src_table"]
    with mysql.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id BIGINT, {column})")
    try:
        source = SqlSource(MYSQL_URL)
        schema = source.source_schema(SourceConfig(table=name, key_column="id"))
        assert schema is not None
        assert source.why_not_passthrough(f"SELECT * FROM `{name}`", {}, schema) == why
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")


def test_a_value_the_server_cannot_render_fails_the_key_instead_of_staging_a_null(mysql: Any) -> None:
    """MySQL's string functions give NULL (a warning only) past ``max_allowed_packet``: a text of quotes that fits,
    doubled, does not. Without the check it was staged as an empty field, loaded as NULL, and the counts matched."""
    name = unique("kf_csvbig")
    with mysql.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.max_allowed_packet")
        before = cur.fetchone()[0]
        cur.execute(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, txt LONGTEXT CHARACTER SET utf8mb4)")
        cur.execute(f"INSERT INTO {name} VALUES (1, 'fine'), (2, %s), (3, NULL)", ('"' * 700_000,))
    try:
        with mysql.cursor() as cur:
            cur.execute("SET GLOBAL max_allowed_packet = 1048576")  # new sessions: the source's own connection
        # An engine of its own (engines are cached per URL): its connections are opened after the SET.
        source = SqlSource(MYSQL_URL + ("&" if "?" in MYSQL_URL else "?") + "connect_timeout=11")
        schema = source.source_schema(SourceConfig(table=name, key_column="id"))
        session = CopySession()
        with pytest.raises(KeyFailedError, match="row 2 of the key could not be rendered as CSV by the server"):
            b"".join(source.stream_csv(f"SELECT * FROM `{name}` ORDER BY id", {}, session, schema, 100))
        assert session.streamed is None  # no count reported for a key that failed
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"SET GLOBAL max_allowed_packet = {int(before)}")
            cur.execute(f"DROP TABLE IF EXISTS {name}")
