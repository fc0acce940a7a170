"""Warehouse adapters: PostgreSQL (COPY FROM STDIN), Redshift (COPY from a manifest), DuckDB (embedded).

Each key's slice is replaced inside one transaction: delete the key's rows, load the staged files, count, and
commit only when the count matches what was staged. Readers never see a partial key; a failed key keeps its
previous rows.
"""

from __future__ import annotations

import gzip
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg2
import psycopg2.errors
import pyarrow as pa
import pyarrow.csv as pacsv
import zstandard

from config.errors import ConfigError, KeyFailedError, ReconciliationError, RetryableError, first_line
from config.types import ColumnType
from tasks.io.databases import CREATE_RACES, pg_connection, pg_dsn, pg_error, rollback_quietly
from tasks.io.objectstore import ObjectStore
from tasks.transforms.arrow import csv_read_options
from tasks.transforms.drift import plan_drift, type_from_catalog
from tasks.transforms.sql import (
    COLUMNS_QUERY,
    LEDGER_TABLE,
    MERGE_STAGE,
    TableSpec,
    merge_stage,
    qualified,
    quote_ident,
    render_add_column,
    render_copy_from_stdin,
    render_count_key,
    render_count_keys,
    render_count_merged,
    render_count_merged_keys,
    render_create_ledger,
    render_create_merge_stage,
    render_create_schema,
    render_create_table,
    render_delete_key,
    render_delete_keys,
    render_delete_other_keys,
    render_ledger_between,
    render_ledger_delete,
    render_ledger_delete_keys,
    render_ledger_insert,
    render_ledger_insert_rows,
    render_ledger_keys,
    render_lock_target,
    render_merge,
    render_merge_index,
    render_redshift_copy,
)
from tasks.transforms.staging import StagedKey, reconcile, reconcile_unit
from tasks.transforms.types import arrow_type


