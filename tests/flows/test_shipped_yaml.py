"""Every shipped YAML works as shipped: a newcomer's first command on each one, against the real services.

The jobs run by name (`-d campaign_facts`, `-s campaign_facts_files`, `-j activity`, `-j trending`) on the shipped
`test` profile. Only what the profile's own comment says a user sets is set through the environment: the AWS
endpoint (this session's moto server) and, so that concurrent runs never share tables, the source and warehouse
URLs, pointed at a fresh PostgreSQL database on the same server. The file source loads into the database that holds
the ETL's source table, as in production: a source YAML that targets another job's table fails here.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg2
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from config.loader import load_dataset, load_events, load_file_source, load_profile, load_trends
from config.models import FileColumn
from config.types import parse_type
from flows.cli import app
from tasks.resources import object_store_for, resources_for
from tests.helpers.services import PG_DSN, PG_URL, require_service, unique

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
ETL_ROWS = [("MCS2017", "2017-03-01", "2017-03-31", 30), ("SPRING17", "2017-03-15", "2017-04-15", 20)]


@pytest.fixture(scope="module")
def database(pg: Any) -> Iterator[str]:
    """A fresh PostgreSQL database holding the ETL's source table ``campaign_facts``, as the demo seeds it."""
    name = unique("kf_shipped")
    with pg.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn = psycopg2.connect(PG_DSN.replace("dbname=test", f"dbname={name}"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            """CREATE TABLE campaign_facts (
                id BIGINT PRIMARY KEY, campaign_key VARCHAR(32) NOT NULL, event_date DATE NOT NULL,
                sku VARCHAR(16), customer_email TEXT, phone TEXT, channel TEXT,
                impressions INTEGER, clicks INTEGER, revenue DECIMAL(12,2), updated_at TIMESTAMP)"""
        )
        n = 0
        for key, start, _, rows in ETL_ROWS:
            for i in range(rows):
                n += 1
                day = dt.date.fromisoformat(start) + dt.timedelta(days=i % 10)
                cur.execute(
                    "INSERT INTO campaign_facts VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    (
                        n,
                        key,
                        day,
                        f"SKU-{i:04d}",
                        f" User{n}@Example.com ",
                        f"+3361234{n:04d}",
                        " Web",
                        100 + i,
                        i,
                        "12.50",
                        dt.datetime(2017, 3, 1, 12),
                    ),
                )
    conn.close()
    yield name
    with pg.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture()
