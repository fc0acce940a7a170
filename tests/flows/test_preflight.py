"""The preflight (issue 13, item 3): every configuration problem of a run found before a row moves, all at once,
one line each naming the file and field or the resource, exit 2, nothing extracted; on its own as `keyflow check`,
first in every flow, and without a Prefect traceback when a run ends on a config error."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from prefect import flow
from prefect.states import State
from typer.testing import CliRunner

from config.errors import ConfigError
from config.loader import load_profile
from flows.backfill import backfill
from flows.cli import app
from flows.common import ends_failed_on_errors
from flows.rds_to_redshift import rds_to_redshift
from tasks.resources import key_store_for, object_store_for
from tests.helpers.config_files import write_yaml
from tests.helpers.etl import create_pg_source, put_keys, source_rows, write_dataset
from tests.helpers.services import MYSQL_URL, PG_URL, require_service

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def keyflow(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run the `keyflow` command as a user does (a fresh process in ``cwd``): exit code, all it printed, seconds."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started


def profile_yaml(tmp_path: Path, names: dict[str, str], aws_endpoint: str, **extra: Any) -> Path:
    """A profile for this test whose bucket and key table are NOT created (``make_profile`` creates them)."""
    return write_yaml(
        tmp_path / "profiles" / "p.yaml",
        {
            "name": "pytest",
            "source_url": "postgresql://postgres@127.0.0.1:5432/test",  # no driver: keyflow's psycopg2
            "warehouse_kind": "postgres",
            "warehouse_url": "postgresql://postgres@127.0.0.1:5432/test",
            "aws_endpoint_url": aws_endpoint,
            "bucket": names["bucket"],
            "prefix": "staging",
            "keys_table": names["keys_table"],
            "secrets": {"email_salt": {"env": "KEYFLOW_EMAIL_SALT"}},
        }
        | extra,
    )


@pytest.fixture()
def source(pg: Any, names: dict[str, str]) -> Iterator[str]:
    create_pg_source(pg, names["src_table"], source_rows(["K1", "K2"], per_key=10))
    yield names["src_table"]
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def schema_exists(pg: Any, schema: str) -> bool:
    with pg.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        return cur.fetchone() is not None


def test_check_lists_every_problem_at_once(
    source: str, tmp_path: Path, names: dict[str, str], aws_endpoint: str, pg: Any
) -> None:
    profile_yaml(tmp_path, names, aws_endpoint)
    dataset = write_dataset(tmp_path, names)
    text = dataset.read_text().replace("batch_rows: 100", "batch_rows: 100\n  date_column: day")
    text = text.replace(
        "rules:\n",
        "rules:\n- privacy: {column: label, action: hash, salt_secret: label_salt}\n"
        "- privacy: {column: phone, action: encrypt, key: phone_key}\n",
    )
    dataset.write_text(text)
    code, output, _ = keyflow(tmp_path, "check", "-p", "profiles/p.yaml", "-d", "datasets/facts.yaml")
    assert code == 2, output
    assert output.splitlines() == [
        "error: datasets/facts.yaml: rules[0].privacy.salt_secret: 'label_salt' is not among the secrets of "
        "profiles/p.yaml (add secrets.label_salt there)",
        "error: datasets/facts.yaml: rules[1].privacy.key: 'phone_key' is not among the encryption_keys of "
        "profiles/p.yaml",
        f"error: datasets/facts.yaml: source.date_column: 'day' is not a column of '{source}'",
        f"error: profiles/p.yaml: bucket: s3://{names['bucket']}/staging/: NoSuchBucket: "
        "The specified bucket does not exist",
        f"error: profiles/p.yaml: keys_table: DynamoDB table '{names['keys_table']}' does not exist "
        "(`keyflow keys put` or `keyflow setup` creates it)",
        "5 problem(s) found; nothing was run.",
    ]
    assert not schema_exists(pg, names["wh_schema"])  # nothing was created


def test_an_etl_run_with_a_problem_extracts_nothing(
    source: str, tmp_path: Path, names: dict[str, str], aws_endpoint: str, pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The missing bucket used to be found after every key was extracted (NoSuchBucket, exit 1)."""
    profile = profile_yaml(tmp_path, names, aws_endpoint)
    key_store_for(load_profile(profile, environ={})).ensure_table()
    put_keys(profile)
    write_dataset(tmp_path, names)
    monkeypatch.delenv("KEYFLOW_EMAIL_SALT")
    dataset = tmp_path / "datasets" / "facts.yaml"
    dataset.write_text(
        dataset.read_text().replace(
            "rules:\n", "rules:\n- privacy: {column: label, action: hash, salt_secret: email_salt}\n"
        )
    )
    code, output, _ = keyflow(
        tmp_path, "etl", "run", "-d", "datasets/facts.yaml", "-p", "profiles/p.yaml", "--date", "2017-03-20"
    )
    assert code == 2, output
    assert output.splitlines() == [
        "error: profiles/p.yaml: secrets.email_salt: environment variable KEYFLOW_EMAIL_SALT is not set",
        f"error: profiles/p.yaml: bucket: s3://{names['bucket']}/staging/: NoSuchBucket: "
        "The specified bucket does not exist",
    ]
    assert not schema_exists(pg, names["wh_schema"])


