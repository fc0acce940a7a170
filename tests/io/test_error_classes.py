"""Database URLs and error classes on the real services (issue 13, items 2 and 4).

A plain ``postgresql://`` or ``mysql://`` URL uses the drivers keyflow installs; a URL keyflow cannot use is one
line. A wrong password, a missing database, an unknown host, a refused broker login, a missing bucket or table and
refused credentials fail at once with one line naming the resource; a refused connection stays retryable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from config.errors import ConfigError, KeyflowError, RetryableError
from tasks.io.broker import RabbitMQSource, check_queues
from tasks.io.databases import engine_for
from tasks.io.keystore import DynamoKeyStore
from tasks.io.objectstore import S3ObjectStore
from tasks.io.rds_writer import RdsWriter
from tasks.io.source import SqlSource
from tasks.io.warehouse import PostgresWarehouse
from tests.helpers.services import PG_DSN, free_port, require_service, unique


def failure(call: Callable[[], Any]) -> KeyflowError:
    """The keyflow error ``call`` raises: its class says whether a task retries it (ConfigError: never)."""
    with pytest.raises(KeyflowError) as caught:
        call()
    return caught.value


def test_plain_urls_use_the_drivers_keyflow_installs(pg: Any, mysql: Any) -> None:
    for url, driver in [
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql+psycopg2"),
        ("postgres://postgres@127.0.0.1:5432/test", "postgresql+psycopg2"),
        ("mysql://root@127.0.0.1:3306/test", "mysql+pymysql"),
        ("mariadb://root@127.0.0.1:3306/test", "mariadb+pymysql"),
        ("mysql+pymysql://root@127.0.0.1:3306/test", "mysql+pymysql"),  # a driver given is kept
    ]:
        source = SqlSource(url)
        source.ping()  # SQLAlchemy 2.1's defaults (psycopg, mysqlclient) are not installed: this raised
        assert source.engine.url.drivername == driver
    assert RdsWriter("mysql://root@127.0.0.1:3306/test").engine.url.drivername == "mysql+pymysql"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "garbage",
            "'garbage' is not a database URL (e.g. postgresql://user@host:5432/db or mysql://user@host:3306/db)",
        ),
        (
            "postgresql+psycopg://u@h/db",
            "driver 'psycopg' is not installed (keyflow installs psycopg2: write postgresql://… to use it)",
        ),
        (
            "mysql+nope://u@h/db",
            "unknown driver 'nope' for mysql (keyflow installs pymysql: write mysql://… to use it)",
        ),
        ("postgresql://u@h:54x2/db", "'postgresql://u@h:54x2/db' has a port that is not a number from 0 to 65535"),
        ("oracle://u@h/db", "'oracle' databases are not supported here (use postgresql, mysql, mariadb, sqlite)"),
    ],
)
def test_a_url_keyflow_cannot_use_is_one_config_line(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        engine_for(url)
    assert caught.value.problems == [message]


@pytest.fixture()
def mariadb_user(mysql: Any) -> Iterator[str]:
    """A MariaDB user whose password is ``right-Pw-1`` (PostgreSQL here trusts 127.0.0.1: no wrong password there)."""
    user = unique("kf_user")[:32]
    with mysql.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'right-Pw-1'")
        cur.execute(f"GRANT SELECT ON test.* TO '{user}'@'%'")
    yield user
    with mysql.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def test_a_wrong_password_fails_at_once_naming_the_database(mariadb_user: str) -> None:
    url = f"mysql://{mariadb_user}@127.0.0.1:3306/test"
    SqlSource(url, password="right-Pw-1").ping()
    error = failure(SqlSource(url, password="wrong-Pw-2").ping)
    assert isinstance(error, ConfigError)
    assert str(error).startswith(f"connect to source ({mariadb_user}@127.0.0.1:3306/test): Access denied for user")
    assert str(error).endswith("(using password: YES) (error 1045)") and "\n" not in str(error)
    assert "wrong-Pw-2" not in str(error)


def test_a_missing_database_fails_at_once(pg: Any, mysql: Any) -> None:
    missing = unique("nosuchdb")
    error = failure(SqlSource(f"postgresql://postgres@127.0.0.1:5432/{missing}").ping)
    assert isinstance(error, ConfigError)
    assert str(error) == f'connect to source (postgres@127.0.0.1:5432/{missing}): database "{missing}" does not exist'
    warehouse = PostgresWarehouse(f"postgresql://postgres@127.0.0.1:5432/{missing}")
    error = failure(lambda: warehouse.check(None, "public"))
    assert isinstance(error, ConfigError)
    assert (
        str(error) == f'connect to warehouse (postgres@127.0.0.1:5432/{missing}): database "{missing}" does not exist'
    )
    error = failure(SqlSource(f"mysql://root@127.0.0.1:3306/{missing}").ping)
    assert isinstance(error, ConfigError)
    assert str(error) == f"connect to source (root@127.0.0.1:3306/{missing}): Unknown database '{missing}' (error 1049)"


def test_an_unknown_host_fails_at_once(aws_endpoint: str) -> None:
    host = "nosuchhost.invalid"
    error = failure(SqlSource(f"postgresql://postgres@{host}:5432/test").ping)
    assert isinstance(error, ConfigError)
    assert str(error).startswith(
        f'connect to source (postgres@{host}:5432/test): could not translate host name "{host}"'
    )
    error = failure(SqlSource(f"mysql://root@{host}:3306/test").ping)
    assert isinstance(error, ConfigError) and f"Can't connect to MySQL server on '{host}'" in str(error)
    (problem,) = check_queues(f"amqp://guest@{host}:5672/%2F", None, ["q"])
    assert problem.startswith(f"broker guest@{host}:5672/%2F: the host name does not resolve")
    error = failure(lambda: RabbitMQSource(f"amqp://guest@{host}:5672/%2F", None, "q", "q_d", 10))
    assert isinstance(error, ConfigError)
    store = S3ObjectStore("any-bucket", "us-east-1", f"http://{host}:9000")
    error = failure(lambda: store.probe("staging"))
    assert isinstance(error, ConfigError) and "(the host name does not resolve)" in str(error)


def test_a_refused_connection_stays_transient() -> None:
    for call in (
        SqlSource("postgresql://postgres@127.0.0.1:1/test").ping,
        SqlSource("mysql://root@127.0.0.1:1/test").ping,
        lambda: check_queues("amqp://guest@127.0.0.1:1/%2F", None, ["q"]),
        lambda: S3ObjectStore("b", "us-east-1", "http://127.0.0.1:1").probe("staging"),
    ):
        error = failure(call)
        assert isinstance(error, RetryableError)


def test_a_refused_broker_login_fails_at_once() -> None:
    require_service(5672, "RabbitMQ")
    queue = unique("q")
    error = failure(lambda: RabbitMQSource("amqp://guest@127.0.0.1:5672/%2F", "wrong", queue, queue + "_d", 10))
    assert isinstance(error, ConfigError)
    assert str(error) == (
        f"connect to broker queue {queue!r} (guest@127.0.0.1:5672/%2F): ACCESS_REFUSED: "
        "the broker refused the user name or password"
    )
    assert check_queues("amqp://guest@127.0.0.1:5672/%2F", "wrong", [queue]) == [
        "broker guest@127.0.0.1:5672/%2F: ACCESS_REFUSED: the broker refused the user name or password"
    ]
    assert check_queues("amqp://guest@127.0.0.1:5672/%2F", None, [queue]) == []  # not there yet: the drain declares it


def test_a_missing_bucket_or_table_is_a_config_error(aws_endpoint: str, names: dict[str, str]) -> None:
    store = S3ObjectStore(names["bucket"], "us-east-1", aws_endpoint)
    error = failure(lambda: store.put_bytes(b"x", "staging/part-1"))
    assert isinstance(error, ConfigError)
    assert str(error) == (
        f"put s3://{names['bucket']}/staging/part-1: NoSuchBucket: The specified bucket does not exist"
    )
    keys = DynamoKeyStore(names["keys_table"], "us-east-1", aws_endpoint)
    assert keys.probe() is False
    error = failure(lambda: keys.list_keys("facts"))
    assert isinstance(error, ConfigError) and "ResourceNotFoundException" in str(error)


@pytest.fixture(scope="module")
def moto_with_auth() -> Iterator[str]:
    """A moto server that checks credentials (keyflow's stand-in credentials are unknown to it)."""
    port = free_port()
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_refused_credentials_fail_at_once(moto_with_auth: str) -> None:
    store = S3ObjectStore("any-bucket", "us-east-1", moto_with_auth)
    error = failure(lambda: store.probe("staging"))
    assert isinstance(error, ConfigError)
    assert str(error) == (
        "s3://any-bucket/staging/: InvalidAccessKeyId: "
        "The AWS Access Key Id you provided does not exist in our records."
    )
    error = failure(DynamoKeyStore("any_table", "us-east-1", moto_with_auth).probe)
    assert isinstance(error, ConfigError)
    assert str(error) == (
        "DynamoDB table any_table: InvalidClientTokenId: The security token included in the request is invalid."
    )


def test_a_resolver_that_fails_for_now_stays_transient() -> None:
    """EAI_AGAIN (a DNS outage, a failover's gap) retries; a name that does not exist (EAI_NONAME) fails at once."""
    import socket

    from tasks.io.aws import unknown_host
    from tasks.io.databases import permanent_reason

    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    gone = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert permanent_reason(again) is None and permanent_reason(gone) == "unknown host"
    assert not unknown_host(again) and unknown_host(gone)
    libpq = 'could not translate host name "db.example" to address: Temporary failure in name resolution'
    assert permanent_reason(__import__("psycopg2").OperationalError(libpq)) is None


def _dropped() -> list[Exception]:
    import psycopg2.errors
    import pymysql

    return [
        psycopg2.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg2.OperationalError("server closed the connection unexpectedly"),
        psycopg2.InterfaceError("connection already closed"),
        pymysql.err.OperationalError(2006, "MySQL server has gone away"),
        pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
        pymysql.err.InterfaceError(0, ""),
        pymysql.err.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] refused)"),
    ]


