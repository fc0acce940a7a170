"""Database connections in one place, and their errors mapped to keyflow's retry-or-fail classes.

- SQLAlchemy engines (any database: the ETL's source, the RDS table landing files are loaded into), one per URL
  and process; :func:`translate_db_error` maps SQLAlchemy's errors.
- psycopg2 connections to PostgreSQL or Redshift (the warehouse, the trend counts), one per unit of work, from
  :func:`pg_dsn`; :func:`pg_connect` and :func:`pg_error` map psycopg2's errors.

Errors are sorted by what can succeed on retry (:func:`permanent_reason`): a wrong password, a missing database,
role or table, a refused permission or a host name that does not resolve is a :class:`ConfigError` at once, naming
the database (``user@host:port/db``); other connection trouble (refused, reset, timed out) is a
:class:`RetryableError`; any other database error fails the key with the database's own first line
(:func:`config.errors.first_line`).

A dropped connection (:func:`is_disconnect`: the server restarted or failed over, a backend was terminated, MySQL's
"gone away" or "lost connection") is connection trouble too, whichever call notices it: the statement, the
rollback after it (``connection already closed``) or the pool's reset. The retry opens a fresh connection: a dead
one is closed or invalidated, never handed out again (:func:`rollback_quietly`; engines pre-ping their pool).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from config.errors import ConfigError, KeyFailedError, KeyflowError, RetryableError, first_line
from config.urls import POSTGRES_BACKENDS, SOURCE_BACKENDS, url_problem, with_default_driver
from tasks.io.net import dns_is_down

_lock = threading.Lock()
_engines: dict[str, sa.Engine] = {}


def sqlalchemy_url(url: str, password: str | None = None) -> sa.URL:
    """The URL with keyflow's drivers (``mysql://`` → PyMySQL, ``postgresql://`` → psycopg2) and ``password``.

    A URL keyflow cannot use is a one-line :class:`ConfigError` (the profile check catches it earlier).
    """
    problem = url_problem(url, SOURCE_BACKENDS)
    if problem:
        raise ConfigError(problem)
    try:
        u = sa.make_url(with_default_driver(url))
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"not a database URL: {first_line(exc)}") from None
    if password:
        u = u.set(password=password)
    if u.get_backend_name() in ("mysql", "mariadb") and "charset" not in u.query:
        u = u.update_query_dict({"charset": "utf8mb4"})
    return u


def engine_for(url: str, password: str | None = None, pool_size: int = 4) -> sa.Engine:
    """One SQLAlchemy engine per URL, made once per process (engines pool connections and are thread-safe)."""
    u = sqlalchemy_url(url, password)
    cache_key = u.render_as_string(hide_password=False)
    with _lock:
        if cache_key not in _engines:
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if u.get_backend_name() != "sqlite":
                kwargs.update(pool_size=max(pool_size, 1), max_overflow=2)
            try:
                _engines[cache_key] = sa.create_engine(u, **kwargs)
            except (ImportError, sa_exc.ArgumentError) as exc:  # NoSuchModuleError is an ArgumentError
                raise ConfigError(f"{u.drivername}: driver not available: {first_line(exc)}") from None
        return _engines[cache_key]


def unpooled_engine(engine: sa.Engine) -> sa.Engine:
    """An engine on ``engine``'s URL whose connections are opened and closed one by one, outside its pool."""
    return sa.create_engine(engine.url, poolclass=sa.pool.NullPool, pool_pre_ping=True)


def dialect_of(engine: sa.Engine) -> str:
    """The keyflow dialect name of an engine (``postgres``, ``mysql``, ``sqlite``…)."""
    name = engine.dialect.name
    return {"postgresql": "postgres", "mariadb": "mysql"}.get(name, name)


