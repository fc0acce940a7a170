"""Source database adapter (PostgreSQL, MySQL/MariaDB, SQLite) through SQLAlchemy, streaming Arrow batches."""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from config.errors import ConfigError, KeyFailedError, RetryableError, first_line
from config.models import SourceConfig
from config.types import ColumnType
from tasks.io.databases import (
    describe_url,
    dialect_of,
    engine_for,
    is_disconnect,
    translate_db_error,
    unpooled_engine,
)
from tasks.transforms.arrow import csv_read_options, rows_to_table
from tasks.transforms.csvrecord import (
    csv_header,
    render_charset_query,
    render_metadata_query,
    render_record_query,
    why_not_rendered,
)
from tasks.transforms.keys import CampaignKey
from tasks.transforms.pushdown import SALT_TABLE, SourceCapabilities
from tasks.transforms.split import (
    MYSQL_TABLE_SIZE,
    PG_SAMPLE_ROW_BYTES,
    PG_TABLE_SIZE,
    TableSize,
    boundary_offsets,
    boundary_query,
    count_query,
    pg_table_size,
    ranges_wanted,
)
from tasks.transforms.sql import qualified, render_count_keys_query
from tasks.transforms.types import arrow_type
from tasks.transforms.units import key_windows, window_params

MAX_BATCH_CELLS = 500_000
COUNT_CHUNK = 1_000  # keys counted per GROUP BY query
TABLE_FACTS_SECONDS = 60.0  # how long a table's size and primary key are reused (a run's keys ask for them each)


@dataclass
class CopySession:
    """What one extraction does on the source besides its query, and what the source counted.

    ``salts`` fill the session's salt table a pushed hash reads (as data, never in SQL text); ``count_sql`` counts
    the key's rows before the pushed filters, in the same snapshot as the extraction on PostgreSQL and on a
    MySQL/MariaDB passthrough (a separate statement just before it on MySQL/MariaDB's parsed path); the count lands
    in ``extracted``.
    """

    salts: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    count_sql: str | None = None
    extracted: int | None = None
    streamed: int | None = None  # rows the source sent as CSV records (MySQL/MariaDB passthrough), checked on staging
    snapshot: str | None = None  # PostgreSQL: an exported snapshot the extraction reads (a split key's ranges share it)


class SplitPlan:
    """A big key's split, planned on the source: its rows, its split column's quantiles, the snapshot to share.

    On PostgreSQL the planning transaction (REPEATABLE READ) counts the key, samples the boundaries and exports its
    snapshot (``pg_export_snapshot``); it stays open until :meth:`close`, so every range can import it. ``snapshot``
    is None when the ranges read their own snapshots (MySQL/MariaDB, or the export failed: ``why_no_snapshot``).
    """

    def __init__(
        self, rows: int, boundaries: list[Any], snapshot: str | None, why_no_snapshot: str, conn: Any = None
    ) -> None:
        self.rows = rows
        self.boundaries = boundaries
        self.snapshot = snapshot
        self.why_no_snapshot = why_no_snapshot
        self._conn = conn

    def close(self) -> None:
        """End the planning transaction (after the last range has read the snapshot); idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class SourceDatabase(Protocol):
    """A database that can stream one key's rows as Arrow tables."""

    dialect: str
    text_native: bool

    def source_schema(self, source: SourceConfig) -> pa.Schema | None:
        """Arrow schema of the source table (``None`` for a query source: types come from target.columns)."""

    def stream(
        self,
        sql: str,
        params: Mapping[str, Any],
        schema: pa.Schema | None,
        batch_rows: int,
        session: CopySession | None = None,
    ) -> Iterator[pa.Table]:
        """Run ``sql`` with bound ``params`` and yield the rows as Arrow tables of at most ``batch_rows``."""

    def stream_csv(
        self,
        sql: str,
        params: Mapping[str, Any],
        session: CopySession | None = None,
        schema: pa.Schema | None = None,
        batch_rows: int = 10_000,
    ) -> Iterator[bytes]:
        """The query's rows as staged CSV bytes (a header line first), never parsed on the way."""

    def why_not_passthrough(self, sql: str, params: Mapping[str, Any], schema: pa.Schema) -> str | None:
        """Why this query's rows should not pass through as the source's own CSV (``None``: they should)."""

    def capabilities(self) -> SourceCapabilities:
        """What the source computes exactly (for the rules pushed into the extraction query)."""

    def count_keys(self, source: SourceConfig, keys: Sequence[CampaignKey]) -> dict[str, int]:
        """Rows per key on the source, each key within its own dates (a key without rows is absent)."""

    def split_column(self, source: SourceConfig) -> str:
        """``source.split_column``, or the table's single-column primary key (a ``ConfigError`` without one)."""

    def primary_key(self, source: SourceConfig) -> str | None:
        """The table's single-column primary key, or None (none, or one of several columns)."""

    def table_size(self, source: SourceConfig) -> TableSize | None:
        """The table's bytes and average row bytes from the database's statistics (None: not known)."""

    def plan_split(
        self, key_sql: str, params: Mapping[str, Any], split_rows: int, column: str, shared_snapshot: bool = True
    ) -> SplitPlan:
        """A key's rows and ``column``'s quantiles within it; the caller closes the plan once its ranges ran."""

    def check(self, source: SourceConfig) -> list[str]:
        """Problems with the source before a run, one line each (the table and the columns the dataset names)."""

    def ping(self) -> None:
        """Connect and run ``SELECT 1``; errors translated."""