class Warehouse(Protocol):
    """Where keys are loaded."""

    dialect: str
    loads_units: bool  # whether :meth:`load_unit` loads shared units (else every key is its own unit)

    def columns(self, spec: TableSpec) -> list[tuple[str, ColumnType | None]]:
        """The target table's columns and types as they stand (none when it does not exist)."""

    def prepare(self, spec: TableSpec, add_columns: Sequence[tuple[str, ColumnType, bool]] = ()) -> None:
        """Create schema, table and ledger when missing; add ``add_columns`` (schema drift, planned before)."""

    def load_key(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> int:
        """Replace one key's rows with its staged files in one transaction; returns the rows loaded."""

    def load_unit(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> dict[str, int]:
        """Replace every key of a shared unit with its staged files in one transaction; the rows loaded per key.

        Each key is reconciled on its own and gets its ledger row; any failure rolls the whole unit back.
        """

    def delete_other_keys(self, spec: TableSpec, keep: Sequence[str]) -> int:
        """Delete the rows of every key not in ``keep``; returns how many."""

    def count_key(self, spec: TableSpec, key: str) -> int:
        """The number of rows of one key in the target table."""

    def loaded_keys(self, schema: str, dataset: str, run_date: str) -> set[str]:
        """The keys of ``dataset`` the ledger records as loaded for ``run_date``."""

    def loaded_between(self, schema: str, dataset: str, first: str, last: str) -> set[tuple[str, str]]:
        """``(key, run_date)`` of every load of ``dataset`` the ledger records from ``first`` to ``last``."""

    def check(self, spec: TableSpec | None, schema: str) -> list[str]:
        """Problems with the target before a run, one line each (schema, privileges, an existing table's columns)."""


def decompressed(raw: IO[bytes], compression: str) -> IO[bytes]:
    """A streaming reader of a staged object's CSV bytes."""
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _not_unique(spec: TableSpec, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"target.primary_key: ({', '.join(spec.primary_key)}) is not unique in {spec.schema}.{spec.table}, so "
        f"load_mode merge cannot upsert by it: {first_line(exc)}"
    )


def _drift_problems(spec: TableSpec, existing: Sequence[tuple[str, ColumnType | None]]) -> list[str]:
    """An existing table's differences from the planned ``spec`` that its ``on_schema_change`` does not accept."""
    try:
        plan_drift(spec, existing, spec.on_schema_change, "")
    except ConfigError as exc:
        return exc.problems
    return []


def _target_problems(state: Sequence[Any], schema: str, table: str | None) -> list[str]:
    """The lines of a privileges row from ``_PG_TARGET_STATE`` (PostgreSQL and Redshift alike)."""
    user, create_schema, in_schema, on_table, on_ledger = state
    problems = []
    if in_schema is None and not create_schema:
        problems.append(
            f"target.schema: schema {schema!r} does not exist and {user} may not create it "
            "(GRANT CREATE ON DATABASE, or create the schema)"
        )
    elif in_schema is False and (on_table is None or on_ledger is None):
        problems.append(f"target.schema: {user} may not create tables in schema {schema!r} (GRANT CREATE, USAGE)")
    if on_table is False:
        problems.append(f"target.table: {user} may not SELECT, INSERT and DELETE on {schema}.{table}")
    if on_ledger is False:
        problems.append(f"target.schema: {user} may not INSERT and DELETE on {schema}.{LEDGER_TABLE}")
    return problems


# Names, not oids: Redshift's privilege functions take names too.
_PG_TARGET_STATE = """
SELECT current_user,
       has_database_privilege(current_database(), 'CREATE'),
       (SELECT has_schema_privilege(nspname, 'CREATE') AND has_schema_privilege(nspname, 'USAGE')
          FROM pg_namespace WHERE nspname = %(schema)s),
       (SELECT has_table_privilege(quote_ident(n.nspname) || '.' || quote_ident(c.relname), 'SELECT')
               AND has_table_privilege(quote_ident(n.nspname) || '.' || quote_ident(c.relname), 'INSERT')
               AND has_table_privilege(quote_ident(n.nspname) || '.' || quote_ident(c.relname), 'DELETE')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s AND c.relname = %(table)s),
       (SELECT has_table_privilege(quote_ident(n.nspname) || '.' || quote_ident(c.relname), 'INSERT')
               AND has_table_privilege(quote_ident(n.nspname) || '.' || quote_ident(c.relname), 'DELETE')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s AND c.relname = %(ledger)s)
"""


class _PsycopgWarehouse:
    """Shared transaction logic of PostgreSQL and Redshift (both speak the PostgreSQL protocol)."""

    dialect = "postgres"
    loads_units = True

    def __init__(self, url: str, password: str | None = None) -> None:
        self._dsn = pg_dsn(url, password)

    def connect(self) -> AbstractContextManager[Any]:
        """A connection for one unit of work (refused: :class:`RetryableError`), closed after it."""
        return pg_connection(self._dsn)

    def columns(self, spec: TableSpec) -> list[tuple[str, ColumnType | None]]:
        """The target table's columns and types as they stand (none when it does not exist)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(COLUMNS_QUERY, (spec.schema, spec.table))
            return [(r[0], type_from_catalog(r[1], r[2], r[3])) for r in cur.fetchall()]

    def prepare(self, spec: TableSpec, add_columns: Sequence[tuple[str, ColumnType, bool]] = ()) -> None:
        """Create schema, table and ledger when missing; add ``add_columns`` (schema drift, planned before)."""
        with self.connect() as conn, conn.cursor() as cur:
            ddls = [
                render_create_schema(spec, self.dialect),
                render_create_table(spec, self.dialect),
                *(render_add_column(spec, name, ctype, self.dialect) for name, ctype, _ in add_columns),
                render_create_ledger(spec.schema, self.dialect),
            ]
            for ddl in ddls:
                try:
                    cur.execute(ddl)
                    conn.commit()
                except CREATE_RACES:
                    conn.rollback()  # another run created it at the same moment: theirs is as good
            if spec.load_mode == "merge" and self.dialect == "postgres":
                try:
                    cur.execute(render_merge_index(spec, self.dialect))
                    conn.commit()
                except psycopg2.errors.UniqueViolation as exc:
                    conn.rollback()
                    raise _not_unique(spec, exc) from None

    def check(self, spec: TableSpec | None, schema: str) -> list[str]:
        """Problems with the target before a run, one line each.

        The schema there or creatable, the table and the load ledger writable or creatable, an existing table's
        columns those ``spec`` plans (skipped without one). Connection trouble raises :class:`RetryableError`, a
        wrong password or database :class:`ConfigError`.
        """
        table = spec.table if spec else None
        with self.connect() as conn, conn.cursor() as cur:
            try:
                cur.execute(_PG_TARGET_STATE, {"schema": schema, "table": table, "ledger": LEDGER_TABLE})
                state = cur.fetchone()
                existing: list[tuple[str, ColumnType | None]] = []
                if spec and state[3] is not None:
                    cur.execute(COLUMNS_QUERY, (schema, spec.table))
                    existing = [(r[0], type_from_catalog(r[1], r[2], r[3])) for r in cur.fetchall()]
            except psycopg2.Error as exc:
                raise pg_error(exc, "check the warehouse target") from None
            finally:
                conn.rollback()
        problems = _target_problems(state, schema, table)
        return problems + (_drift_problems(spec, existing) if spec else [])

    def _copy(self, cur: Any, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> int:
        raise NotImplementedError

    def _lock_key(self, cur: Any, spec: TableSpec, key: str) -> None:
        """Hold the key of the target alone until the transaction ends (nothing here: a subclass's lock)."""

    def _lock_keys(self, cur: Any, spec: TableSpec, keys: Sequence[str]) -> None:
        """Hold every key of a shared unit alone until the transaction ends (nothing here: a subclass's lock)."""

    @contextmanager
    def _load_transaction(self, what: str) -> Iterator[Any]:
        """One load's connection: committed by the caller, rolled back on any error, a database error mapped."""
        with self.connect() as conn:
            try:
                yield conn
            except ReconciliationError:
                rollback_quietly(conn)
                raise
            except psycopg2.Error as exc:
                rollback_quietly(conn)
                raise pg_error(exc, f"{what}: load", failed=f"{what}: load failed, previous rows kept") from None
            except BaseException:
                rollback_quietly(conn)
                raise

    def load_unit(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> dict[str, int]:
        """Replace every key of a shared unit in a single transaction; the rows loaded per key."""
        keys = [m.key for m in staged.members]
        with self._load_transaction(f"unit {staged.key}") as conn:
            with conn.cursor() as cur:
                self._lock_keys(cur, spec, keys)
                if spec.load_mode == "merge":
                    cur.execute(render_create_merge_stage(spec, self.dialect))
                    copied = self._copy(cur, merge_stage(spec), staged, store)
                    cur.execute(render_merge(spec, self.dialect))
                    cur.execute(render_count_merged_keys(spec, self.dialect))
                else:
                    cur.execute(render_delete_keys(spec, len(keys), self.dialect), keys)
                    copied = self._copy(cur, spec, staged, store)
                    cur.execute(render_count_keys(spec, len(keys), self.dialect), keys)
                loaded = {str(k): int(n) for k, n in cur.fetchall()}
            reconcile_unit(staged, copied, loaded)
            with conn.cursor() as cur:
                _record_unit(cur, spec, staged, self.dialect, "%s")
            conn.commit()
            return {k: loaded.get(k, 0) for k in keys}

    def load_key(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> int:
        """Replace one key's rows in a single transaction; return the rows loaded."""
        with self._load_transaction(f"key {staged.key!r}") as conn:
            with conn.cursor() as cur:
                self._lock_key(cur, spec, staged.key)
                if spec.load_mode == "merge":
                    # Upsert by primary key: copy into a session table, merge, and count what now matches.
                    cur.execute(render_create_merge_stage(spec, self.dialect))
                    copied = self._copy(cur, merge_stage(spec), staged, store)
                    cur.execute(render_merge(spec, self.dialect))
                    cur.execute(render_count_merged(spec, self.dialect))
                else:
                    cur.execute(render_delete_key(spec, self.dialect), (staged.key,))
                    copied = self._copy(cur, spec, staged, store)
                    cur.execute(render_count_key(spec, self.dialect), (staged.key,))
                loaded = int(cur.fetchone()[0])
            reconcile(staged, copied, loaded)
            with conn.cursor() as cur:
                _record_load(cur, spec, staged, loaded, self.dialect, "%s")
            conn.commit()
            return loaded

    def delete_other_keys(self, spec: TableSpec, keep: Sequence[str]) -> int:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(render_delete_other_keys(spec, len(keep), self.dialect), tuple(keep))
            conn.commit()
            return int(cur.rowcount)

    def count_key(self, spec: TableSpec, key: str) -> int:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(render_count_key(spec, self.dialect), (key,))
            return int(cur.fetchone()[0])

    def loaded_keys(self, schema: str, dataset: str, run_date: str) -> set[str]:
        """Keys whose load for ``run_date`` committed and reconciled (from the ledger)."""
        with self.connect() as conn, conn.cursor() as cur:
            try:
                cur.execute(render_ledger_keys(schema, self.dialect), (dataset, run_date))
            except psycopg2.errors.UndefinedTable:
                return set()
            return {r[0] for r in cur.fetchall()}

    def loaded_between(self, schema: str, dataset: str, first: str, last: str) -> set[tuple[str, str]]:
        """``(key, run_date)`` of every committed, reconciled load from ``first`` to ``last`` (from the ledger)."""
        with self.connect() as conn, conn.cursor() as cur:
            try:
                cur.execute(render_ledger_between(schema, self.dialect), (dataset, first, last))
            except psycopg2.errors.UndefinedTable:
                return set()
            return {(r[0], r[1].isoformat()) for r in cur.fetchall()}


def _record_load(cur: Any, spec: TableSpec, staged: StagedKey, loaded: int, dialect: str, mark: str) -> None:
    """Write the ledger row inside the key's transaction: it exists exactly when the key's rows do."""
    args = (staged.dataset, staged.key, staged.run_date)
    cur.execute(render_ledger_delete(spec.schema, dialect).replace("%s", mark), args)
    cur.execute(
        render_ledger_insert(spec.schema, dialect).replace("%s", mark),
        (*args, staged.run_id, loaded, datetime.now(UTC)),
    )


def _record_unit(cur: Any, spec: TableSpec, staged: StagedKey, dialect: str, mark: str) -> None:
    """A unit's ledger rows, one per key and run date, inside the unit's transaction (after it reconciled).

    A key's run dates are its own (a backfill's: every date it is loaded for), else the staged run date.
    """
    by_date: dict[str, list[str]] = {}
    rows: list[tuple[str, str, int]] = []
    for m in staged.members:
        for day in m.dates or (staged.run_date,):
            by_date.setdefault(day, []).append(m.key)
            rows.append((m.key, day, m.rows_staged))
    for day, keys in by_date.items():
        cur.execute(
            render_ledger_delete_keys(spec.schema, len(keys), dialect).replace("%s", mark),
            (staged.dataset, day, *keys),
        )
    now = datetime.now(UTC)
    for start in range(0, len(rows), LEDGER_ROWS):  # bounded statements, whatever the unit's size
        chunk = rows[start : start + LEDGER_ROWS]
        values = [v for key, day, n in chunk for v in (staged.dataset, key, day, staged.run_id, n, now)]
        cur.execute(render_ledger_insert_rows(spec.schema, len(chunk), dialect).replace("%s", mark), values)


LEDGER_ROWS = 500  # ledger rows per INSERT of a shared unit


class PostgresWarehouse(_PsycopgWarehouse):
    """PostgreSQL: staged files are streamed from S3, decompressed, into ``COPY … FROM STDIN``."""

    dialect = "postgres"

    def _lock_key(self, cur: Any, spec: TableSpec, key: str) -> None:
        """Take a transaction-scoped advisory lock per (target, key).

        A second run loading the same key at the same time waits for the first to commit, then replaces its rows,
        instead of adding to them.
        """
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{_lock_prefix(spec)}{key}",))

    def _lock_keys(self, cur: Any, spec: TableSpec, keys: Sequence[str]) -> None:
        """The advisory lock of every key of a unit (the same lock :meth:`_lock_key` takes), in lock-id order.

        One order for every run, so two runs whose units share keys wait for each other and never deadlock.
        """
        cur.execute(
            "SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT hashtext(%s || k) AS h "
            "FROM unnest(%s::text[]) AS k ORDER BY h) AS locks",
            (_lock_prefix(spec), list(keys)),
        )

    def _copy(self, cur: Any, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> int:
        sql = render_copy_from_stdin(spec)
        total = 0
        for part in staged.parts:
            with store.open(part.key) as raw:
                cur.copy_expert(sql, decompressed(raw, staged.compression), size=1 << 20)
                total += cur.rowcount
        return total


def _lock_prefix(spec: TableSpec) -> str:
    return f"keyflow:{spec.schema}.{spec.table}:"


class RedshiftWarehouse(_PsycopgWarehouse):
    """Redshift: ``COPY … FROM 's3://…/manifest.json' IAM_ROLE … MANIFEST`` inside the key's transaction."""

    dialect = "redshift"

    def _lock_key(self, cur: Any, spec: TableSpec, key: str) -> None:
        """``LOCK`` the target until the transaction ends (Redshift has no advisory locks).

        A second run loading the same key waits for the first to commit, then replaces its rows.
        """
        cur.execute(render_lock_target(spec, self.dialect))

    def __init__(
        self, url: str, password: str | None, iam_role: str, region: str | None, credentials: Any = None
    ) -> None:
        super().__init__(url, password)
        self.iam_role = iam_role
        self.region = region
        self.credentials = credentials  # IamCredentials: a temporary user and password per connection

    def connect(self) -> AbstractContextManager[Any]:
        """A connection for one unit of work, with IAM temporary credentials when the profile asks for them."""
        if self.credentials is None:
            return pg_connection(self._dsn)
        user, password = self.credentials.get()
        return pg_connection({**self._dsn, "user": user, "password": password})

    def copy_sql(self, spec: TableSpec, staged: StagedKey) -> str:
        """The COPY statement that loads a staged key through its manifest."""
        return render_redshift_copy(
            spec, staged.manifest_url, self.iam_role, staged.compression, self.region, staged.format
        )

    def _copy(self, cur: Any, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> int:
        if not staged.parts:
            return 0
        cur.execute(self.copy_sql(spec, staged))
        cur.execute("SELECT pg_last_copy_count()")
        return int(cur.fetchone()[0])


def _held_elsewhere(exc: BaseException) -> bool:
    """Whether DuckDB refused to open a file because another process holds its lock (one writing process per file)."""
    return "Could not set lock on file" in str(exc)


class DuckDBWarehouse:
    """Embedded warehouse in one DuckDB file (the no-server default).

    DuckDB lets one process at a time open a file for writing. Another keyflow process that holds it (a second run,
    a backfill) is waited for, up to ``lock_wait_seconds`` (the profile's ``retry_window_seconds``), then the step
    fails with a :class:`RetryableError` and retries within its window: two runs take turns, neither fails.
    """

    dialect = "duckdb"
    loads_units = True
    _locks: dict[str, threading.Lock] = {}

    def __init__(self, path: str, lock_wait_seconds: float = 180.0) -> None:
        self.path = str(Path(path.removeprefix("duckdb:///")))
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = self._locks.setdefault(self.path, threading.Lock())
        self.lock_wait_seconds = lock_wait_seconds

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A connection to the DuckDB file, held alone for as long as the block runs."""
        # One writer per file: DuckDB's optimistic concurrency would abort parallel writers of one table.
        with self._lock:
            conn = self._open()
            try:
                yield conn
            finally:
                conn.close()

    def _open(self) -> Any:
        """Open the file, waiting (0.05 s, doubling up to 1 s) while another process holds it."""
        import duckdb  # imported here: only the embedded default needs it

        deadline, pause = time.monotonic() + self.lock_wait_seconds, 0.05
        while True:
            try:
                return duckdb.connect(self.path)
            except duckdb.IOException as exc:
                if not _held_elsewhere(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    pid = re.search(r"\(PID (\d+)\)", str(exc))
                    holder = f"another process (PID {pid[1]})" if pid else "another process"
                    raise RetryableError(
                        f"DuckDB file {self.path}: held by {holder} for more than {self.lock_wait_seconds:g} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def columns(self, spec: TableSpec) -> list[tuple[str, ColumnType | None]]:
        """The target table's columns and types as they stand (none when it does not exist)."""
        with self.connect() as conn:
            rows = conn.execute(COLUMNS_QUERY.replace("%s", "?"), [spec.schema, spec.table]).fetchall()
            return [(r[0], type_from_catalog(r[1], r[2], r[3])) for r in rows]

    def prepare(self, spec: TableSpec, add_columns: Sequence[tuple[str, ColumnType, bool]] = ()) -> None:
        """Create schema, table and ledger when missing; add ``add_columns`` (schema drift, planned before)."""
        import duckdb

        with self.connect() as conn:
            conn.execute(render_create_schema(spec, self.dialect))
            conn.execute(render_create_table(spec, self.dialect))
            for name, ctype, _ in add_columns:
                conn.execute(render_add_column(spec, name, ctype, self.dialect))
            conn.execute(render_create_ledger(spec.schema, self.dialect))
            if spec.load_mode == "merge":
                try:
                    conn.execute(render_merge_index(spec, self.dialect))
                except duckdb.ConstraintException as exc:
                    raise _not_unique(spec, exc) from None

    def check(self, spec: TableSpec | None, schema: str) -> list[str]:
        """Problems with the target before a run.

        The file can be opened (its folder made), and an existing table's columns are those ``spec`` plans, or
        differ only as its ``on_schema_change`` accepts.
        """
        try:
            with self.connect() as conn:
                rows = conn.execute(COLUMNS_QUERY.replace("%s", "?"), [schema, spec.table if spec else ""]).fetchall()
        except RetryableError:
            raise  # held by another process past the wait: transient, the preflight checks again
        except Exception as exc:  # duckdb.IOException (unwritable, not a DuckDB file) and kin
            return [f"cannot open the DuckDB file {self.path}: {first_line(exc)}"]
        existing = [(r[0], type_from_catalog(r[1], r[2], r[3])) for r in rows]
        return _drift_problems(spec, existing) if spec else []

    def _batches(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> Iterator[pa.RecordBatch]:
        schema = pa.schema([(n, arrow_type(t)) for n, t, _ in spec.columns])
        read, parse, convert = csv_read_options(schema)
        for part in staged.parts:
            with store.open(part.key) as raw:
                reader = pacsv.open_csv(
                    decompressed(raw, staged.compression),
                    read_options=read,
                    parse_options=parse,
                    convert_options=convert,
                )
                yield from reader

    @contextmanager
    def _load_transaction(self, what: str) -> Iterator[Any]:
        """One load's transaction: committed by the caller, rolled back on any error, which fails the key or unit."""
        with self.connect() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            except ReconciliationError:
                conn.execute("ROLLBACK")
                raise
            except Exception as exc:
                conn.execute("ROLLBACK")
                if isinstance(exc, KeyFailedError | RetryableError):
                    raise
                raise KeyFailedError(f"{what}: load failed, previous rows kept: {first_line(exc)}") from None

    def _insert_staged(self, conn: Any, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> int:
        """Insert the staged files into the target (the merge stage in merge mode); the rows inserted."""
        merge = spec.load_mode == "merge"
        into = quote_ident(MERGE_STAGE, self.dialect) if merge else qualified(spec.schema, spec.table, self.dialect)
        cols = ", ".join(quote_ident(c, self.dialect) for c in spec.column_names)
        if merge:
            conn.execute(render_create_merge_stage(spec, self.dialect))
        copied = 0
        for batch in self._batches(spec, staged, store):
            conn.register("keyflow_batch", batch)
            conn.execute(f"INSERT INTO {into} ({cols}) SELECT {cols} FROM keyflow_batch")  # noqa: S608
            conn.unregister("keyflow_batch")
            copied += batch.num_rows
        if merge:
            conn.execute(render_merge(spec, self.dialect))
        return copied

    def load_key(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> int:
        """Replace one key's rows with its staged files in one transaction; returns the rows loaded."""
        with self._load_transaction(f"key {staged.key!r}") as conn:
            if spec.load_mode != "merge":
                conn.execute(render_delete_key(spec, self.dialect).replace("%s", "?"), [staged.key])
            copied = self._insert_staged(conn, spec, staged, store)
            if spec.load_mode == "merge":
                row = conn.execute(render_count_merged(spec, self.dialect)).fetchone()
            else:
                row = conn.execute(render_count_key(spec, self.dialect).replace("%s", "?"), [staged.key]).fetchone()
            loaded = int(row[0]) if row else 0
            reconcile(staged, copied, loaded)
            _record_load(conn, spec, staged, loaded, self.dialect, "?")
            conn.execute("COMMIT")
            return loaded

    def load_unit(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> dict[str, int]:
        """Replace every key of a shared unit in one transaction; the rows loaded per key."""
        keys = [m.key for m in staged.members]
        with self._load_transaction(f"unit {staged.key}") as conn:
            if spec.load_mode != "merge":
                conn.execute(render_delete_keys(spec, len(keys), self.dialect).replace("%s", "?"), keys)
            copied = self._insert_staged(conn, spec, staged, store)
            if spec.load_mode == "merge":
                rows = conn.execute(render_count_merged_keys(spec, self.dialect)).fetchall()
            else:
                count = render_count_keys(spec, len(keys), self.dialect).replace("%s", "?")
                rows = conn.execute(count, keys).fetchall()
            loaded = {str(k): int(n) for k, n in rows}
            reconcile_unit(staged, copied, loaded)
            _record_unit(conn, spec, staged, self.dialect, "?")
            conn.execute("COMMIT")
            return {k: loaded.get(k, 0) for k in keys}

    def delete_other_keys(self, spec: TableSpec, keep: Sequence[str]) -> int:
        """Delete the rows of every key not in ``keep``; returns how many."""
        sql = render_delete_other_keys(spec, len(keep), self.dialect).replace("%s", "?")
        with self.connect() as conn:
            row = conn.execute(sql, list(keep)).fetchone()
            return int(row[0]) if row else 0

    def count_key(self, spec: TableSpec, key: str) -> int:
        """The number of rows of one key in the target table."""
        sql = render_count_key(spec, self.dialect).replace("%s", "?")
        with self.connect() as conn:
            row = conn.execute(sql, [key]).fetchone()
            return int(row[0]) if row else 0

    def loaded_keys(self, schema: str, dataset: str, run_date: str) -> set[str]:
        """The keys of ``dataset`` the ledger records as loaded for ``run_date`` (none before the ledger exists)."""
        import duckdb

        sql = render_ledger_keys(schema, self.dialect).replace("%s", "?")
        with self.connect() as conn:
            try:
                return {r[0] for r in conn.execute(sql, [dataset, run_date]).fetchall()}
            except duckdb.CatalogException:
                return set()

    def loaded_between(self, schema: str, dataset: str, first: str, last: str) -> set[tuple[str, str]]:
        """``(key, run_date)`` of every load from ``first`` to ``last`` (none before the ledger exists)."""
        import duckdb

        sql = render_ledger_between(schema, self.dialect).replace("%s", "?")
        with self.connect() as conn:
            try:
                return {(r[0], r[1].isoformat()) for r in conn.execute(sql, [dataset, first, last]).fetchall()}
            except duckdb.CatalogException:
                return set()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (for the demo summary and tests)."""
        with self.connect() as conn:
            return [tuple(r) for r in conn.execute(sql, list(params)).fetchall()]