@pytest.fixture()
def prefect_log() -> Iterator[list[logging.LogRecord]]:
    """Every record Prefect logs during the test (its loggers do not propagate to pytest's)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("prefect")
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_with_a_problem_ends_failed_with_its_lines_and_no_traceback(
    source: str, tmp_path: Path, names: dict[str, str], aws_endpoint: str, pg: Any, prefect_log: list[Any]
) -> None:
    """A deployment run has no CLI in front: the flow's own preflight ends it Failed, nothing extracted."""
    profile = profile_yaml(tmp_path, names, aws_endpoint)
    key_store_for(load_profile(profile, environ={})).ensure_table()
    put_keys(profile)
    dataset = write_dataset(tmp_path, names)
    state = rds_to_redshift(
        dataset=str(dataset), run_date=dt.date(2017, 3, 20), profile=str(profile), return_state=True
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConfigError)
    assert error.problems == [
        f"{profile}: bucket: s3://{names['bucket']}/staging/: NoSuchBucket: The specified bucket does not exist"
    ]
    assert state.message == f"preflight: 1 problem(s), nothing was run: {error.problems[0]}"
    assert not [r for r in prefect_log if r.exc_info]
    assert not schema_exists(pg, names["wh_schema"])


@pytest.mark.usefixtures("prefect_harness")
def test_a_config_error_inside_a_flow_is_one_line_per_problem(prefect_log: list[Any]) -> None:
    """It printed 70-80 lines of Prefect traceback before the one good line."""

    @flow
    @ends_failed_on_errors
    def broken(day: dt.date) -> State[Any]:
        raise ConfigError(
            ["config/datasets/x.yaml: source.table: no such table", "config/profiles/p.yaml: bucket: gone"]
        )

    state = broken(dt.date(2017, 3, 20), return_state=True)
    assert state.is_failed() and state.message == "config/datasets/x.yaml: source.table: no such table (and 1 more)"
    assert state.result(raise_on_failure=False).problems[1] == "config/profiles/p.yaml: bucket: gone"
    assert not [r for r in prefect_log if r.exc_info]
    errors = [r.getMessage() for r in prefect_log if r.levelno >= logging.ERROR]
    assert "config/datasets/x.yaml: source.table: no such table" in errors
    assert "config/profiles/p.yaml: bucket: gone" in errors


def test_a_wrong_source_password_fails_in_seconds_with_one_line(
    mysql: Any, tmp_path: Path, names: dict[str, str], aws_endpoint: str
) -> None:
    """Issue 13 item 4: it was retried for 12 s with up to six tracebacks."""
    user = names["src_table"][:30]
    with mysql.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'right-Pw-1'")
    try:
        profile = profile_yaml(
            tmp_path,
            names,
            aws_endpoint,
            source_url=f"mysql://{user}@127.0.0.1:3306/test",
            source_password={"env": "SOURCE_PW"},
        )
        prof = load_profile(profile, environ={})
        object_store_for(prof).ensure_bucket()
        key_store_for(prof).ensure_table()
        write_dataset(tmp_path, names)
        code, output, _ = keyflow(
            tmp_path,
            "etl",
            "run",
            "-d",
            "datasets/facts.yaml",
            "-p",
            "profiles/p.yaml",
            "--date",
            "2017-03-20",
            env={"SOURCE_PW": "wrong-Pw-2"},
        )
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
    assert code == 2, output
    (line,) = output.splitlines()  # one line: no retry was logged, no traceback
    assert line.startswith(
        f"error: profiles/p.yaml: read source table columns ({user}@127.0.0.1:3306/test): Access denied for user"
    )
    assert line.endswith("(using password: YES) (error 1045)") and "wrong-Pw-2" not in output


