"""Database connections in one place, and their errors mapped to keyflow's retry-or-fail classes.

- SQLAlchemy engines (any database: the ETL's source, the RDS table landing files are loaded into), one per URL
  and process; :func:`translate_db_error` maps SQLAlchemy's errors.
- psycopg2 connections to PostgreSQL or Redshift (the warehouse, the trend counts), one per unit of work, from
  :func:`pg_dsn`; :func:`pg_connect` and :func:`pg_error` map psycopg2's errors.

Connection trouble is a :class:`RetryableError`; any other database error fails the key with the database's own
first line (:func:`config.errors.first_line`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from config.errors import KeyFailedError, KeyflowError, RetryableError, first_line

_lock = threading.Lock()
_engines: dict[str, sa.Engine] = {}


def engine_for(url: str, password: str | None = None, pool_size: int = 4) -> sa.Engine:
    """One SQLAlchemy engine per URL, made once per process (engines pool connections and are thread-safe)."""
    u = sa.make_url(url)
    if password:
        u = u.set(password=password)
    if u.get_backend_name() in ("mysql", "mariadb") and "charset" not in u.query:
        u = u.update_query_dict({"charset": "utf8mb4"})
    cache_key = u.render_as_string(hide_password=False)
    with _lock:
        if cache_key not in _engines:
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if u.get_backend_name() != "sqlite":
                kwargs.update(pool_size=max(pool_size, 1), max_overflow=2)
            _engines[cache_key] = sa.create_engine(u, **kwargs)
        return _engines[cache_key]


def dialect_of(engine: sa.Engine) -> str:
    """The keyflow dialect name of an engine (``postgres``, ``mysql``, ``sqlite``…)."""
    name = engine.dialect.name
    return {"postgresql": "postgres", "mariadb": "mysql"}.get(name, name)


def translate_db_error(exc: Exception, what: str) -> Exception:
    """Connection trouble retries; anything else fails the key with the database's own first line."""
    first = first_line(getattr(exc, "orig", exc)) if str(exc).strip() else type(exc).__name__
    if isinstance(exc, sa_exc.OperationalError | sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return RetryableError(f"{what}: {first}")
    return KeyFailedError(f"{what}: {first}")


# Concurrent "CREATE … IF NOT EXISTS" can still collide in PostgreSQL's catalogs.
CREATE_RACES = (
    psycopg2.errors.UniqueViolation,
    psycopg2.errors.DuplicateObject,
    psycopg2.errors.DuplicateSchema,
    psycopg2.errors.DuplicateTable,
)


def pg_dsn(url: str, password: str | None = None, application: str = "keyflow") -> dict[str, Any]:
    """psycopg2 connection arguments from a SQLAlchemy-style URL (the password comes from a secret, not the URL)."""
    u = sa.make_url(url)
    dsn = {
        "host": u.host or None,
        "port": u.port or None,
        "dbname": u.database,
        "user": u.username,
        "password": password or u.password,
        "connect_timeout": 10,
        "application_name": application,
    }
    return {k: v for k, v in dsn.items() if v is not None}


def pg_error(exc: psycopg2.Error, what: str, failed: str | None = None) -> KeyflowError:
    """A psycopg2 error as keyflow's, with the database's first line.

    Connection trouble retries (``what: …``), anything else fails the key (``failed: …``, ``what`` when not given).
    """
    if isinstance(exc, psycopg2.OperationalError):
        return RetryableError(f"{what}: {first_line(exc)}")
    return KeyFailedError(f"{failed or what}: {first_line(exc)}")


def pg_connect(dsn: dict[str, Any], what: str = "warehouse") -> Any:
    """A new psycopg2 connection; a refused or lost one is a :class:`RetryableError` (``connect to <what>: …``)."""
    try:
        return psycopg2.connect(**dsn)
    except psycopg2.OperationalError as exc:
        raise pg_error(exc, f"connect to {what}") from None


@contextmanager
def pg_connection(dsn: dict[str, Any], what: str = "warehouse") -> Iterator[Any]:
    """A psycopg2 connection for one unit of work, closed after it (uncommitted work is rolled back)."""
    conn = pg_connect(dsn, what)
    try:
        yield conn
    finally:
        conn.close()
