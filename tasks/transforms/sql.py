"""SQL text built by pure functions: identifiers validated and quoted, values always bound parameters."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from config.models import IDENT_RE, SourceConfig
from config.types import ColumnType
from tasks.transforms.types import Dialect, sql_type


def quote_ident(name: str, dialect: Dialect) -> str:
    """Quote a validated identifier; refuse anything that is not a plain identifier."""
    if not IDENT_RE.match(name):
        raise ValueError(f"unsafe identifier {name!r}")
    return f"`{name}`" if dialect == "mysql" else f'"{name}"'


def qualified(schema: str | None, table: str, dialect: Dialect) -> str:
    """``schema.table`` quoted for the dialect (no schema on SQLite)."""
    if schema and dialect != "sqlite":
        return f"{quote_ident(schema, dialect)}.{quote_ident(table, dialect)}"
    return quote_ident(table, dialect)


def render_key_query(source: SourceConfig, dialect: Dialect, columns: Sequence[str] | None = None) -> str:
    """The SELECT for one key, with bound parameters ``:key`` (and ``:start_date``/``:end_date``)."""
    if source.query is not None:
        return source.query
    assert source.table is not None
    cols = columns or source.columns
    select = ", ".join(quote_ident(c, dialect) for c in cols) if cols else "*"
    sql = (
        f"SELECT {select} FROM {qualified(source.db_schema, source.table, dialect)} "  # noqa: S608 - quoted idents
        f"WHERE {quote_ident(source.key_column, dialect)} = :key"
    )
    if source.date_column:
        d = quote_ident(source.date_column, dialect)
        sql += f" AND {d} >= :start_date AND {d} <= :end_date"
    return sql


def render_keys_predicate(source: SourceConfig, dialect: Dialect, windows: Sequence[int]) -> str:
    """The WHERE text selecting many keys, each within its own date window.

    ``windows[i]`` is how many keys share window ``i``: ``(key IN (:k0_0, :k0_1) AND d >= :s0 AND d <= :e0) OR
    (key IN (:k1_0) AND d >= :s1 AND d <= :e1)``. Without a date column it is one ``key IN (…)`` of every key (the
    windows then only number them). Values are bound (:func:`tasks.transforms.units.window_params`).
    """
    if not windows or not all(n > 0 for n in windows):
        raise ValueError("a keys predicate needs at least one key in every window")
    key = quote_ident(source.key_column, dialect)

    def keys_in(i: int, n: int) -> str:
        return ", ".join(f":k{i}_{j}" for j in range(n))

    if not source.date_column:
        return f"{key} IN ({', '.join(keys_in(i, n) for i, n in enumerate(windows))})"
    d = quote_ident(source.date_column, dialect)
    ors = [f"({key} IN ({keys_in(i, n)}) AND {d} >= :s{i} AND {d} <= :e{i})" for i, n in enumerate(windows)]
    return ors[0] if len(ors) == 1 else "(" + " OR ".join(ors) + ")"


def render_unit_query(
    source: SourceConfig, dialect: Dialect, windows: Sequence[int], columns: Sequence[str] | None = None
) -> str:
    """The SELECT of a shared work unit: every row of its keys, each key within its own dates (a table source)."""
    if source.table is None:
        raise ValueError("a query source loads one key per unit: its SQL names one :key")
    cols = columns or source.columns
    select = ", ".join(quote_ident(c, dialect) for c in cols) if cols else "*"
    return (
        f"SELECT {select} FROM {qualified(source.db_schema, source.table, dialect)} "  # noqa: S608 - quoted idents
        f"WHERE {render_keys_predicate(source, dialect, windows)}"
    )


def render_count_keys_query(source: SourceConfig, dialect: Dialect, windows: Sequence[int]) -> str:
    """Rows per key on the source, each key within its own dates: ``SELECT key, count(*) … GROUP BY key``."""
    if source.table is None:
        raise ValueError("a query source cannot be counted per key")
    key = quote_ident(source.key_column, dialect)
    return (
        f"SELECT {key}, count(*) FROM {qualified(source.db_schema, source.table, dialect)} "  # noqa: S608
        f"WHERE {render_keys_predicate(source, dialect, windows)} GROUP BY {key}"
    )


@dataclass(frozen=True)
class TableSpec:
    """What DDL and load statements need to know about a target table."""

    schema: str
    table: str
    key_column: str
    columns: tuple[tuple[str, ColumnType, bool], ...]  # name, type, nullable
    distkey: str | None = None
    sortkey: tuple[str, ...] = ()
    load_mode: str = "replace_key"
    primary_key: tuple[str, ...] = ()
    on_schema_change: str = "fail"

    @property
    def column_names(self) -> list[str]:
        """The target's column names, in order."""
        return [c[0] for c in self.columns]


