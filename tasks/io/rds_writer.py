"""Upsert checked rows into an RDS table (PostgreSQL or MySQL/MariaDB) with the file's ledger row, atomically.

The ledger (``keyflow_file_ledger``, beside the target table) holds one row per (source, content hash): a file
is marked done in the same transaction that commits its rows, so a rerun never loads a file twice, and a crash
before the commit leaves neither rows nor mark.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql

from config.models import FileSourceConfig
from config.types import parse_type
from tasks.io.databases import describe_url, dialect_of, engine_for, translate_db_error

LEDGER = "keyflow_file_ledger"


@dataclass(frozen=True)
class LedgerEntry:
    """What happened to one file."""

    source: str
    sha256: str
    file_key: str
    status: str  # loaded | quarantined
    rows_in: int
    rows_loaded: int
    rows_rejected: int
    reason: str = ""


class AlreadyLoaded(Exception):
    """Another file with the same content committed first (two copies loaded at once): nothing to do."""

    def __init__(self, entry: LedgerEntry) -> None:
        self.entry = entry
        super().__init__(f"content already {entry.status} as {entry.file_key}")


class RdsWriter:
    """The RDS database that landing files are loaded into (one writer may serve a run's parallel files)."""

    def __init__(self, url: str, password: str | None = None) -> None:
        self.engine = engine_for(url, password)
        self.where = describe_url(self.engine.url)  # user@host:port/db, for error messages
        self.dialect = dialect_of(self.engine)
        self._meta = sa.MetaData()
        self._meta_lock = threading.Lock()  # two threads defining the same table would collide in the MetaData

    def _table(self, source: FileSourceConfig) -> sa.Table:
        keys = {k.lower() for k in source.primary_key}
        name = source.target.table
        schema = source.target.db_schema
        key = f"{schema}.{name}" if schema else name
        with self._meta_lock:
            if key in self._meta.tables:
                return self._meta.tables[key]
            return sa.Table(
                name,
                self._meta,
                *[
                    sa.Column(c.name, _sa_type(c.type, c.name.lower() in keys), primary_key=c.name.lower() in keys)
                    for c in source.columns
                ],
                schema=schema,
            )

    def _ledger(self, schema: str | None) -> sa.Table:
        key = f"{schema}.{LEDGER}" if schema else LEDGER
        with self._meta_lock:
            if key in self._meta.tables:
                return self._meta.tables[key]
            return self._define_ledger(schema)

    def _define_ledger(self, schema: str | None) -> sa.Table:
        return sa.Table(
            LEDGER,
            self._meta,
            sa.Column("source", sa.String(64), primary_key=True),
            sa.Column("sha256", sa.String(64), primary_key=True),
            sa.Column("file_key", sa.String(1024), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("rows_in", sa.BigInteger, nullable=False),
            sa.Column("rows_loaded", sa.BigInteger, nullable=False),
            sa.Column("rows_rejected", sa.BigInteger, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
            schema=schema,
        )

    def prepare(self, source: FileSourceConfig) -> None:
        """Create the target table (with its primary key) and the ledger when missing."""
        try:
            with self.engine.begin() as conn:
                if source.target.db_schema and self.dialect == "postgres":
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{source.target.db_schema}"'))
                self._table(source).create(conn, checkfirst=True)
                self._ledger(source.target.db_schema).create(conn, checkfirst=True)
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, f"prepare {source.target.table}", self.where) from None

    def check(self, source: FileSourceConfig) -> list[str]:
        """Problems with the target before a run, one line each.

        The database reached, the schema there (a MySQL database) or creatable (PostgreSQL), an existing table
        holding every column of the files with the same primary key. Connection trouble raises
        :class:`RetryableError`, a wrong password :class:`ConfigError`.
        """
        schema, name = source.target.db_schema, source.target.table
        shown = f"{schema}.{name}" if schema else name
        try:
            inspector = sa.inspect(self.engine)
            if schema and schema not in inspector.get_schema_names():
                if self.dialect == "postgres":
                    return []  # created by the run
                return [f"target.schema: database {schema!r} does not exist on {self.where}"]
            if not inspector.has_table(name, schema=schema):
                return []
            have = {c["name"].lower() for c in inspector.get_columns(name, schema=schema)}
            key = [c.lower() for c in inspector.get_pk_constraint(name, schema=schema).get("constrained_columns", [])]
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "check the target table", self.where) from None
        problems = []
        missing = [c.name for c in source.columns if c.name.lower() not in have]
        if missing:
            problems.append(
                f"target.table: table {shown} exists without column(s) {', '.join(missing)} that the files have; "
                "point target.table at another table or migrate it"
            )
        if sorted(key) != sorted(k.lower() for k in source.primary_key):
            problems.append(
                f"primary_key: table {shown} has primary key ({', '.join(key) or 'none'}), the files "
                f"({', '.join(source.primary_key)}): rows are upserted on it"
            )
        return problems

    def seen(self, source: FileSourceConfig, sha256: str) -> LedgerEntry | None:
        """The ledger row of a file's content, if it was handled before."""
        ledger = self._ledger(source.target.db_schema)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(ledger).where(ledger.c.source == source.name, ledger.c.sha256 == sha256)
                ).first()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, "read the file ledger", self.where) from None
        if row is None:
            return None
        m = row._mapping
        return LedgerEntry(
            m["source"],
            m["sha256"],
            m["file_key"],
            m["status"],
            m["rows_in"],
            m["rows_loaded"],
            m["rows_rejected"],
            m["reason"],
        )

    def load(self, source: FileSourceConfig, rows: pa.Table, entry: LedgerEntry, chunk: int = 5000) -> int:
        """Upsert ``rows`` by primary key and write the ledger row, in one transaction; returns rows written."""
        table = self._table(source)
        ledger = self._ledger(source.target.db_schema)
        keys = [table.c[k] for k in source.primary_key]
        others = [c.name for c in table.columns if not c.primary_key]
        records = rows.to_pylist()
        try:
            with self.engine.begin() as conn:
                for i in range(0, len(records), chunk):
                    part = records[i : i + chunk]
                    if self.dialect == "postgres":
                        pg = postgresql.insert(table)
                        stmt: Any = (
                            pg.on_conflict_do_update(index_elements=keys, set_={c: pg.excluded[c] for c in others})
                            if others
                            else pg.on_conflict_do_nothing(index_elements=keys)
                        )
                    elif self.dialect == "mysql":
                        my = mysql.insert(table)
                        stmt = my.on_duplicate_key_update({c: my.inserted[c] for c in others or [keys[0].name]})
                    else:
                        raise ValueError(f"file ingestion writes to PostgreSQL or MySQL, not {self.dialect}")
                    conn.execute(stmt, part)
                conn.execute(
                    sa.insert(ledger),
                    [{**entry.__dict__, "loaded_at": dt.datetime.now(dt.UTC)}],
                )
        except sa_exc.IntegrityError as exc:
            other = self.seen(source, entry.sha256)
            if other is not None:  # the ledger's key, not the data: a copy of this file won the race
                raise AlreadyLoaded(other) from None
            raise translate_db_error(exc, f"load {entry.file_key}", self.where) from None
        except sa_exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, f"load {entry.file_key}", self.where) from None
        return len(records)

    def quarantine(self, source: FileSourceConfig, entry: LedgerEntry) -> None:
        """Record a file that could not be read, so it is not tried again until its content changes."""
        self.load(source, pa.table({c.name: pa.array([], pa.string()) for c in source.columns}), entry)


def _sa_type(type_name: str, key: bool) -> Any:
    """The SQLAlchemy type of a keyflow column type (a text key gets a length: MySQL cannot index TEXT)."""
    t = parse_type(type_name)
    match t.kind:
        case "smallint":
            return sa.SmallInteger()
        case "integer":
            return sa.Integer()
        case "bigint":
            return sa.BigInteger()
        case "real":
            return sa.REAL()
        case "double":
            return sa.Double()
        case "decimal":
            return sa.Numeric(t.precision, t.scale)
        case "boolean":
            return sa.Boolean()
        case "date":
            return sa.Date()
        case "timestamp":
            return sa.DateTime()
        case "timestamptz":
            return sa.DateTime(timezone=True)
        case "varchar" if t.length:
            return sa.String(t.length)
        case _:
            return sa.String(255) if key else sa.Text()
