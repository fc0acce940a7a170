"""Database URLs in a profile (issue 13, item 2): plain URLs get the drivers keyflow installs, and a URL keyflow
cannot use is one line naming the file and the field when the profile loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.loader import load_profile
from config.urls import with_default_driver

PROFILE = """\
source_url: {source}
warehouse_kind: {kind}
warehouse_url: {warehouse}
trends_url: {trends}
bucket: my-bucket
"""


def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fields: str) -> list[str]:
    values = {
        "source": "mysql://etl@rds:3306/m",
        "kind": "postgres",
        "warehouse": "postgresql://loader@wh:5432/y",
        "trends": "postgresql://trends@pg:5432/t",
    } | fields
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "profiles" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(PROFILE.format(**values))
    try:
        load_profile(path, environ={})
    except ConfigError as exc:
        return exc.problems
    return []


def test_plain_urls_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(tmp_path, monkeypatch) == []
    assert problems(tmp_path, monkeypatch, source="postgres://etl@db/x", kind="duckdb", warehouse="w.duckdb") == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"source": "not a url"},
            "profiles/p.yaml: source_url: 'not a url' is not a database URL "
            "(e.g. postgresql://user@host:5432/db or mysql://user@host:3306/db)",
        ),
        (
            {"source": "postgresql+psycopg://etl@db/x"},
            "profiles/p.yaml: source_url: driver 'psycopg' is not installed "
            "(keyflow installs psycopg2: write postgresql://… to use it)",
        ),
        (
            {"source": "mysql+mysqldb://etl@db/x"},
            "profiles/p.yaml: source_url: driver 'mysqldb' is not installed "
            "(keyflow installs pymysql: write mysql://… to use it)",
        ),
        (
            {"source": "mysql+odbc://etl@db/x"},
            "profiles/p.yaml: source_url: unknown driver 'odbc' for mysql "
            "(keyflow installs pymysql: write mysql://… to use it)",
        ),
        (
            {"source": "mssql://etl@db/x"},
            "profiles/p.yaml: source_url: 'mssql' databases are not supported here "
            "(use postgresql, mysql, mariadb, sqlite)",
        ),
        (
            {"warehouse": "mysql://loader@wh:3306/y"},
            "profiles/p.yaml: warehouse_url: 'mysql' databases are not supported here (use postgresql, redshift)",
        ),
        (
            {"warehouse": "postgresql+pg8000://loader@wh/y"},
            "profiles/p.yaml: warehouse_url: driver 'pg8000': keyflow connects to this database with psycopg2; "
            "write postgresql://…",
        ),
        (
            {"kind": "duckdb", "warehouse": "postgresql://loader@wh/y"},
            "profiles/p.yaml: warehouse_url: warehouse_kind 'duckdb' takes a file path, not a URL",
        ),
        (
            {"trends": "postgresql://trends@pg:port/t"},
            "profiles/p.yaml: trends_url: 'postgresql://trends@pg:port/t' has a port that is not a number "
            "from 0 to 65535",
        ),
    ],
)
def test_a_url_keyflow_cannot_use_is_one_line_naming_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, str], message: str
) -> None:
    assert problems(tmp_path, monkeypatch, **fields) == [message]


def test_the_loaded_profile_knows_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "profiles" / "p.yaml"
    path.parent.mkdir()
    path.write_text(PROFILE.format(source="sqlite://", kind="duckdb", warehouse="w.duckdb", trends="''"))
    assert load_profile(path, environ={}).file == "profiles/p.yaml"


@pytest.mark.parametrize(
    ("url", "with_driver"),
    [
        ("postgresql://u@h:5432/d", "postgresql+psycopg2://u@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg2://u@h/d"),
        ("mysql://u@h/d?charset=utf8mb4", "mysql+pymysql://u@h/d?charset=utf8mb4"),
        ("mariadb://u@h/d", "mariadb+pymysql://u@h/d"),
        ("sqlite:///x.db", "sqlite+pysqlite:///x.db"),
        ("mysql+pymysql://u@h/d", "mysql+pymysql://u@h/d"),
        ("postgres+psycopg2://u@h/d", "postgresql+psycopg2://u@h/d"),
    ],
)
def test_plain_urls_get_the_drivers_keyflow_installs(url: str, with_driver: str) -> None:
    assert with_default_driver(url) == with_driver