def render_create_schema(spec: TableSpec, dialect: Dialect) -> str:
    """CREATE SCHEMA IF NOT EXISTS for the target's schema."""
    return f"CREATE SCHEMA IF NOT EXISTS {quote_ident(spec.schema, dialect)}"


def render_create_table(spec: TableSpec, dialect: Dialect) -> str:
    """CREATE TABLE IF NOT EXISTS; Redshift also gets DISTKEY/SORTKEY."""
    cols = ",\n  ".join(
        f"{quote_ident(n, dialect)} {sql_type(t, dialect)}{'' if nullable else ' NOT NULL'}"
        for n, t, nullable in spec.columns
    )
    sql = f"CREATE TABLE IF NOT EXISTS {qualified(spec.schema, spec.table, dialect)} (\n  {cols}\n)"
    if dialect == "redshift":
        if spec.distkey:
            sql += f"\nDISTSTYLE KEY DISTKEY ({quote_ident(spec.distkey, dialect)})"
        if spec.sortkey:
            sql += f"\nCOMPOUND SORTKEY ({', '.join(quote_ident(c, dialect) for c in spec.sortkey)})"
    return sql


COLUMNS_QUERY = (
    "SELECT column_name, data_type, numeric_precision, numeric_scale FROM information_schema.columns "
    "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position"
)  # the target's columns as they stand (schema and table are bound parameters)


def render_add_column(spec: TableSpec, name: str, ctype: ColumnType, dialect: Dialect) -> str:
    """Add one nullable column to the target (schema drift, ``add_columns``)."""
    table = qualified(spec.schema, spec.table, dialect)
    return f"ALTER TABLE {table} ADD COLUMN {quote_ident(name, dialect)} {sql_type(ctype, dialect)}"


MERGE_STAGE = "keyflow_merge_stage"  # the session's temporary table a merge loads into first


def merge_stage(spec: TableSpec) -> TableSpec:
    """The spec of the temporary table a merging key is copied into (unqualified: it lives in the session)."""
    return replace(spec, schema="", table=MERGE_STAGE)


def render_create_merge_stage(spec: TableSpec, dialect: Dialect) -> str:
    """A temporary table shaped like the target, dropped with the session (PostgreSQL: with the transaction)."""
    target = qualified(spec.schema, spec.table, dialect)
    stage = quote_ident(MERGE_STAGE, dialect)
    if dialect == "duckdb":
        return f"CREATE OR REPLACE TEMP TABLE {stage} AS SELECT * FROM {target} LIMIT 0"  # noqa: S608
    suffix = " ON COMMIT DROP" if dialect == "postgres" else ""
    return f"CREATE TEMP TABLE {stage} (LIKE {target}){suffix}"


def render_merge(spec: TableSpec, dialect: Dialect) -> str:
    """Upsert the merge stage into the target by primary key.

    Redshift and DuckDB: ``MERGE``. PostgreSQL: ``INSERT … ON CONFLICT`` (the unique index :func:`render_merge_index`
    creates; it also runs before version 15, which brought MERGE).
    """
    target = qualified(spec.schema, spec.table, dialect)
    stage = quote_ident(MERGE_STAGE, dialect)
    cols = [quote_ident(c, dialect) for c in spec.column_names]
    keys = [quote_ident(c, dialect) for c in spec.primary_key]
    others = [c for c in cols if c not in keys] or keys[:1]
    if dialect == "postgres":
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in others)
        return (
            f"INSERT INTO {target} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {stage} "  # noqa: S608
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        )
    on = " AND ".join(f"{target}.{k} = s.{k}" for k in keys)
    updates = ", ".join(f"{c} = s.{c}" for c in others)
    return (
        f"MERGE INTO {target} USING {stage} AS s ON {on}\n"  # noqa: S608 - quoted idents
        f"WHEN MATCHED THEN UPDATE SET {updates}\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) VALUES ({', '.join('s.' + c for c in cols)})"
    )