@pytest.mark.parametrize("driver", _dropped(), ids=lambda e: f"{type(e).__name__}:{e}"[:60])
def test_a_dropped_connection_is_transient_whichever_call_notices_it(driver: Exception) -> None:
    """Issue 18: a restart, a failover or a terminated backend retries on a fresh connection, never fails the key."""
    import psycopg2
    from sqlalchemy import exc as sa_exc

    from tasks.io.databases import is_disconnect, pg_error, translate_db_error

    assert is_disconnect(driver)
    wrapped = sa_exc.DBAPIError.instance("SELECT 1", {}, driver, type(driver).__mro__[1])
    assert isinstance(translate_db_error(wrapped, "extract from source", "u@h:5432/db"), RetryableError)
    if isinstance(driver, psycopg2.Error):
        assert isinstance(pg_error(driver, "key 'K1': load", failed="key 'K1': load failed"), RetryableError)


def test_a_rollback_on_a_dead_connection_keeps_the_error_that_killed_it(pg: Any) -> None:
    """`connection already closed` from the rollback must not hide the server's own error (issue 18 item 1)."""
    import psycopg2

    from tasks.io.databases import rollback_quietly

    conn = psycopg2.connect(PG_DSN)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    with pg.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg2.OperationalError, match="terminating connection|server closed"), conn.cursor() as cur:
        try:
            cur.execute("SELECT 1")
        finally:
            rollback_quietly(conn)  # raised `InterfaceError: connection already closed` before
    conn.close()