def column_type(t: Any) -> ColumnType:
    """The keyflow type of a reflected SQLAlchemy column type."""
    name = type(t).__name__.upper()
    if isinstance(t, sa.Boolean):
        return ColumnType("boolean")
    if isinstance(t, sa.SmallInteger) or name in ("TINYINT", "SMALLINT"):
        return ColumnType("smallint")
    if isinstance(t, sa.BigInteger):
        return ColumnType("bigint")
    if isinstance(t, sa.Integer):
        return ColumnType("integer")
    if isinstance(t, sa.Float) or name in ("DOUBLE", "DOUBLE_PRECISION", "REAL"):
        return ColumnType("real" if name in ("REAL", "FLOAT4") else "double")
    if isinstance(t, sa.Numeric):
        if t.precision is None:
            return ColumnType("text")  # unconstrained NUMERIC: text keeps every digit
        return ColumnType("decimal", precision=t.precision, scale=t.scale or 0)
    if isinstance(t, sa.DateTime):
        return ColumnType("timestamptz" if getattr(t, "timezone", False) else "timestamp")
    if isinstance(t, sa.Date):
        return ColumnType("date")
    return ColumnType("text")


# Types connectorx reads from MySQL/MariaDB exactly as keyflow types them; any other column (DECIMAL, time zones,
# booleans, bytes) keeps the table on the cursor path. connectorx is optional: without it every table does.
_ARROW_NATIVE_MYSQL = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_date32)


def _exact_casts(got: pa.Schema, want: pa.Schema) -> bool:
    """Does every column arrive as the wanted type, or as a narrower integer that widens without loss?"""
    if got.names != want.names:
        return False
    for g, w in zip(got.types, want.types, strict=True):
        if g == w or (pa.types.is_integer(g) and pa.types.is_integer(w) and g.bit_width <= w.bit_width):
            continue
        if pa.types.is_large_string(g) and pa.types.is_string(w):
            continue
        return False
    return True


def arrow_native_mysql(schema: pa.Schema | None) -> bool:
    """Can a MySQL/MariaDB table of this Arrow schema be read through connectorx's Arrow stream?"""
    if schema is None or not all(any(ok(f.type) for ok in _ARROW_NATIVE_MYSQL) for f in schema):
        return False
    try:
        import connectorx  # noqa: F401
    except ImportError:
        return False
    return True


def _release(raw: Any) -> None:
    """Give a raw pooled connection back after a COPY: rolled back, or discarded when its server dropped it.

    A rollback on a dead connection raises ``connection already closed``, which would hide the error that killed
    it (the one that says the key can be retried); the dead connection is invalidated so the pool never hands it
    out again.
    """
    try:
        raw.rollback()
    except Exception as exc:
        if not is_disconnect(exc):
            raw.close()
            raise
        raw.invalidate(exc)
        return
    raw.close()