def render_count_merged(spec: TableSpec, dialect: Dialect) -> str:
    """How many target rows the merge stage's rows now match by primary key: the rows staged, or the key fails."""
    target = qualified(spec.schema, spec.table, dialect)
    stage = quote_ident(MERGE_STAGE, dialect)
    on = " AND ".join(f"t.{quote_ident(k, dialect)} = s.{quote_ident(k, dialect)}" for k in spec.primary_key)
    return f"SELECT count(*) FROM {target} AS t JOIN {stage} AS s ON {on}"  # noqa: S608


def render_merge_index(spec: TableSpec, dialect: Dialect) -> str:
    """PostgreSQL and DuckDB: the unique index a merge's upsert relies on (Redshift enforces no uniqueness)."""
    digest = hashlib.sha1(",".join(spec.primary_key).encode(), usedforsecurity=False).hexdigest()[:8]
    name = quote_ident(f"{spec.table[:40]}_keyflow_pk_{digest}", dialect)  # a new primary key gets a new index
    keys = ", ".join(quote_ident(c, dialect) for c in spec.primary_key)
    return f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {qualified(spec.schema, spec.table, dialect)} ({keys})"


def render_lock_target(spec: TableSpec, dialect: Dialect) -> str:
    """Lock the target table until the load's transaction ends (Redshift: no advisory locks, LOCK is the way).

    Two runs loading one key at once then run one after the other: the second waits, then replaces the first's
    rows. Redshift's ``LOCK`` takes an ACCESS EXCLUSIVE lock; its writes to one table are serialized anyway, so the
    loads of a run lose no parallelism, and a conflicting pair waits instead of failing (error 1023, serializable
    isolation). Taken first, so every load takes the target before the ledger: no deadlock.
    """
    return f"LOCK {qualified(spec.schema, spec.table, dialect)}"


def render_delete_key(spec: TableSpec, dialect: Dialect) -> str:
    """Delete one key's slice; the key is a bound parameter (``%s``)."""
    return (
        f"DELETE FROM {qualified(spec.schema, spec.table, dialect)} "  # noqa: S608 - quoted idents
        f"WHERE {quote_ident(spec.key_column, dialect)} = %s"
    )


def render_delete_other_keys(spec: TableSpec, n_keys: int, dialect: Dialect) -> str:
    """Delete every row whose key is not one of ``n_keys`` bound parameters (replace_table mode)."""
    target = qualified(spec.schema, spec.table, dialect)
    if n_keys == 0:
        return f"DELETE FROM {target}"  # noqa: S608 - quoted idents
    marks = ", ".join(["%s"] * n_keys)
    return f"DELETE FROM {target} WHERE {quote_ident(spec.key_column, dialect)} NOT IN ({marks})"  # noqa: S608


def _marks(n: int) -> str:
    if n < 1:
        raise ValueError("at least one key")
    return ", ".join(["%s"] * n)


def render_delete_keys(spec: TableSpec, n_keys: int, dialect: Dialect) -> str:
    """Delete the slices of ``n_keys`` keys (a shared unit); the keys are bound parameters (``%s``)."""
    return (
        f"DELETE FROM {qualified(spec.schema, spec.table, dialect)} "  # noqa: S608 - quoted idents
        f"WHERE {quote_ident(spec.key_column, dialect)} IN ({_marks(n_keys)})"
    )


def render_count_keys(spec: TableSpec, n_keys: int, dialect: Dialect) -> str:
    """Rows per key of ``n_keys`` keys in the target (a key without rows is absent); keys are bound parameters."""
    key = quote_ident(spec.key_column, dialect)
    return (
        f"SELECT {key}, count(*) FROM {qualified(spec.schema, spec.table, dialect)} "  # noqa: S608 - quoted idents
        f"WHERE {key} IN ({_marks(n_keys)}) GROUP BY {key}"
    )


