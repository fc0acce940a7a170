"""Fixtures of the fault matrix: servers of a test's own, which it may stop and restart (never the shared ones)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.private_db import PrivatePostgres


@pytest.fixture()
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test alone, which it may restart (never the shared one)."""
    server = PrivatePostgres()
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.remove()