def _s3_dropped() -> list[Exception]:
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    url = "http://127.0.0.1:9/b/staging/part-00000.csv.zst"
    return [
        EndpointConnectionError(endpoint_url=url),
        ConnectionClosedError(endpoint_url=url),
        ReadTimeoutError(endpoint_url=url),
        ResponseStreamingError(error="Connection broken: IncompleteRead(0 bytes read)"),
        IncompleteReadError(actual_bytes=10, expected_bytes=918),
    ]


@pytest.mark.parametrize("error", _s3_dropped(), ids=lambda e: type(e).__name__)
def test_a_dropped_s3_connection_is_transient(error: Exception) -> None:
    """Issue 18: the object store cut mid-upload or mid-read (past botocore's own retries) retries the step."""
    from tasks.io.aws import translate

    out = translate(error, "upload s3://b/staging/part-00000.csv.zst")
    assert isinstance(out, RetryableError)
    assert str(out).startswith("upload s3://b/staging/part-00000.csv.zst: ") and "\n" not in str(out)


def test_an_upload_the_service_refuses_is_read_through_boto3s_wrapper(aws_endpoint: str, tmp_path: Any) -> None:
    """boto3's upload_file wraps the service's answer in S3UploadFailedError: keyflow classifies the answer."""
    bucket = unique("kf-none").replace("_", "-")
    part = tmp_path / "part-00000.csv"
    part.write_bytes(b"id\n1\n")
    error = failure(lambda: S3ObjectStore(bucket, "us-east-1", aws_endpoint).put_file(part, "staging/part-00000.csv"))
    assert isinstance(error, ConfigError)
    assert str(error).startswith(f"upload s3://{bucket}/staging/part-00000.csv: NoSuchBucket: ")