def render_count_merged_keys(spec: TableSpec, dialect: Dialect) -> str:
    """Per key, how many target rows the merge stage's rows now match by primary key (a shared unit's merge)."""
    target = qualified(spec.schema, spec.table, dialect)
    stage = quote_ident(MERGE_STAGE, dialect)
    key = quote_ident(spec.key_column, dialect)
    on = " AND ".join(f"t.{quote_ident(k, dialect)} = s.{quote_ident(k, dialect)}" for k in spec.primary_key)
    return f"SELECT t.{key}, count(*) FROM {target} AS t JOIN {stage} AS s ON {on} GROUP BY t.{key}"  # noqa: S608


def render_count_key(spec: TableSpec, dialect: Dialect) -> str:
    """Count one key's rows in the target; the key is a bound parameter."""
    return (
        f"SELECT count(*) FROM {qualified(spec.schema, spec.table, dialect)} "  # noqa: S608 - quoted idents
        f"WHERE {quote_ident(spec.key_column, dialect)} = %s"
    )


def render_copy_from_stdin(spec: TableSpec) -> str:
    """PostgreSQL COPY of staged CSV (header line, empty unquoted field = NULL, ``""`` = empty string)."""
    cols = ", ".join(quote_ident(c, "postgres") for c in spec.column_names)
    return (
        f"COPY {qualified(spec.schema, spec.table, 'postgres')} ({cols}) "
        "FROM STDIN WITH (FORMAT csv, HEADER true, ENCODING 'UTF8')"
    )


def _sql_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def render_redshift_copy(
    spec: TableSpec,
    manifest_url: str,
    iam_role: str,
    compression: str,
    region: str | None = None,
    fmt: str = "csv",
) -> str:
    """Redshift COPY of a staged key through its manifest with an IAM role, naming every column it loads.

    Parquet: COPY maps the file's columns to the listed ones by position and needs ``meta.content_length`` in the
    manifest (https://docs.aws.amazon.com/redshift/latest/dg/copy-usage_notes-copy-from-columnar.html,
    https://docs.aws.amazon.com/redshift/latest/dg/loading-data-files-using-manifest.html); the codec is inside the
    file, and the bucket must be in the cluster's region (no REGION option for columnar COPY).
    """
    cols = ", ".join(quote_ident(c, "redshift") for c in spec.column_names)
    parts = [
        f"COPY {qualified(spec.schema, spec.table, 'redshift')} ({cols})",
        f"FROM {_sql_literal(manifest_url)}",
        f"IAM_ROLE {_sql_literal(iam_role)}",
    ]
    if fmt == "parquet":
        return "\n".join([*parts, "FORMAT AS PARQUET", "MANIFEST"])
    parts += ["FORMAT AS CSV", "IGNOREHEADER 1", "MANIFEST"]
    if compression == "zstd":
        parts.append("ZSTD")
    elif compression == "gzip":
        parts.append("GZIP")
    # What decides each value, from AWS's "Data conversion parameters" and "automatic recognition" pages
    # (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-conversion.html,
    #  https://docs.aws.amazon.com/redshift/latest/dg/automatic-recognition.html):
    # - EMPTYASNULL: staged CSV writes NULL as an empty unquoted field; without it Redshift loads an empty field into
    #   a CHAR/VARCHAR column as '' (other types load it as NULL anyway). The page does not say whether a quoted ""
    #   (our empty string) counts as an empty field in CSV mode — Parquet staging, the default for Redshift, has
    #   real NULLs and leaves no such doubt.
    # - TIMEFORMAT/DATEFORMAT 'auto': recognises "YYYY-MM-DD HH:MI:SS.SSS…" (the staged ISO text, microseconds
    #   included) and YYYY-MM-DD.
    # - no ACCEPTINVCHARS: "If ACCEPTINVCHARS isn't specified, COPY returns an error whenever it encounters an
    #   invalid UTF-8 character" — staged text is valid UTF-8 (Arrow strings), so an invalid byte is a loud failure,
    #   never a silent '?'.
    parts += ["EMPTYASNULL", "TIMEFORMAT 'auto'", "DATEFORMAT 'auto'", "COMPUPDATE OFF", "STATUPDATE OFF"]
    if region:
        parts.append(f"REGION {_sql_literal(region)}")
    return "\n".join(parts)


