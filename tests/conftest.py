"""Shared fixtures: the real services on this machine (PostgreSQL, MariaDB), a moto server over HTTP for AWS,
and a Prefect test harness. A missing service is a failure with a clear message, never a skip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

pytest.register_assert_rewrite("tests.helpers")  # before any test module imports them: helpers' asserts explain too

from tests.helpers.config_files import write_yaml  # noqa: E402
from tests.helpers.services import PG_DSN, PG_URL, require_service, unique  # noqa: E402

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# A test needs a service when it uses one of these fixtures (directly or through another fixture), or when it lives in
# a tier that runs against the real thing: adapters in tests/io, flows end to end in tests/flows, the fault matrix in
# tests/faults (see DEVELOPERS.md).
SERVICE_FIXTURES = frozenset({"pg", "mysql", "aws_endpoint", "prefect_harness", "redshift_standin"})
SERVICE_TIERS = tuple(Path(__file__).parent / tier for tier in ("io", "flows", "faults"))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark with ``services`` every test that needs PostgreSQL, MariaDB, RabbitMQ, moto or a Prefect server."""
    for item in items:
        in_tier = any(item.path.is_relative_to(tier) for tier in SERVICE_TIERS)
        if in_tier or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    """A moto server on a free loopback port: boto3 reaches it over HTTP, the production code path."""
    from tasks.io.aws import reset_clients
    from tasks.io.emulator import EmbeddedAWS

    with EmbeddedAWS() as aws:
        reset_clients()
        yield aws.endpoint_url
    reset_clients()


@pytest.fixture(scope="session")
def redshift_standin(aws_endpoint: str, pg: Any) -> Iterator[Any]:
    """The Redshift stand-in (tests/helpers/redshift_standin.py): the Data API over HTTP, SQL run on PostgreSQL."""
    from tests.helpers.redshift_standin import RedshiftStandIn

    with RedshiftStandIn(aws_endpoint) as standin:
        yield standin


@pytest.fixture(scope="session")
def kms_key_id(aws_endpoint: str) -> str:
    from tasks.io.aws import client

    kms = client("kms", "us-east-1", aws_endpoint)
    return str(kms.create_key(Description="keyflow tests")["KeyMetadata"]["KeyId"])


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def pg() -> Iterator[Any]:
    """An autocommit psycopg2 connection to the PostgreSQL test database."""
    require_service(5432, "PostgreSQL")
    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def mysql() -> Iterator[Any]:
    """An autocommit PyMySQL connection to the MariaDB test database."""
    import pymysql

    require_service(3306, "MariaDB")
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test", autocommit=True)
    yield conn
    conn.close()


@pytest.fixture()
def names() -> dict[str, str]:
    """Fresh names per test, so tests never see each other's tables, buckets or keys."""
    return {
        "src_table": unique("src"),
        "wh_schema": unique("wh"),
        "bucket": unique("kf").replace("_", "-"),
        "keys_table": unique("keys"),
    }


@pytest.fixture()
def make_profile(tmp_path: Path, aws_endpoint: str, kms_key_id: str, names: dict[str, str]) -> Any:
    """Write a profile YAML for this test (PostgreSQL warehouse, the moto server) and create its bucket/table."""

    def make(source_url: str = PG_URL, **extra: Any) -> Path:
        from config.loader import load_profile
        from tasks.resources import key_store_for, object_store_for

        data = {
            "name": "pytest",
            "source_url": source_url,
            "warehouse_kind": "postgres",
            "warehouse_url": PG_URL.replace("+psycopg2", ""),
            "aws_endpoint_url": aws_endpoint,
            "bucket": names["bucket"],
            "prefix": "staging",
            "kms_key_id": kms_key_id,
            "keys_table": names["keys_table"],
            "max_parallel_keys": 3,
            "secrets": {"email_salt": {"env": "KEYFLOW_EMAIL_SALT"}},
        } | extra
        path = write_yaml(tmp_path / "profiles" / "pytest.yaml", data)
        prof = load_profile(path, environ={})
        object_store_for(prof).ensure_bucket()
        key_store_for(prof).ensure_table()
        return path

    return make


@pytest.fixture(autouse=True)
def _clean_keyflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiles read KEYFLOW_* overrides at call time: start every test without stray ones."""
    for var in list(os.environ):
        if var.startswith("KEYFLOW_") and not var.startswith("KEYFLOW_TEST_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("KEYFLOW_EMAIL_SALT", "s3nt1nel-salt-never-logged")
