"""Database URLs as a profile writes them: checked without SQLAlchemy, and given the drivers keyflow installs.

SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg (v3) and ``mysql://`` as mysqlclient, neither of which
keyflow installs; keyflow reads them as psycopg2 and PyMySQL (:func:`with_default_driver`). A URL that names its
driver (``mysql+pymysql://``) is kept as given, as long as the driver is one SQLAlchemy knows and it is installed
(:func:`url_problem`). Pure: no SDK is imported here (``importlib.util.find_spec`` only looks for the module).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Collection
from urllib.parse import urlsplit

# SQLAlchemy's synchronous drivers per backend, and the module each needs (async drivers cannot run here).
DRIVERS: dict[str, dict[str, str]] = {
    "postgresql": {"psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000", "psycopg2cffi": "psycopg2cffi"},
    "mysql": {
        "pymysql": "pymysql",
        "mysqldb": "MySQLdb",
        "mysqlconnector": "mysql.connector",
        "mariadbconnector": "mariadb",
    },
    "sqlite": {"pysqlite": "sqlite3", "pysqlcipher": "sqlcipher3"},
}
DRIVERS["mariadb"] = DRIVERS["mysql"]
DEFAULT_DRIVERS = {"postgresql": "psycopg2", "mysql": "pymysql", "mariadb": "pymysql", "sqlite": "pysqlite"}
ALIASES = {"postgres": "postgresql"}  # the scheme Heroku and libpq users write; SQLAlchemy no longer reads it

SOURCE_BACKENDS = ("postgresql", "mysql", "mariadb", "sqlite")
POSTGRES_BACKENDS = ("postgresql", "redshift")  # reached with psycopg2 (the warehouse, trend counts)

_SCHEME = re.compile(r"\A(?P<backend>[A-Za-z][A-Za-z0-9_]*)(?:\+(?P<driver>[A-Za-z0-9_]+))?://(?P<rest>.*)\Z", re.S)
EXAMPLE = "e.g. postgresql://user@host:5432/db or mysql://user@host:3306/db"


def _shown(url: str) -> str:
    return repr(url if len(url) <= 80 else url[:77] + "...")


def split_scheme(url: str) -> tuple[str, str | None, str] | None:
    """``(backend, driver or None, rest)`` of ``backend[+driver]://rest`` (aliases resolved), None if not a URL."""
    m = _SCHEME.match(url.strip())
    if not m:
        return None
    backend = m["backend"].lower()
    return ALIASES.get(backend, backend), (m["driver"].lower() if m["driver"] else None), m["rest"]


def url_problem(url: str, backends: Collection[str], psycopg2_only: bool = False) -> str | None:
    """Why ``url`` cannot be used as a database URL of one of ``backends`` (None when it can).

    Args:
        url: the URL as the profile (or its ``KEYFLOW_`` variable) gives it.
        backends: the backends this field accepts (``postgresql``, ``mysql``, ``mariadb``, ``sqlite``, ``redshift``).
        psycopg2_only: the field is reached with psycopg2 whatever the URL says (warehouse, trend counts).
    """
    parts = split_scheme(url)
    if parts is None:
        return f"{_shown(url)} is not a database URL ({EXAMPLE})"
    backend, driver, rest = parts
    if backend not in backends:
        return f"{backend!r} databases are not supported here (use {', '.join(backends)})"
    try:
        urlsplit(f"x://{rest}").port  # noqa: B018 - reading it validates it
    except ValueError:
        return f"{_shown(url)} has a port that is not a number from 0 to 65535"
    if driver is None:
        return None
    if psycopg2_only or backend == "redshift":
        if driver != "psycopg2":
            return f"driver {driver!r}: keyflow connects to this database with psycopg2; write {backend}://…"
        return None
    known = DRIVERS.get(backend, {})
    if driver not in known:
        return (
            f"unknown driver {driver!r} for {backend} (keyflow installs {DEFAULT_DRIVERS[backend]}: "
            f"write {backend}://… to use it)"
        )
    if importlib.util.find_spec(known[driver].split(".")[0]) is None:
        return (
            f"driver {driver!r} is not installed (keyflow installs {DEFAULT_DRIVERS[backend]}: "
            f"write {backend}://… to use it)"
        )
    return None


def with_default_driver(url: str) -> str:
    """The URL with keyflow's driver when it names none (``mysql://`` → ``mysql+pymysql://``); else unchanged."""
    parts = split_scheme(url)
    if parts is None:
        return url
    backend, driver, rest = parts
    if driver is None and backend in DEFAULT_DRIVERS:
        return f"{backend}+{DEFAULT_DRIVERS[backend]}://{rest}"
    if driver is not None and url.strip().split("+", 1)[0].lower() in ALIASES:
        return f"{backend}+{driver}://{rest}"
    return url