def test_profile(database: str, aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The shipped `test` profile with its endpoint and database set by the environment; its bucket exists."""
    url = make_url(PG_URL).set(database=database)
    monkeypatch.setenv("KEYFLOW_AWS_ENDPOINT_URL", aws_endpoint)
    monkeypatch.setenv("KEYFLOW_SOURCE_URL", url.render_as_string(hide_password=False))
    monkeypatch.setenv("KEYFLOW_WAREHOUSE_URL", url.set(drivername="postgresql").render_as_string(hide_password=False))
    profile = load_profile("test")
    object_store_for(profile).ensure_bucket()  # the README's step (or `keyflow setup`): keyflow never makes it itself
    return profile


def query(database: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(PG_DSN.replace("dbname=test", f"dbname={database}"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def invoke(*args: str) -> Any:
    """Run a command in this process (its output may carry Prefect's logging errors about an earlier invocation's
    closed stream, a CliRunner artifact; a user's shell sees none)."""
    return runner.invoke(app, list(args))


def test_the_shipped_yaml_all_validate() -> None:
    result = invoke("validate", "--config-dir", str(ROOT / "config"))
    assert result.exit_code == 0, result.output


def test_no_shipped_file_source_writes_into_a_shipped_datasets_source_table() -> None:
    """campaign_facts_files upserted into campaign_facts, the ETL's source table, with other columns."""
    dataset_tables = {load_dataset(p).source.table for p in (ROOT / "config" / "datasets").glob("*.yaml")}
    for path in (ROOT / "config" / "sources").glob("*.yaml"):
        assert load_file_source(path).target.table not in dataset_tables, path.name


def test_the_shipped_dataset_runs_on_the_test_profile(test_profile: Any, database: str) -> None:
    for key, start, end, _ in ETL_ROWS:
        put = invoke("keys", "put", "-d", "campaign_facts", "-k", key, "--start", start, "--end", end, "-p", "test")
        assert put.exit_code == 0, put.output
    ran = invoke("etl", "run", "-d", "campaign_facts", "--date", "2017-03-20", "-p", "test")
    assert ran.exit_code == 0, ran.output
    assert "2 key(s) loaded" in ran.output
    loaded = query(database, "SELECT campaign_key, count(*) FROM analytics.campaign_facts GROUP BY 1 ORDER BY 1")
    assert loaded == [(key, rows) for key, _, _, rows in sorted(ETL_ROWS)]
    emails = query(database, "SELECT DISTINCT customer_email LIKE '%@%' FROM analytics.campaign_facts")
    assert emails == [(False,)]  # hashed by the privacy rule with the profile's salt


def _value(column: FileColumn, i: int) -> str:
    """A value of row ``i`` that passes the column's checks (type, allowed, min/max, format)."""
    if column.allowed:
        return str(column.allowed[i % len(column.allowed)])
    kind = parse_type(column.type)
    low = int(column.min) if column.min is not None else 0
    if kind.kind in ("smallint", "integer", "bigint"):
        return str(low + i + 1)
    if kind.kind in ("decimal", "real", "double"):
        return f"{low + i}.25"
    if kind.kind == "boolean":
        return "true"
    if kind.kind in ("date", "timestamp", "timestamptz"):
        t = dt.datetime(2026, 11, 1, 8, 30) + dt.timedelta(days=i)
        if column.format:
            return t.strftime(column.format)
        return t.date().isoformat() if kind.kind == "date" else t.isoformat()
    text = f"v{i}-{column.name}"
    return text[: kind.length] if kind.length else text


def test_the_shipped_file_source_loads_a_landing_file_of_its_columns(test_profile: Any, database: str) -> None:
    source = load_file_source("campaign_facts_files")
    rows = 25
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=source.csv.delimiter, quotechar=source.csv.quote)
    if source.csv.header:
        writer.writerow([c.name for c in source.columns])
    writer.writerows([_value(c, i) for c in source.columns] for i in range(rows))
    data = buffer.getvalue().encode(source.csv.encoding)
    object_store_for(test_profile).put_bytes(data, f"{source.landing_prefix}/partner-2026-11-01.csv")
    etl_source_before = query(database, "SELECT count(*) FROM campaign_facts")

    result = invoke("files", "ingest", "-s", "campaign_facts_files", "-p", "test", "--json")
    assert result.exit_code == 0, result.output
    (file,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert (file["status"], file["rows_in"], file["rows_loaded"], file["rows_rejected"]) == ("loaded", rows, rows, 0)
    table = f"{source.target.db_schema}.{source.target.table}" if source.target.db_schema else source.target.table
    assert query(database, f"SELECT count(*) FROM {table}") == [(rows,)]
    assert query(database, "SELECT count(*) FROM campaign_facts") == etl_source_before  # the ETL's table untouched


@pytest.fixture()
def activity_queue() -> Iterator[Any]:
    """The shipped job's queue on the local RabbitMQ, emptied first (the name is the shipped one)."""
    require_service(5672, "RabbitMQ")
    job = load_events("activity")
    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    channel = conn.channel()
    for q in (job.source.queue, job.source.dead_letter_queue):
        channel.queue_declare(queue=q, durable=True)
        channel.queue_purge(queue=q)
    yield channel
    for q in (job.source.queue, job.source.dead_letter_queue):
        channel.queue_delete(queue=q)
    conn.close()


def test_the_shipped_events_and_trends_jobs_drain_and_rank(test_profile: Any, activity_queue: Any) -> None:
    job, trends = load_events("activity"), load_trends("trending")
    resources = resources_for(test_profile)
    articles = resources.articles(job)
    articles.ensure()
    articles.put({"a1": True, "a2": True})  # the article table a user fills (README)
    now = dt.datetime.now(dt.UTC)
    for i in range(60):
        body = {
            "event_id": f"shipped-{i}",
            "ts": (now - dt.timedelta(seconds=i)).isoformat(),
            "article_id": "a1" if i % 2 else "a2",
            "user_id": f"u{i % 3}",
            "action": "click" if i % 10 == 0 else "impression",
        }
        activity_queue.basic_publish("", job.source.queue, json.dumps(body).encode())

    drained = invoke("events", "drain", "-j", "activity", "-p", "test", "--max-seconds", "10")
    assert drained.exit_code == 0, drained.output
    assert "60 received: 60 stored, 0 duplicate(s), 0 rejected, 0 dead-lettered" in drained.output
    assert "warning:" not in drained.output

    users = b"user_id,gender,segment_id\nu0,f,s1\nu1,m,s1\nu2,f,s2\n"
    object_store_for(test_profile).put_bytes(users, trends.users_key)  # the users file a user uploads (README)
    end = (now + dt.timedelta(minutes=2)).isoformat()
    ranked = invoke("trends", "run", "-j", "trending", "-p", "test", "--end", end, "--json")
    assert ranked.exit_code == 0, ranked.output
    figures = json.loads(ranked.stdout.strip().splitlines()[-1])
    assert (figures["events"], figures["counted"]) == (60, 60) and figures["audiences"] >= 3
    top = invoke("trends", "top", "-j", "trending", "-p", "test", "-g", "f", "-s", "s1", "--json")
    assert top.exit_code == 0, top.output
    assert {r["article_id"] for r in json.loads(top.stdout.strip().splitlines()[-1])} <= {"a1", "a2"}