def describe_url(url: sa.URL) -> str:
    """``user@host:port/database`` of a URL, never its password (``file.db`` for SQLite)."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return _describe(url.username, url.host, url.port, url.database)


def describe_dsn(dsn: Mapping[str, Any]) -> str:
    """``user@host:port/dbname`` of psycopg2 connection arguments, never the password."""
    return _describe(dsn.get("user"), dsn.get("host"), dsn.get("port"), dsn.get("dbname"))


def _describe(user: str | None, host: str | None, port: int | None, database: str | None) -> str:
    where = f"{host or 'localhost'}{f':{port}' if port else ''}/{database or ''}"
    return f"{user}@{where}" if user else where


# PostgreSQL SQLSTATEs and MySQL error numbers that no retry can fix: the profile or a grant is wrong.
PG_PERMANENT = {
    "28P01": "authentication failed",
    "28000": "authorization refused",
    "3D000": "no such database",
    "42P01": "no such table",
    "3F000": "no such schema",
    "42501": "permission denied",
}
MYSQL_PERMANENT = {
    1045: "authentication failed",
    1044: "access to the database denied",
    1049: "no such database",
    1146: "no such table",
    1142: "permission denied",
    1143: "permission denied",
    2005: "unknown host",
}
# libpq reports a refused login without a SQLSTATE: its messages are all there is.
PG_CONNECT_PERMANENT = (
    ("password authentication failed", "authentication failed"),
    ("no password supplied", "authentication failed"),
    ("no pg_hba.conf entry", "authorization refused"),
    ('role "', "authentication failed"),  # role "x" does not exist
    ('database "', "no such database"),  # database "x" does not exist
    ("could not translate host name", "unknown host"),
    ("permission denied for database", "permission denied"),
)
UNKNOWN_HOST = ("name or service not known", "nodename nor servname", "no address associated with hostname")


# SQLSTATEs of a connection the server ended or refuses for now: class 08 (connection exception), an administrator's
# or a crash's shutdown (57P01, 57P02), "the database system is starting up / shutting down" (57P03).
PG_DISCONNECT_STATES = ("57P01", "57P02", "57P03")
# MySQL client errors of a dropped or refused connection: can't connect (2002, 2003), gone away (2006), lost during
# a query (2013), lost at handshake (2055); and the server's own shutdown in progress (1053).
MYSQL_DISCONNECT = {1053, 2002, 2003, 2006, 2013, 2055}
DISCONNECT_TEXT = (
    "connection already closed",
    "server closed the connection unexpectedly",
    "terminating connection",
    "the database system is",
    "connection refused",
    "lost connection",
    "gone away",
    "broken pipe",
    "connection reset",
)


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver's error, or SQLAlchemy's wrapping one) says the connection dropped or was refused.

    A retry on a fresh connection can succeed: the server restarted or failed over, or the backend was terminated.
    psycopg2 reports a connection it found dead as ``InterfaceError: connection already closed``; PyMySQL a closed
    one as ``InterfaceError (0, '')``.
    """
    if getattr(exc, "connection_invalidated", False):
        return True  # SQLAlchemy saw the driver's disconnect and invalidated the connection
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "pgcode", None)
    if isinstance(code, str) and (code.startswith("08") or code in PG_DISCONNECT_STATES):
        return True
    args = getattr(orig, "args", ())
    if type(orig).__module__.startswith(("pymysql", "MySQLdb")) and args and isinstance(args[0], int):
        return args[0] in MYSQL_DISCONNECT or (args[0] == 0 and type(orig).__name__ == "InterfaceError")
    if isinstance(orig, psycopg2.OperationalError | psycopg2.InterfaceError | ConnectionError):
        return True
    text = str(orig).lower()
    return any(needle in text for needle in DISCONNECT_TEXT)


def rollback_quietly(conn: Any) -> None:
    """Roll back ``conn``; a connection that is already dead needs no rollback (its server ended the transaction).

    Raising here would hide the error that killed the connection (``connection already closed`` instead of the
    server's "terminating connection"), and that error is the one that says a retry can succeed.
    """
    try:
        conn.rollback()
    except Exception as exc:
        if not is_disconnect(exc):
            raise


def permanent_reason(exc: BaseException) -> str | None:
    """Why retrying ``exc`` (a driver's error, or SQLAlchemy's wrapping one) cannot help; None when it might."""
    orig = getattr(exc, "orig", None) or exc
    if dns_is_down(orig):
        return None  # the resolver itself failed (EAI_AGAIN): the name may resolve again, as during a failover
    if isinstance(orig, socket.gaierror):
        return "unknown host"
    code = getattr(orig, "pgcode", None)
    if code in PG_PERMANENT:
        return PG_PERMANENT[code]
    text = str(orig).lower()
    if isinstance(orig, psycopg2.OperationalError) and code is None:
        for needle, reason in PG_CONNECT_PERMANENT:
            if needle in text and (not needle.endswith('"') or "does not exist" in text):
                return reason
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and type(orig).__module__.startswith(("pymysql", "MySQLdb")):
        if args[0] in MYSQL_PERMANENT:
            return MYSQL_PERMANENT[args[0]]
        if args[0] == 2003 and any(n in text for n in UNKNOWN_HOST):
            return "unknown host"
    return None