@pytest.fixture()
def amqp_queue(names: dict[str, str]) -> Iterator[str]:
    require_service(5672, "RabbitMQ")
    queue = names["keys_table"] + "_q"
    yield queue
    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    ch = conn.channel()
    for q in (queue, queue + "_dead"):
        ch.queue_delete(queue=q)
    conn.close()


def events_job(tmp_path: Path, names: dict[str, str], queue: str) -> Path:
    return write_yaml(
        tmp_path / "events" / "job.yaml",
        {
            "name": "pytest_events",
            "source": {"kind": "rabbitmq", "queue": queue, "dead_letter_queue": queue + "_dead"},
            "reference": {"table": names["keys_table"] + "_articles"},
            "events_table": names["keys_table"] + "_events",
        },
    )


def test_a_refused_broker_login_fails_in_seconds_within_max_seconds(
    amqp_queue: str, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """Issue 13 item 4: ACCESS_REFUSED was retried for 44 s, even with --max-seconds 5."""
    profile = make_profile()
    events_job(tmp_path, names, amqp_queue)
    code, output, _ = keyflow(
        tmp_path,
        "events",
        "drain",
        "-j",
        "events/job.yaml",
        "-p",
        str(profile),
        "--max-seconds",
        "5",
        env={"KEYFLOW_BROKER_PASSWORD": "wrong"},
    )
    assert code == 2 and "Retry" not in output and "Traceback" not in output, output  # failed at once
    assert output.splitlines()[0] == (
        "error: events/job.yaml: broker guest@127.0.0.1:5672/%2F: ACCESS_REFUSED: "
        "the broker refused the user name or password"
    )
    assert "Traceback" not in output


def test_events_and_trends_jobs_are_checked(
    amqp_queue: str, tmp_path: Path, names: dict[str, str], make_profile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = make_profile()
    job = events_job(tmp_path, names, amqp_queue)
    trends = write_yaml(
        tmp_path / "trends" / "job.yaml",
        {"name": "pytest_trending", "users_key": "reference/users.csv", "counts_schema": names["wh_schema"]},
    )
    result = runner.invoke(app, ["check", "-p", str(profile), "-e", str(job), "-t", str(trends)])
    assert result.exit_code == 2, result.output
    articles = names["keys_table"] + "_articles"
    assert result.output.splitlines() == [
        f"error: {job}: reference.table: DynamoDB table '{articles}' does not exist; create it (`keyflow setup`) "
        "and fill it with the articles (article_id, live)",
        f"error: {trends}: users_key: s3://{names['bucket']}/reference/users.csv does not exist; upload the users "
        "file (CSV: user_id,gender,segment_id) before the first run",
        "2 problem(s) found; nothing was run.",
    ]
    from tasks.io.event_store import ArticleDirectory
    from tasks.transforms.events import TTLCache

    prof = load_profile(profile, environ={})
    directory = ArticleDirectory(articles, "us-east-1", prof.aws_endpoint_url, TTLCache(60, 10))
    directory.ensure()
    object_store_for(prof).put_bytes(b"user_id,gender,segment_id\n", "reference/users.csv")
    monkeypatch.setenv("KEYFLOW_BROKER_PASSWORD", "wrong")
    refused = runner.invoke(app, ["check", "-p", str(profile), "-e", str(job), "-t", str(trends)])
    assert refused.output.splitlines() == [
        f"error: {job}: broker guest@127.0.0.1:5672/%2F: ACCESS_REFUSED: the broker refused the user name or password",
        f"ok trends job pytest_trending ({trends}): trend counts, bucket, users file "
        + refused.output.split("users file ")[1].splitlines()[0],
        "1 problem(s) found; nothing was run.",
    ]
    monkeypatch.delenv("KEYFLOW_BROKER_PASSWORD")
    ok = runner.invoke(app, ["check", "-p", str(profile), "-e", str(job), "-t", str(trends)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith(f"ok events job pytest_events ({job}): secrets, broker, bucket, article table (")


def test_a_file_source_whose_table_has_other_columns_is_refused(
    mysql: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """What the shipped campaign_facts_files.yaml once met: its target table was the ETL's source, other columns."""
    profile = make_profile(source_url=MYSQL_URL)
    with mysql.cursor() as cur:
        cur.execute(f"CREATE TABLE {names['src_table']} (id BIGINT PRIMARY KEY, campaign_key TEXT)")
    try:
        text = (ROOT / "config" / "sources" / "campaign_facts_files.yaml").read_text()
        src = tmp_path / "sources" / "facts.yaml"
        src.parent.mkdir()
        src.write_text(text.replace("  table: partner_campaign_facts", f"  table: {names['src_table']}"))
        result = runner.invoke(app, ["check", "-p", str(profile), "-s", str(src)])
    finally:
        with mysql.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
    assert result.exit_code == 2, result.output
    assert f"error: {src}: target.table: table {names['src_table']} exists without column(s) campaign_code" in (
        result.output
    )


def test_check_all_and_a_clean_probe(
    source: str, tmp_path: Path, names: dict[str, str], make_profile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = make_profile()
    write_dataset(tmp_path, names)
    monkeypatch.setenv("KEYFLOW_CONFIG_DIR", str(tmp_path))
    result = runner.invoke(app, ["check", "-p", str(profile), "--all"])
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(
        f"ok dataset facts ({tmp_path / 'datasets' / 'facts.yaml'}): secrets, source, rules, bucket, key table, "
        "warehouse ("
    )
    store = object_store_for(load_profile(profile, environ={}))
    assert list(store.list_keys("staging/")) == []  # the probe object was deleted
    alone = runner.invoke(app, ["check", "-p", str(profile)])
    assert alone.exit_code == 0 and alone.output.startswith("ok profile pytest ("), alone.output


def test_a_backfill_checks_once_before_any_date(
    source: str, tmp_path: Path, names: dict[str, str], aws_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile_yaml(tmp_path, names, aws_endpoint)
    write_dataset(tmp_path, names)
    code, output, _ = keyflow(
        tmp_path,
        "etl",
        "backfill",
        "-d",
        "datasets/facts.yaml",
        "-p",
        "profiles/p.yaml",
        "--from",
        "2017-03-01",
        "--to",
        "2017-03-31",
    )
    assert code == 2, output
    problems = [
        f"profiles/p.yaml: bucket: s3://{names['bucket']}/staging/: NoSuchBucket: The specified bucket does not exist",
        f"profiles/p.yaml: keys_table: DynamoDB table '{names['keys_table']}' does not exist "
        "(`keyflow keys put` or `keyflow setup` creates it)",
    ]
    assert output.splitlines() == [f"error: {p}" for p in problems]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:  # from Python: raised before any date starts
        backfill("datasets/facts.yaml", dt.date(2017, 3, 1), dt.date(2017, 3, 31), "profiles/p.yaml")
    assert caught.value.problems == problems


def test_the_pg_url_of_the_readme_works(source: str, tmp_path: Path, names: dict[str, str], make_profile: Any) -> None:
    """`source_url: postgresql://…` crashed with `No module named 'psycopg'` (issue 13, item 2)."""
    profile = make_profile(source_url=PG_URL.replace("+psycopg2", ""))
    dataset = write_dataset(tmp_path, names)
    result = runner.invoke(app, ["check", "-p", str(profile), "-d", str(dataset)])
    assert result.exit_code == 0, result.output


def test_a_missing_password_is_reported_once(
    source: str, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    profile = make_profile(source_password={"env": "PREFLIGHT_NO_SUCH_PW"})
    dataset = write_dataset(tmp_path, names)
    result = runner.invoke(app, ["check", "-p", str(profile), "-d", str(dataset)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"error: {profile}: source_password: environment variable PREFLIGHT_NO_SUCH_PW is not set",
        "1 problem(s) found; nothing was run.",
    ]