LEDGER_TABLE = "keyflow_loads"


def render_create_ledger(schema: str, dialect: Dialect) -> str:
    """The load ledger: one row per (dataset, key, run date) committed with the key's rows."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, LEDGER_TABLE, dialect)} (\n"
        "  dataset VARCHAR(63) NOT NULL,\n  key VARCHAR(256) NOT NULL,\n  run_date DATE NOT NULL,\n"
        "  run_id VARCHAR(64) NOT NULL,\n  rows_loaded BIGINT NOT NULL,\n  loaded_at TIMESTAMPTZ NOT NULL\n)"
    )


def render_ledger_delete(schema: str, dialect: Dialect) -> str:
    """Delete one key's ledger row for a run date; values are bound parameters."""
    return (
        f"DELETE FROM {qualified(schema, LEDGER_TABLE, dialect)} "  # noqa: S608 - quoted idents
        "WHERE dataset = %s AND key = %s AND run_date = %s"
    )


def render_ledger_insert(schema: str, dialect: Dialect) -> str:
    """Insert one key's ledger row; values are bound parameters."""
    return (
        f"INSERT INTO {qualified(schema, LEDGER_TABLE, dialect)} "  # noqa: S608 - quoted idents
        "(dataset, key, run_date, run_id, rows_loaded, loaded_at) VALUES (%s, %s, %s, %s, %s, %s)"
    )


def render_ledger_delete_keys(schema: str, n_keys: int, dialect: Dialect) -> str:
    """Delete the ledger rows of ``n_keys`` keys for a run date: ``(dataset, run_date, key…)`` bound in that order."""
    return (
        f"DELETE FROM {qualified(schema, LEDGER_TABLE, dialect)} "  # noqa: S608 - quoted idents
        f"WHERE dataset = %s AND run_date = %s AND key IN ({_marks(n_keys)})"
    )


def render_ledger_insert_rows(schema: str, n_rows: int, dialect: Dialect) -> str:
    """Insert ``n_rows`` ledger rows in one statement; six bound values per row, as :func:`render_ledger_insert`."""
    row = "(%s, %s, %s, %s, %s, %s)"
    if n_rows < 1:
        raise ValueError("at least one row")
    return (
        f"INSERT INTO {qualified(schema, LEDGER_TABLE, dialect)} "  # noqa: S608 - quoted idents
        f"(dataset, key, run_date, run_id, rows_loaded, loaded_at) VALUES {', '.join([row] * n_rows)}"
    )


def render_ledger_keys(schema: str, dialect: Dialect) -> str:
    """The keys of a dataset the ledger records for a run date; values are bound parameters."""
    return (
        f"SELECT key FROM {qualified(schema, LEDGER_TABLE, dialect)} "  # noqa: S608 - quoted idents
        "WHERE dataset = %s AND run_date = %s"
    )


def render_ledger_between(schema: str, dialect: Dialect) -> str:
    """``(key, run_date)`` of a dataset's ledger rows from one run date to another; values are bound parameters."""
    return (
        f"SELECT key, run_date FROM {qualified(schema, LEDGER_TABLE, dialect)} "  # noqa: S608 - quoted idents
        "WHERE dataset = %s AND run_date >= %s AND run_date <= %s"
    )


def named_parameters(sql: str) -> str:
    """Turn ``%s`` placeholders into the Data API's named ones, in order: ``:p1``, ``:p2`` and so on."""
    parts = sql.split("%s")
    return "".join(part + (f":p{i + 1}" if i < len(parts) - 1 else "") for i, part in enumerate(parts))