_LIBPQ_PREFIX = re.compile(r'^connection to server (?:at "[^"]*"(?: \([^)]*\))?, port \d+|on socket "[^"]*") failed: ')


def _driver_line(exc: BaseException) -> str:
    """The driver's own first line, without what the caller names already.

    libpq's ``connection to server at "h", port p failed: FATAL:`` prefix goes; PyMySQL's ``(1045, "Access
    denied…")`` reads ``Access denied… (error 1045)``.
    """
    orig = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return f"{first_line(args[1])} (error {args[0]})"
    line = first_line(orig) if str(orig).strip() else type(orig).__name__
    return _LIBPQ_PREFIX.sub("", line).removeprefix("FATAL:").strip()


def translate_db_error(exc: Exception, what: str, where: str | None = None) -> Exception:
    """A permanent error is a :class:`ConfigError`, connection trouble retries, anything else fails the key.

    ``what`` says what was being done; ``where`` names the database (:func:`describe_url`) in the messages of
    permanent and connection errors.
    """
    head = f"{what} ({where})" if where else what
    if permanent_reason(exc):
        return ConfigError(f"{head}: {_driver_line(exc)}")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.DisconnectionError | sa_exc.TimeoutError) or is_disconnect(exc):
        return RetryableError(f"{head}: {_driver_line(exc)}")
    return KeyFailedError(f"{what}: {_driver_line(exc)}")  # the statement failed: the database is not the point


# Concurrent "CREATE … IF NOT EXISTS" can still collide in PostgreSQL's catalogs.
CREATE_RACES = (
    psycopg2.errors.UniqueViolation,
    psycopg2.errors.DuplicateObject,
    psycopg2.errors.DuplicateSchema,
    psycopg2.errors.DuplicateTable,
)


def pg_dsn(url: str, password: str | None = None, application: str = "keyflow") -> dict[str, Any]:
    """psycopg2 connection arguments from a SQLAlchemy-style URL (the password comes from a secret, not the URL)."""
    problem = url_problem(url, POSTGRES_BACKENDS, psycopg2_only=True)
    if problem:
        raise ConfigError(problem)
    try:
        u = sa.make_url(url)
        port = u.port
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"not a database URL: {first_line(exc)}") from None
    dsn = {
        "host": u.host or None,
        "port": port or None,
        "dbname": u.database,
        "user": u.username,
        "password": password or u.password,
        "connect_timeout": 10,
        "application_name": application,
    }
    return {k: v for k, v in dsn.items() if v is not None}


def pg_error(exc: psycopg2.Error, what: str, failed: str | None = None, where: str | None = None) -> KeyflowError:
    """A psycopg2 error as keyflow's, with the database's first line.

    A permanent one (a wrong password, a missing database or table, a refused permission, an unknown host) is a
    :class:`ConfigError`; other connection trouble retries (``what: …``); anything else fails the key (``failed:
    …``, ``what`` when not given). ``where`` names the database (:func:`describe_dsn`).
    """
    head = f"{what} ({where})" if where else what
    if permanent_reason(exc):
        return ConfigError(f"{failed or head}: {_driver_line(exc)}")
    if is_disconnect(exc):
        return RetryableError(f"{head}: {_driver_line(exc)}")
    return KeyFailedError(f"{failed or what}: {first_line(exc)}")


def pg_connect(dsn: dict[str, Any], what: str = "warehouse") -> Any:
    """A new psycopg2 connection.

    A refused or lost one is a :class:`RetryableError` (``connect to <what>: …``); a wrong password, a missing
    database or an unknown host a :class:`ConfigError`.
    """
    try:
        return psycopg2.connect(**dsn)
    except psycopg2.OperationalError as exc:
        raise pg_error(exc, f"connect to {what}", where=describe_dsn(dsn)) from None


@contextmanager
def pg_connection(dsn: dict[str, Any], what: str = "warehouse") -> Iterator[Any]:
    """A psycopg2 connection for one unit of work, closed after it (uncommitted work is rolled back).

    A connection that drops during the work is a :class:`RetryableError` naming the database, whatever statement
    noticed it; the next unit of work opens a new one.
    """
    conn = pg_connect(dsn, what)
    try:
        yield conn
    except psycopg2.Error as exc:
        if is_disconnect(exc) and not permanent_reason(exc):
            raise pg_error(exc, what, where=describe_dsn(dsn)) from None
        raise
    finally:
        conn.close()
