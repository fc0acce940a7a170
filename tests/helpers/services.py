"""Where the test services are, and fresh names on them: tests share the services, never their data."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

PG_URL = os.environ.get("KEYFLOW_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
PG_DSN = os.environ.get("KEYFLOW_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
MYSQL_URL = os.environ.get("KEYFLOW_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def require_service(port: int, what: str) -> None:
    """Fail the test with a clear message (never skip it) when nothing listens on ``127.0.0.1:port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.fail(f"{what} is not reachable on 127.0.0.1:{port}; start it with `make services`", pytrace=False)


def unique(prefix: str) -> str:
    """A fresh name, so tests never see each other's tables, buckets or keys."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    """A loopback port nothing listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_with(marker: str) -> list[int]:
    """Processes whose environment carries ``marker``: a command started with it and everything it started."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