def render_data_api_load(spec: TableSpec, copy_sql: str) -> tuple[list[str], tuple[int, ...]]:
    """One key's load as the statements of ONE Data API batch (a single transaction), and which of them reconcile.

    Parameters (Data API values are text): ``:key``, ``:rows`` (rows staged), ``:dataset``, ``:run_date``,
    ``:run_id``, ``:loaded_at``. Redshift has no RAISE outside a procedure, so each reconciliation check divides by
    zero when a count differs from ``:rows``: the error aborts the batch and rolls the key back. ``copy_sql`` loads
    the target (replace modes) or the merge stage (merge: ``copy_sql`` must name :data:`MERGE_STAGE`).
    """
    target = qualified(spec.schema, spec.table, "redshift")
    key_col = quote_ident(spec.key_column, "redshift")
    ledger = qualified(spec.schema, LEDGER_TABLE, "redshift")
    lock = render_lock_target(spec, "redshift")  # first: two loads of one key run one after the other
    copied = "SELECT 1 / CASE WHEN pg_last_copy_count() = CAST(:rows AS BIGINT) THEN 1 ELSE 0 END AS copied_rows_match"
    if spec.load_mode == "merge":
        sqls = [
            lock,
            render_create_merge_stage(spec, "redshift"),
            copy_sql,
            copied,
            render_merge(spec, "redshift"),
            f"SELECT 1 / CASE WHEN ({render_count_merged(spec, 'redshift')}) = CAST(:rows AS BIGINT) "
            "THEN 1 ELSE 0 END AS merged_rows_match",
        ]
        checks: tuple[int, ...] = (3, 5)
    else:
        sqls = [
            lock,
            f"DELETE FROM {target} WHERE {key_col} = :key",  # noqa: S608 - quoted idents
            copy_sql,
            copied,
            f"SELECT 1 / CASE WHEN count(*) = CAST(:rows AS BIGINT) THEN 1 ELSE 0 END AS key_rows_match "  # noqa: S608
            f"FROM {target} WHERE {key_col} = :key",
        ]
        checks = (3, 4)
    sqls += [
        f"DELETE FROM {ledger} WHERE dataset = :dataset AND key = :key AND run_date = CAST(:run_date AS DATE)",  # noqa: S608
        f"INSERT INTO {ledger} (dataset, key, run_date, run_id, rows_loaded, loaded_at) "  # noqa: S608
        "VALUES (:dataset, :key, CAST(:run_date AS DATE), :run_id, CAST(:rows AS BIGINT), "
        "CAST(:loaded_at AS TIMESTAMPTZ))",
    ]
    return sqls, checks


# Redshift Data API limits: a BatchExecuteStatement takes 1 to 40 SQL statements (the ``Sqls`` list of the
# redshift-data 2019-12-20 API model), and each SQL text is at most 100 KB ("The maximum query statement size is
# 100 KB", https://docs.aws.amazon.com/redshift/latest/mgmt/data-api.html, Considerations; a larger text is refused
# with "Cannot process query string larger than 100kB"). A batch's ``Parameters`` are shared by all its statements,
# and each must be referenced by at least one of them (BatchExecuteStatement, Parameters).
DATA_API_MAX_STATEMENTS = 40
DATA_API_MAX_SQL_BYTES = 100_000
DATA_API_UNIT_KEYS = 400  # keys per unit on the Data API: ~120 bytes each in the largest statement, well under 100 KB


@dataclass(frozen=True)
class UnitMember:
    """One key of a shared unit as its Data API batch loads it: rows staged, and run dates its ledger rows get."""

    key: str
    rows: int
    dates: tuple[str, ...]