class SqlSource:
    """A source database reached through SQLAlchemy; rows stream with a server-side cursor."""

    def __init__(self, url: str, password: str | None = None, pool_size: int = 4) -> None:
        self.engine = engine_for(url, password, pool_size)
        self.where = describe_url(self.engine.url)  # user@host:port/db, for error messages
        self.dialect = dialect_of(self.engine)
        # PostgreSQL streams CSV text (COPY), so a column can be asked for as text and passed on untouched.
        self.text_native = self.dialect == "postgres"
        self._caps: SourceCapabilities | None = None
        self._facts: dict[tuple[str, str | None, str | None], tuple[float, Any]] = {}
        self._facts_lock = threading.Lock()
        self._planning: sa.Engine | None = None

    def capabilities(self) -> SourceCapabilities:
        """What the source computes exactly: its dialect, a UTF8 encoding, pgcrypto (on a primary, in PostgreSQL).

        Asked once per adapter; a pushed hash needs a temporary table, which a hot standby cannot create.
        """
        if self._caps is not None:
            return self._caps
        caps = SourceCapabilities(self.dialect if self.dialect in ("postgres", "mysql") else "none", utf8=False)
        if self.dialect == "postgres":
            try:
                with self.engine.connect() as conn:
                    encoding = conn.execute(sa.text("SHOW server_encoding")).scalar()
                    standby = conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar()
                    crypto = conn.execute(
                        sa.text(
                            "SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace "
                            "WHERE e.extname = 'pgcrypto'"
                        )
                    ).scalar()
            except sa_exc.SQLAlchemyError as exc:
                raise translate_db_error(exc, "read source capabilities", self.where) from None
            caps = SourceCapabilities("postgres", utf8=encoding == "UTF8", pgcrypto_schema=None if standby else crypto)
        elif self.dialect == "mysql":
            caps = SourceCapabilities("mysql", utf8=True)
        self._caps = caps
        return caps

    def source_schema(self, source: SourceConfig) -> pa.Schema | None:
        """Arrow schema of the source table (``None`` for a query source: types come from target.columns)."""
        if source.table is None:
            return None
        by_name, problems = self._table_columns(source)
        if problems:
            raise ConfigError(problems)
        wanted = list(source.columns) if source.columns else list(by_name)
        return pa.schema([(n, arrow_type(column_type(by_name[n]["type"]))) for n in wanted])

    def check(self, source: SourceConfig) -> list[str]:
        """Problems with the source before a run, one line each.

        The database reached, the table there with every column the dataset names (key, date, selected columns).
        Connection trouble raises :class:`RetryableError`, a wrong password or an unknown host :class:`ConfigError`.
        """
        if source.table is None:
            self.ping()
            return []
        return self._table_columns(source)[1]

    def ping(self) -> None:
        """Connect and run ``SELECT 1``; errors translated (a wrong password is a ``ConfigError``)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "connect to source", self.where) from None

    def _table_columns(self, source: SourceConfig) -> tuple[dict[str, Any], list[str]]:
        """The table's reflected columns by name, and what the dataset names that is not there."""
        assert source.table is not None
        try:
            cols = sa.inspect(self.engine).get_columns(source.table, schema=source.db_schema)
        except sa_exc.NoSuchTableError:
            where = f"{source.db_schema}.{source.table}" if source.db_schema else source.table
            return {}, [f"source.table: table {where!r} does not exist in the source database ({self.where})"]
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "read source table columns", self.where) from None
        by_name = {c["name"]: c for c in cols}
        problems = []
        missing = [c for c in source.columns or [] if c not in by_name]
        if missing:
            problems.append(f"source.columns: not in table {source.table!r}: {', '.join(missing)}")
        for field in ("key_column", "date_column"):
            column = getattr(source, field)
            if column and column not in by_name:
                problems.append(f"source.{field}: {column!r} is not a column of {source.table!r}")
        return by_name, problems

    def _table_fact(self, what: str, source: SourceConfig, read: Any) -> Any:
        """``read()``, reused for a minute per table: every key of a run asks for the same table's facts."""
        cache_key = (what, source.db_schema, source.table)
        now = time.monotonic()
        with self._facts_lock:
            hit = self._facts.get(cache_key)
        if hit is not None and now - hit[0] < TABLE_FACTS_SECONDS:
            return hit[1]
        value = read()
        with self._facts_lock:
            self._facts[cache_key] = (now, value)
        return value

    def primary_key(self, source: SourceConfig) -> str | None:
        """The table's single-column primary key, or None (none, or one of several columns)."""
        table = source.table
        assert table is not None

        def read() -> str | None:
            try:
                pk = sa.inspect(self.engine).get_pk_constraint(table, schema=source.db_schema)
            except sa_exc.SQLAlchemyError as exc:
                raise translate_db_error(exc, "read the source table's primary key", self.where) from exc
            cols = list(pk.get("constrained_columns") or [])
            return str(cols[0]) if len(cols) == 1 else None

        column: str | None = self._table_fact("primary key", source, read)
        return column

    def split_column(self, source: SourceConfig) -> str:
        """``source.split_column``, or the table's single-column primary key (a ``ConfigError`` without one)."""
        if source.split_column:
            return source.split_column
        column = self.primary_key(source)
        if column is None:
            raise ConfigError(
                f"source.split_rows: table {source.table!r} has no single-column primary key to split keys on "
                "(set source.split_column)"
            )
        return column

    def table_size(self, source: SourceConfig) -> TableSize | None:
        """The table's bytes and average row bytes from the database's statistics (None: not known).

        PostgreSQL: ``pg_table_size`` now, and the pages and rows its last ANALYZE or VACUUM counted (a table never
        analyzed: the average of a 1,000-row sample); MySQL/MariaDB: ``information_schema.TABLES``' DATA_LENGTH and
        AVG_ROW_LENGTH. Other databases: None.
        """
        assert source.table is not None
        if self.dialect not in ("postgres", "mysql"):
            return None

        def read() -> TableSize | None:
            try:
                with self.engine.connect() as conn:
                    if self.dialect == "mysql":
                        row = conn.execute(
                            sa.text(MYSQL_TABLE_SIZE), {"schema": source.db_schema, "table": source.table}
                        ).first()
                        return None if row is None else TableSize(int(row[0] or 0), int(row[1] or 0))
                    name = qualified(source.db_schema, source.table or "", "postgres")
                    row = conn.execute(sa.text(PG_TABLE_SIZE), {"name": name}).one()
                    size = pg_table_size(row)
                    if size is not None and size.row_bytes <= 0 and size.bytes > 0:
                        sample = conn.execute(sa.text(PG_SAMPLE_ROW_BYTES.format(table=name))).scalar()
                        size = pg_table_size(row, sample)
                    return size
            except sa_exc.SQLAlchemyError as exc:
                raise translate_db_error(exc, "read the source table's size", self.where) from exc

        size: TableSize | None = self._table_fact("size", source, read)
        return size

    def plan_split(
        self, key_sql: str, params: Mapping[str, Any], split_rows: int, column: str, shared_snapshot: bool = True
    ) -> SplitPlan:
        """A key's rows and ``column``'s quantile values within it, for ranges of about ``split_rows`` rows each.

        One count, then one ``ORDER BY … LIMIT 1 OFFSET n`` per boundary on the key's non-NULL values (an index on
        (key, column) — the primary key's, often — makes each a short index walk). On PostgreSQL all in one
        REPEATABLE READ transaction whose snapshot is exported when the key is split, the transaction kept open
        until the plan is closed (``shared_snapshot`` False: not exported). A key not split (no boundary) holds
        nothing open.
        """
        try:
            conn = self._planning_engine().connect()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "plan the key's split ranges on the source", self.where) from exc
        try:
            snapshot, why = None, "MySQL/MariaDB has no snapshot to share between connections"
            if self.dialect == "postgres":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                # The plan's transaction waits, idle, while its ranges queue for connections: a server's
                # idle_in_transaction_session_timeout (often set on RDS) would end it and the ranges' snapshot.
                conn.execute(sa.text("SET LOCAL idle_in_transaction_session_timeout = 0"))
            total, non_null = conn.execute(sa.text(count_query(key_sql, column, self.dialect)), dict(params)).one()
            offsets = boundary_offsets(int(non_null), ranges_wanted(int(total), split_rows))
            if not offsets:
                conn.close()
                return SplitPlan(int(total), [], None, "not split")
            if self.dialect == "postgres":
                snapshot, why = self._export_snapshot(conn) if shared_snapshot else (None, "not asked for")
            sql = sa.text(boundary_query(key_sql, column, self.dialect))
            values = [conn.execute(sql, {**params, "split_offset": off}).scalar() for off in offsets]
            if snapshot is None:
                conn.close()
                return SplitPlan(int(total), values, None, why)
            return SplitPlan(int(total), values, snapshot, "", conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sa_exc.SQLAlchemyError):
                raise translate_db_error(exc, "plan the key's split ranges on the source", self.where) from exc
            raise

    def _planning_engine(self) -> sa.Engine:
        """PostgreSQL: connections of their own for split plans, outside the pool the extractions draw from.

        A plan's transaction stays open, idle, while its ranges run: taken from the pool (``source_max_connections``
        and two more), a few big keys planned at once could leave their ranges no connection to run on.
        """
        if self.dialect != "postgres":
            return self.engine
        with self._facts_lock:
            if self._planning is None:
                self._planning = unpooled_engine(self.engine)
            return self._planning

    def _export_snapshot(self, conn: sa.Connection) -> tuple[str | None, str]:
        """The planning transaction's snapshot, exported for the ranges; or None and why.

        A hot standby before PostgreSQL 10 cannot export one (10 and later can): the ranges then read their own.
        """
        try:
            return str(conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar()), ""
        except sa_exc.DBAPIError as exc:
            if is_disconnect(exc):
                raise
            # The transaction is aborted: its count is kept, the boundaries are read in a fresh one.
            conn.rollback()
            return None, f"pg_export_snapshot() failed: {first_line(exc.orig or exc)}"

    def count_keys(self, source: SourceConfig, keys: Sequence[CampaignKey]) -> dict[str, int]:
        """Rows per key on the source, each key within its own dates: one ``GROUP BY`` per 1,000 keys.

        A key without rows is absent. Keys are bound values, never SQL text.
        """
        counts: dict[str, int] = {}
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(keys), COUNT_CHUNK):
                    windows = key_windows(keys[start : start + COUNT_CHUNK])
                    sql = render_count_keys_query(source, self.dialect, [len(w.keys) for w in windows])
                    for key, n in conn.execute(sa.text(sql), window_params(windows)):
                        counts[str(key)] = counts.get(str(key), 0) + int(n)
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "count the keys' rows on the source", self.where) from exc
        return counts

    def stream(
        self,
        sql: str,
        params: Mapping[str, Any],
        schema: pa.Schema | None,
        batch_rows: int,
        session: CopySession | None = None,
    ) -> Iterator[pa.Table]:
        """Yield the query's rows in Arrow tables of at most ``batch_rows`` rows.

        PostgreSQL sources with a known schema take the fast path: ``COPY (SELECT …) TO STDOUT`` parsed by Arrow's
        CSV reader in C++, no Python object per value. MySQL/MariaDB tables of plain types (integers, doubles,
        text, dates) are read by connectorx into Arrow. Others stream through a server-side cursor.
        """
        if self.dialect == "postgres" and schema is not None:
            for table in self._stream_copy(sql, params, schema, session):
                for offset in range(0, table.num_rows, batch_rows):
                    yield table.slice(offset, batch_rows)  # zero-copy: at most batch_rows rows per batch
            return
        if session is not None and session.salts:
            raise KeyFailedError("extract from source: a pushed hash needs a PostgreSQL source")  # a planning bug
        if session is not None and session.count_sql:
            session.extracted = self._count(session.count_sql, params)
        if self.dialect == "mysql" and self._mysql_arrow_stream(schema):
            assert schema is not None
            yield from self._stream_mysql_arrow(sql, params, schema, batch_rows)
            return
        yield from self._stream_cursor(sql, params, schema, batch_rows)

    def _mysql_arrow_stream(self, schema: pa.Schema | None) -> bool:
        """Does :meth:`stream` read this MySQL/MariaDB schema through connectorx (no URL option it would drop)?"""
        return arrow_native_mysql(schema) and set(self.engine.url.query) <= {"charset"}

    def _stream_cursor(
        self, sql: str, params: Mapping[str, Any], schema: pa.Schema | None, batch_rows: int
    ) -> Iterator[pa.Table]:
        """Any database: a server-side cursor, rows converted to Arrow in batches."""
        if schema is not None:
            # Rows arrive as Python objects here: bound a batch by cells, so a 600-column table stays small.
            batch_rows = max(100, min(batch_rows, MAX_BATCH_CELLS // max(len(schema), 1)))
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                    sa.text(sql), dict(params)
                )
                names = list(result.keys())
                for rows in result.partitions(batch_rows):
                    yield rows_to_table(rows, names, schema)
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "extract from source", self.where) from exc

    def _count(self, sql: str, params: Mapping[str, Any]) -> int:
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(sa.text(sql), dict(params)).scalar() or 0)
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "count the key's rows on the source", self.where) from None

    def _copy_out(
        self, sql: str, params: Mapping[str, Any], session: CopySession | None
    ) -> tuple[threading.Thread, list[BaseException], int, Any]:
        """Start ``COPY (query) TO STDOUT`` (CSV with a header) on a thread writing into a pipe.

        Returns the producer thread, its failure list, the pipe's read end and the raw connection. In the
        same transaction, before the COPY: REPEATABLE READ, the snapshot a split key's planning exported
        (``session.snapshot``, imported first), the key's count (``session.count_sql``), and the salt
        table a pushed hash reads (``session.salts``: data through ``COPY … FROM STDIN``, never in SQL text).
        """
        compiled = str(sa.text(sql).compile(dialect=self.engine.dialect))
        count_compiled = (
            str(sa.text(session.count_sql).compile(dialect=self.engine.dialect))
            if session is not None and session.count_sql
            else None
        )
        snapshot = session.snapshot if session is not None else None
        try:
            raw = self.engine.raw_connection()
        except Exception as exc:
            raise self._translate(exc) from exc
        failure: list[BaseException] = []
        read_fd, write_fd = os.pipe()

        def produce() -> None:
            try:
                with os.fdopen(write_fd, "wb", buffering=1 << 20) as sink:
                    cur = raw.cursor()
                    if count_compiled is not None or snapshot:  # the count and the rows from one snapshot
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    if snapshot:  # a split key's ranges: the snapshot its planning transaction exported
                        cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                    # The text PostgreSQL writes is what is staged: ISO dates, UTC, shortest exact doubles.
                    cur.execute("SET TIME ZONE 'UTC'")
                    cur.execute("SET DateStyle = 'ISO, MDY'")
                    cur.execute("SET extra_float_digits = 1")
                    if session is not None and session.salts:
                        table = f"pg_temp.{SALT_TABLE}"
                        cur.execute(f"CREATE TEMP TABLE {SALT_TABLE} (name text PRIMARY KEY, salt bytea NOT NULL)")
                        # COPY text format reads a backslash escape itself: "\\\\x" reaches bytea as "\\x" (hex)
                        rows = "".join(f"{name}\t\\\\x{salt.hex()}\n" for name, salt in session.salts.items())
                        cur.copy_expert(f"COPY {table} (name, salt) FROM STDIN", io.BytesIO(rows.encode()))
                    if count_compiled is not None and session is not None:
                        cur.execute(count_compiled, dict(params))
                        (count,) = cur.fetchone() or (0,)
                        session.extracted = int(count)
                    query = cur.mogrify(compiled, dict(params)).decode()
                    cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)", sink, size=1 << 20)
            except BrokenPipeError:
                pass  # the reader stopped early (an error downstream): nothing to report from here
            except BaseException as exc:
                failure.append(exc)

        producer = threading.Thread(target=produce, name="keyflow-copy-out", daemon=True)
        producer.start()
        return producer, failure, read_fd, raw

    def why_not_passthrough(self, sql: str, params: Mapping[str, Any], schema: pa.Schema) -> str | None:
        """Why this query's rows should not pass through as the source's own CSV (``None``: they should).

        PostgreSQL's COPY always can. MySQL/MariaDB can when every column of the query is of a type it renders as
        Arrow's CSV writer does (:mod:`tasks.transforms.csvrecord`): asked of the query's result metadata (no rows
        read) and, for text, of the columns' character sets. Even then, columns connectorx reads (integers,
        doubles, text, dates) are cheaper parsed: it takes MariaDB's binary protocol, where the server writes no text
        at all, while rendering a 600-column row costs the server more than the client saves (BENCHMARKS.md,
        issue 15). Passthrough pays where the parsed path is the Python cursor (DECIMAL, DATETIME…).
        """
        if self.dialect == "postgres":
            return None
        if self.dialect != "mysql":
            return f"a {self.dialect} source has no CSV rendering"
        text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        try:
            with self.engine.connect() as conn:
                result = conn.execute(sa.text(render_metadata_query(sql, schema)), dict(params))
                described: list[Any] = list(result.cursor.description or ())
                result.close()
                charsets: dict[str, str] = {}
                if text:
                    row = conn.execute(sa.text(render_charset_query(sql, text)), dict(params)).one()
                    charsets = {n: str(c) for n, c in zip(text, row, strict=True)}
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "read the extraction query's column types", self.where) from exc
        codes = [int(d[1]) for d in described]
        scales = [None if d[5] is None else int(d[5]) for d in described]
        why = why_not_rendered(schema, codes, scales, charsets)
        if why is None and self._mysql_arrow_stream(schema):
            return "connectorx reads every column in the binary protocol, cheaper than the server writing text"
        return why

    def stream_csv(
        self,
        sql: str,
        params: Mapping[str, Any],
        session: CopySession | None = None,
        schema: pa.Schema | None = None,
        batch_rows: int = 10_000,
    ) -> Iterator[bytes]:
        """The query's rows as staged CSV bytes, a header line first, never parsed here.

        PostgreSQL: ``COPY (sql) TO STDOUT WITH (FORMAT csv, HEADER true)`` in chunks of up to 1 MiB, cut anywhere
        (a record may span chunks). MySQL/MariaDB (``schema`` given, :meth:`why_not_passthrough` satisfied): each
        row rendered as one record by the server. Errors translated as for :meth:`stream`.
        """
        if self.dialect == "mysql" and schema is not None:
            yield from self._stream_mysql_csv(sql, params, schema, batch_rows, session)
            return
        if self.dialect != "postgres":
            raise KeyFailedError("extract from source: byte passthrough needs a CSV schema")  # a planning bug
        producer, failure, read_fd, raw = self._copy_out(sql, params, session)
        source = os.fdopen(read_fd, "rb", buffering=0)
        try:
            while chunk := source.read(1 << 20):
                yield chunk
        finally:
            source.close()
            producer.join()
            _release(raw)
        if failure:
            raise self._translate(failure[0]) from failure[0]

    def _stream_mysql_csv(
        self, sql: str, params: Mapping[str, Any], schema: pa.Schema, batch_rows: int, session: CopySession | None
    ) -> Iterator[bytes]:
        """MySQL/MariaDB: each row arrives as one UTF-8 CSV record (bytes), through an unbuffered cursor.

        The key's count before the pushed filters and the rows come from one REPEATABLE READ transaction, so one
        snapshot: the reconciliation's ``extracted`` is exact. Records are joined with newlines a batch at a time
        (bounded by cells, as the cursor path is); the rows sent are counted into ``session.streamed``.
        """
        if session is not None and session.salts:
            raise KeyFailedError("extract from source: a pushed hash needs a PostgreSQL source")  # a planning bug
        rows = max(100, min(batch_rows, MAX_BATCH_CELLS // max(len(schema), 1)))
        streamed = 0
        yield csv_header(schema.names)
        try:
            with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
                if session is not None and session.count_sql:
                    session.extracted = int(conn.execute(sa.text(session.count_sql), dict(params)).scalar() or 0)
                result = conn.execution_options(stream_results=True, yield_per=rows).execute(
                    sa.text(render_record_query(sql, schema)), dict(params)
                )
                for batch in result.scalars().partitions(rows):
                    if None in batch:  # see render_field: a value MariaDB could not render (over max_allowed_packet)
                        raise KeyFailedError(
                            f"extract from source: row {streamed + batch.index(None) + 1} of the key could not be "
                            "rendered as CSV by the server (a value over max_allowed_packet?); nothing staged"
                        )
                    streamed += len(batch)
                    yield b"\n".join(batch) + b"\n"
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "extract from source", self.where) from exc
        if session is not None:
            session.streamed = streamed

    def _stream_copy(
        self, sql: str, params: Mapping[str, Any], schema: pa.Schema, session: CopySession | None = None
    ) -> Iterator[pa.Table]:
        """PostgreSQL: ``COPY (query) TO STDOUT`` through a pipe into Arrow's streaming CSV reader."""
        producer, failure, read_fd, raw = self._copy_out(sql, params, session)
        read, parse, convert = csv_read_options(schema)
        source = os.fdopen(read_fd, "rb", buffering=1 << 20)
        try:
            reader = pacsv.open_csv(source, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                yield pa.Table.from_batches([batch])
        except pa.ArrowInvalid as exc:
            producer.join()
            if failure:
                raise self._translate(failure[0]) from failure[0]
            raise KeyFailedError(f"extract from source: unreadable value: {first_line(exc)}") from None
        finally:
            source.close()
            producer.join()
            _release(raw)
        if failure:
            raise self._translate(failure[0]) from failure[0]

    def _stream_mysql_arrow(
        self, sql: str, params: Mapping[str, Any], schema: pa.Schema, batch_rows: int
    ) -> Iterator[pa.Table]:
        """MySQL/MariaDB: connectorx reads the rows into Arrow in Rust, streamed in batches; no Python per value.

        The query's parameters are rendered into the SQL text by the driver's own escaping on a live connection
        (connectorx takes no parameters); the password never appears in an error.
        """
        import connectorx

        rows = max(100, min(batch_rows, MAX_BATCH_CELLS // max(len(schema), 1)))
        compiled = str(sa.text(sql).compile(dialect=self.engine.dialect))
        try:
            raw = self.engine.raw_connection()
            try:
                cur: Any = raw.cursor()
                query = cur.mogrify(compiled, dict(params))
                cur.close()
            finally:
                raw.close()
        except Exception as exc:
            raise self._translate(exc) from exc
        url = self.engine.url.set(drivername="mysql", query={}).render_as_string(hide_password=False)
        secret = self.engine.url.password or ""
        fall_back = False
        try:
            reader = connectorx.read_sql(url, query, return_type="arrow_stream", batch_size=rows)
            checked = False
            for batch in reader:
                if not checked and not _exact_casts(batch.schema, schema):
                    # e.g. a FLOAT column arrives as float32: widening it would not give the cursor's values.
                    fall_back = True
                    break
                checked = True
                table = pa.Table.from_batches([batch])
                yield table if table.schema == schema else table.cast(schema, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise KeyFailedError(f"extract from source: unreadable value: {first_line(exc)}") from None
        except BaseException as exc:  # connectorx raises RuntimeError, or PanicException (a BaseException)
            if isinstance(exc, GeneratorExit | KeyboardInterrupt | SystemExit):
                raise
            first = first_line(exc)
            first = first.replace(secret, "***") if secret else first
            retry = any(word in first.lower() for word in ("timed out", "connection", "broken pipe", "too many"))
            error = RetryableError if retry else KeyFailedError
            raise error(f"extract from source: {first}") from None
        if fall_back:  # nothing was yielded yet: the cursor path reads the key from the start
            yield from self._stream_cursor(sql, params, schema, batch_rows)

    def _translate(self, exc: BaseException) -> Exception:
        """Wrap a raw driver error the way SQLAlchemy would, then map it to retry-or-fail."""
        if isinstance(exc, Exception) and not isinstance(exc, sa_exc.SQLAlchemyError):
            dbapi_error = self.engine.dialect.loaded_dbapi.Error
            if isinstance(exc, dbapi_error):
                exc = sa_exc.DBAPIError.instance(None, None, exc, dbapi_error)
        error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
        return translate_db_error(error, "extract from source", self.where)