def render_data_api_unit_load(
    spec: TableSpec, copy_sql: str, members: Sequence[UnitMember]
) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
    """A shared unit's load as the statements of ONE Data API batch (one transaction), its parameters, its checks.

    Keys and run dates are bound parameters (``:k1``…, ``:d1``…); the caller adds ``:dataset``, ``:run_id`` and
    ``:loaded_at``. Row counts are integers rendered by keyflow, never user text. The batch: LOCK the target; delete
    the unit's keys (replace) or merge; COPY the unit's manifest; check the COPY took every staged row; check every
    key has exactly its staged rows (keys are matched by ``CASE key WHEN :k1 THEN 1 …``, the column's own
    comparison, and a mismatch divides by zero: the whole batch rolls back); replace the unit's ledger rows.
    Redshift has no ``VALUES`` list in ``FROM``: expected counts are a ``UNION ALL`` of one-row selects.
    """
    if not members:
        raise ValueError("at least one key")
    target = qualified(spec.schema, spec.table, "redshift")
    key_col = quote_ident(spec.key_column, "redshift")
    ledger = qualified(spec.schema, LEDGER_TABLE, "redshift")
    params = {f"k{i + 1}": m.key for i, m in enumerate(members)}
    marks = ", ".join(f":k{i + 1}" for i in range(len(members)))
    total = sum(int(m.rows) for m in members)
    copied = f"SELECT 1 / CASE WHEN pg_last_copy_count() = {total} THEN 1 ELSE 0 END AS copied_rows_match"
    expected = " UNION ALL ".join(
        f"SELECT {i + 1} AS i, {int(m.rows)} AS n" if i == 0 else f"SELECT {i + 1}, {int(m.rows)}"
        for i, m in enumerate(members)
    )

    def which(col: str) -> str:
        whens = " ".join(f"WHEN :k{i + 1} THEN {i + 1}" for i in range(len(members)))
        return f"CASE {col} {whens} END"

    if spec.load_mode == "merge":
        stage = quote_ident(MERGE_STAGE, "redshift")
        on = " AND ".join(f"t.{quote_ident(k, 'redshift')} = s.{quote_ident(k, 'redshift')}" for k in spec.primary_key)
        loaded = (
            f"SELECT {which('t.' + key_col)} AS i, count(*) AS n FROM {target} AS t JOIN {stage} AS s "  # noqa: S608
            f"ON {on} GROUP BY 1"
        )
        head = [render_lock_target(spec, "redshift"), render_create_merge_stage(spec, "redshift"), copy_sql, copied]
        head.append(render_merge(spec, "redshift"))
    else:
        loaded = (
            f"SELECT {which(key_col)} AS i, count(*) AS n FROM {target} "  # noqa: S608 - quoted idents
            f"WHERE {key_col} IN ({marks}) GROUP BY 1"
        )
        head = [
            render_lock_target(spec, "redshift"),
            f"DELETE FROM {target} WHERE {key_col} IN ({marks})",  # noqa: S608 - quoted idents
            copy_sql,
            copied,
        ]
    reconcile = (
        "SELECT 1 / CASE WHEN count(*) = 0 THEN 1 ELSE 0 END AS unit_rows_match "  # noqa: S608 - keyflow's text
        f"FROM ({expected}) AS e LEFT JOIN ({loaded}) AS l ON l.i = e.i WHERE COALESCE(l.n, 0) <> e.n"
    )
    # Ledger rows: keys with the same run dates (every key of a daily run; a backfill's keys share theirs) form one
    # group, written as keys × dates, so a year of dates costs 365 dates and not 365 rows per key in the SQL text.
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault(m.dates, []).append(i + 1)
    date_mark: dict[str, str] = {}
    for dates in groups:
        for day in dates:
            if day not in date_mark:
                date_mark[day] = f"d{len(date_mark) + 1}"
                params[date_mark[day]] = day
    deletes, selects = [], []
    for dates, idx in groups.items():
        keys_in = ", ".join(f":k{i}" for i in idx)
        days_in = ", ".join(f"CAST(:{date_mark[d]} AS DATE)" for d in dates)
        deletes.append(f"(key IN ({keys_in}) AND run_date IN ({days_in}))")
        kv = " UNION ALL ".join(
            f"SELECT :k{i} AS kv, {int(members[i - 1].rows)} AS nv"
            if j == 0
            else f"SELECT :k{i}, {int(members[i - 1].rows)}"
            for j, i in enumerate(idx)
        )
        dv = " UNION ALL ".join(
            f"SELECT :{date_mark[d]} AS dv" if j == 0 else f"SELECT :{date_mark[d]}" for j, d in enumerate(dates)
        )
        selects.append(
            "SELECT :dataset, k.kv, CAST(d.dv AS DATE), :run_id, k.nv, CAST(:loaded_at AS TIMESTAMPTZ) "  # noqa: S608
            f"FROM ({kv}) AS k CROSS JOIN ({dv}) AS d"
        )
    sqls = [
        *head,
        reconcile,
        f"DELETE FROM {ledger} WHERE dataset = :dataset AND ({' OR '.join(deletes)})",  # noqa: S608
        f"INSERT INTO {ledger} (dataset, key, run_date, run_id, rows_loaded, loaded_at) " + " UNION ALL ".join(selects),
    ]
    checks = (3, len(head))
    return sqls, params, checks
