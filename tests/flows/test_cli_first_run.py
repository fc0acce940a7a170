"""A new user's first commands, wrong on purpose: one line naming what and where, the right exit code and no traceback
(unless `keyflow --debug`); keys stored under the dataset's name whatever `-d` was given; nothing accepted silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika
import pytest
from typer.testing import CliRunner

from config.loader import load_profile
from flows.cli import app
from tasks.resources import key_store_for
from tests.helpers.config_files import write_yaml
from tests.helpers.etl import create_pg_source, source_rows, write_dataset
from tests.helpers.events import event, ingestion
from tests.helpers.services import free_port, require_service

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
BIG = "K" * 10_000  # a key (or a date, or a name) pasted by mistake
BIG_SHOWN = "'" + "K" * 40 + "'… (10,000 characters)"


def keyflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The keyflow command in a fresh process, as a user's shell runs it."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(output: str) -> str:
    """The only line a command printed, after checking it is the only one and there is no traceback."""
    lines = output.strip().splitlines()
    assert "Traceback" not in output and len(lines) == 1, output[:3000]
    return lines[0]


def put_args(dataset: str, key: str, profile: str) -> list[str]:
    return ["keys", "put", "-d", dataset, "-k", key, "--start", "2017-03-01", "--end", "2017-03-31", "-p", profile]


def stored(profile: str, dataset: str) -> list[str]:
    return [k.key for k in key_store_for(load_profile(profile, environ={})).list_keys(dataset)]


def unreachable_profile(tmp_path: Path) -> str:
    """A profile whose AWS endpoint is a loopback port nothing listens on (the endpoint is down)."""
    data = {
        "name": "down",
        "source_url": "sqlite:///nothing.db",
        "warehouse_kind": "duckdb",
        "warehouse_url": str(tmp_path / "wh.duckdb"),
        "aws_endpoint_url": f"http://127.0.0.1:{free_port()}",
        "bucket": "down-bucket",
        "keys_table": "down_keys",
    }
    return str(write_yaml(tmp_path / "profiles" / "down.yaml", data))


# --- item 1: keys -------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_key_put_with_the_dataset_path_is_the_key_etl_run_loads(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """`keys put -d config/datasets/x.yaml` stored the key under the path; `etl run` then said "Nothing to do"."""
    create_pg_source(pg, names["src_table"], source_rows(["K1"], per_key=10))
    profile, dataset = str(make_profile()), str(write_dataset(tmp_path, names))
    try:
        put = runner.invoke(app, put_args(dataset, "K1", profile))
        assert put.exit_code == 0, put.output
        assert "Stored key 'K1' of facts (2017-03-01 to 2017-03-31)." in put.output
        assert stored(profile, "facts") == ["K1"] and stored(profile, dataset) == []
        listed = runner.invoke(app, ["keys", "list", "-d", dataset, "-p", profile])
        assert listed.exit_code == 0 and "K1" in listed.output
        ran = runner.invoke(app, ["etl", "run", "-d", dataset, "--date", "2017-03-20", "-p", profile])
        assert ran.exit_code == 0, ran.output
        assert "1 key(s) loaded" in ran.output
        with pg.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {names['wh_schema']}.facts")
            assert cur.fetchone()[0] == 10
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["put", "-d", "nosuch", "-k", "K1"], "datasets/nosuch.yaml: no such file (known datasets: campaign_facts)"),
        (["list", "-d", "nosuch"], "datasets/nosuch.yaml: no such file (known datasets: campaign_facts)"),
        (["delete", "-d", "nosuch", "-k", "K1"], "datasets/nosuch.yaml: no such file (known datasets: campaign_facts)"),
        (["enable", "-d", "nosuch", "-k", "K1"], "datasets/nosuch.yaml: no such file (known datasets: campaign_facts)"),
        (["put", "-d", "campaign_facts", "-k", ""], "error: --key: a key may not be empty"),
        (
            ["put", "-d", "campaign_facts", "-k", "   "],
            "error: --key: a key may not be blank (only whitespace), got '   '",
        ),
        (
            ["put", "-d", "campaign_facts", "-k", " MCS2017"],
            "error: --key: a key may not start or end with whitespace, got ' MCS2017'",
        ),
        (
            ["put", "-d", "campaign_facts", "-k", "MCS\t2017"],
            "error: --key: a key may not contain control characters, got 'MCS\\t2017'",
        ),
        (["put", "-d", "campaign_facts", "-k", BIG], f"error: --key: a key is 1 to 256 characters, got {BIG_SHOWN}"),
        (["delete", "-d", "campaign_facts", "-k", ""], "error: --key: a key may not be empty"),
    ],
    ids=[
        "put-unknown",
        "list-unknown",
        "delete-unknown",
        "enable-unknown",
        "empty",
        "blank",
        "edge",
        "tab",
        "10kb",
        "delete-empty",
    ],
)
def test_unknown_datasets_and_bad_keys_are_refused_in_one_line(
    make_profile: Any, args: list[str], message: str
) -> None:
    profile = str(make_profile())
    if args[0] == "put":
        args = [*args, "--start", "2017-03-01", "--end", "2017-03-31"]
    result = runner.invoke(app, ["keys", *args, "-p", profile])
    assert result.exit_code == 2
    line = one_line(result.output)
    assert line.startswith("error: ") and line.endswith(message)
    assert len(line) < 200  # a 10 KB key is never echoed whole
    assert stored(profile, "campaign_facts") == [] and stored(profile, "nosuch") == []


def test_keys_delete_removes_a_key_and_names_a_missing_one(make_profile: Any) -> None:
    profile = str(make_profile())
    assert runner.invoke(app, put_args("campaign_facts", "MCS2017", profile)).exit_code == 0
    deleted = runner.invoke(app, ["keys", "delete", "-d", "campaign_facts", "-k", "MCS2017", "-p", profile])
    assert deleted.exit_code == 0 and one_line(deleted.output) == "Deleted key 'MCS2017' of campaign_facts."
    assert stored(profile, "campaign_facts") == []
    for verb in ("delete", "disable", "enable"):  # one exit code for "no such key", whatever the verb
        again = runner.invoke(app, ["keys", verb, "-d", "campaign_facts", "-k", "MCS2017", "-p", profile])
        assert again.exit_code == 1
        assert one_line(again.output) == "error: no key 'MCS2017' in dataset 'campaign_facts'"
    missing = runner.invoke(app, ["keys", "disable", "-d", "campaign_facts", "-k", BIG, "-p", profile])
    assert missing.exit_code == 2 and BIG_SHOWN in one_line(missing.output)


# --- item 5: one line, no traceback, unless --debug --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["keys", "put", "-d", "campaign_facts", "-k", "K1", "--start", "2017-03-01", "--end", "2017-03-31"],
            1,
            "error: describe table down_keys: Could not connect to the endpoint URL: ",
        ),
        (
            ["keys", "disable", "-d", "campaign_facts", "-k", "K1"],
            1,
            "error: update key 'K1' of 'campaign_facts': Could not connect to the endpoint URL: ",
        ),
        (
            ["keys", "delete", "-d", "campaign_facts", "-k", "K1"],
            1,
            "error: delete key 'K1' of 'campaign_facts': Could not connect to the endpoint URL: ",
        ),
        (["audit"], 1, "error: get encryption of bucket down-bucket: Could not connect to the endpoint URL: "),
    ],
    ids=["keys-put", "keys-disable", "keys-delete", "audit"],
)
def test_an_aws_endpoint_that_is_down_is_one_line(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    """`audit` printed 348 lines of botocore traceback; `keys put` and `disable` about as many."""
    result = runner.invoke(app, [*args, "-p", unreachable_profile(tmp_path)])
    assert result.exit_code == code
    assert one_line(result.output).startswith(message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["etl", "run", "-d", BIG], f"datasets/{'K' * 40}"),
        (["etl", "run", "-d", "campaign_facts", "--date", BIG], f"error: --date: {BIG_SHOWN} is not a date"),
        (["pause", BIG], f"error: unknown flow family {BIG_SHOWN} (known: etl, trends, ingest)"),
    ],
    ids=["dataset-name", "date", "family"],
)
def test_a_10kb_value_is_echoed_cut(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    line = one_line(result.output)
    assert message in line and len(line) < 400


def test_debug_shows_the_traceback_of_a_known_error_and_nothing_else_does() -> None:
    args = ["keys", "list", "-d", "nosuch"]
    plain = keyflow(*args)
    assert plain.returncode == 2
    assert one_line(plain.stderr).endswith("datasets/nosuch.yaml: no such file (known datasets: campaign_facts)")
    debug = keyflow("--debug", *args)
    assert debug.returncode == 2
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert "config.errors.ConfigError: config/datasets/nosuch.yaml: no such file" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == one_line(plain.stderr)
    assert "--debug" in keyflow("--help").stdout


def test_debug_sets_prefects_log_level(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "INFO")  # restored after the test
    (tmp_path / "datasets").mkdir()
    runner.invoke(app, ["validate", "--config-dir", str(tmp_path)])
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "INFO"
    runner.invoke(app, ["--debug", "validate", "--config-dir", str(tmp_path)])
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "DEBUG"


def test_demo_into_a_folder_it_cannot_make_is_one_line() -> None:
    result = runner.invoke(app, ["demo", "--dir", "/proc/keyflow-demo", "--rows", "10"])
    assert result.exit_code == 2
    assert one_line(result.output) == "error: --dir: cannot make /proc/keyflow-demo: No such file or directory"


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        ({"name": "x"}, "expected path/to/file.py:flow_function"),
        (
            {"name": "x", "entrypoint": "flows/nope.py:x"},
            "cannot import 'flows/nope.py:x': No module named 'flows.nope'",
        ),
        (
            {"name": "x", "entrypoint": "flows/serve.py:serve_all"},
            "entrypoint 'flows/serve.py:serve_all' is not a flow",
        ),
    ],
    ids=["missing", "no-module", "not-a-flow"],
)
def test_serve_names_a_bad_entrypoint(tmp_path: Path, deployment: dict[str, str], message: str) -> None:
    """A deployment without an entrypoint was a KeyError traceback."""
    path = write_yaml(tmp_path / "prefect.yaml", {"deployments": [deployment]})
    result = runner.invoke(app, ["serve", "--file", str(path)])
    assert result.exit_code == 2
    assert one_line(result.output) == f"error: {path}: deployments[0].entrypoint: {message}"


def test_pause_with_the_prefect_api_down_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    result = keyflow("pause", "etl", env={"PREFECT_API_URL": url})
    assert result.returncode == 1
    assert one_line(result.stderr) == f"error: Prefect API at {url}: cannot connect ([Errno 111] Connection refused)"


# --- items 5 and 9: keygen and decrypt ------------------------------------------------------------------------------


def test_keygen_into_a_folder_writes_inside_it(tmp_path: Path) -> None:
    """`keygen --out keys/` wrote keys.pem and keys.pub.pem beside the folder."""
    made = runner.invoke(app, ["keygen", "--out", f"{tmp_path}/keys/", "--bits", "2048"])
    assert made.exit_code == 0, made.output
    existing = tmp_path / "other"
    existing.mkdir()
    assert runner.invoke(app, ["keygen", "--out", str(existing), "--bits", "2048"]).exit_code == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pem")) == [
        "keys/keyflow.pem",
        "keys/keyflow.pub.pem",
        "other/keyflow.pem",
        "other/keyflow.pub.pem",
    ]
    assert (tmp_path / "keys" / "keyflow.pem").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["keygen", "--out", str(existing), "--bits", "2048"])
    assert again.exit_code == 2
    assert one_line(again.output) == (
        f"error: {existing}/keyflow.pem or {existing}/keyflow.pub.pem exists; keyflow never overwrites a key"
    )


@pytest.fixture(scope="module")
def private_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    prefix = tmp_path_factory.mktemp("key") / "k"
    assert runner.invoke(app, ["keygen", "--out", str(prefix), "--bits", "2048"]).exit_code == 0
    return f"{prefix}.pem"


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (None, 2, "{csv}: no such file"),
        ("folder", 2, "{csv}: is a folder, not a file"),
        (b"id,phone\n\xff,\n", 2, "{csv}: not UTF-8 text (byte 0xff is invalid start byte)"),
        (
            b'id,phone\n1,\n2,"never closed\n3,\n',
            2,
            "{csv}: row 2 (line 3): a quoted field is never closed (unexpected end of file)",
        ),
        (b"id,phone\n1,,3\n", 2, "{csv}: row 1 (line 2): 3 fields, the header has 2"),
        (b"id,note\n1,x\n", 2, "{csv}: no column phone"),
    ],
    ids=["missing", "folder", "latin1", "unterminated-quote", "extra-field", "no-column"],
)
def test_decrypt_of_a_file_it_cannot_read_is_one_line(
    tmp_path: Path, private_key: str, content: bytes | str | None, code: int, message: str
) -> None:
    """`decrypt missing.csv` was a traceback; an unterminated quote printed the rest of the file as one cell, exit 0."""
    csv = tmp_path / "export.csv"
    if content == "folder":
        csv.mkdir()
    elif isinstance(content, bytes):
        csv.write_bytes(content)
    result = runner.invoke(app, ["decrypt", str(csv), "-c", "phone", "-k", private_key])
    assert result.exit_code == code
    assert one_line(result.stderr) == "error: " + message.format(csv=csv)
    assert "never closed" not in result.stdout and "3," not in result.stdout  # nothing after the bad row


def test_decrypt_names_a_missing_private_key_file(tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    csv.write_text("id,phone\n1,\n")
    result = runner.invoke(app, ["decrypt", str(csv), "-c", "phone", "-k", str(tmp_path / "nope.pem")])
    assert result.exit_code == 2
    assert one_line(result.output) == f"error: --private-key: {tmp_path / 'nope.pem'}: no such file"


# --- item 9: validate ---------------------------------------------------------------------------------------------


def test_validate_refuses_a_folder_that_is_not_a_config_folder(tmp_path: Path) -> None:
    """`validate --config-dir /nonexistent` said "0 file(s) valid" and exited 0."""
    missing = runner.invoke(app, ["validate", "--config-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and one_line(missing.output) == f"error: {tmp_path / 'nope'}: no such folder"
    (tmp_path / "empty" / "datasets").mkdir(parents=True)
    (tmp_path / "empty" / "datasets" / "notes.txt").write_text("not yaml")
    empty = runner.invoke(app, ["validate", "--config-dir", str(tmp_path / "empty")])
    assert empty.exit_code == 2
    assert one_line(empty.output) == (
        f"error: {tmp_path / 'empty'}: no keyflow YAML in datasets/, profiles/, trends/, events/, sources/"
    )
    (tmp_path / "file").write_text("x")
    not_dir = runner.invoke(app, ["validate", "--config-dir", str(tmp_path / "file")])
    assert not_dir.exit_code == 2 and one_line(not_dir.output) == f"error: {tmp_path / 'file'}: not a folder"
    (tmp_path / "odd" / "datasets" / "x.yaml").mkdir(parents=True)  # a folder where a YAML file should be
    odd = runner.invoke(app, ["validate", "--config-dir", str(tmp_path / "odd")])
    assert odd.exit_code == 2 and f"{tmp_path / 'odd' / 'datasets' / 'x.yaml'}: not a file" in odd.output
    shipped = runner.invoke(app, ["validate", "--config-dir", str(ROOT / "config")])
    assert shipped.exit_code == 0 and "file(s) valid" in shipped.output


# --- item 9: a drain that rejects everything says so -------------------------------------------------------------


@pytest.fixture()
def events_job(tmp_path: Path, names: dict[str, str], make_profile: Any) -> Any:
    require_service(5672, "RabbitMQ")
    queue = names["keys_table"] + "_q"
    source = {"kind": "rabbitmq", "queue": queue, "dead_letter_queue": queue + "_dead", "prefetch": 100}
    job_path, profile_path, job, profile, sinks = ingestion(tmp_path, names, make_profile(), source, batch_size=50)
    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    channel = conn.channel()
    for q in (queue, queue + "_dead"):
        channel.queue_declare(queue=q, durable=True)
    yield job_path, profile_path, job, sinks, channel
    for q in (queue, queue + "_dead"):
        channel.queue_delete(queue=q)
    conn.close()


@pytest.mark.usefixtures("prefect_harness")
def test_a_drain_warns_once_when_the_article_table_is_empty_or_knows_no_event(
    events_job: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty article table rejected every event with exit 0 and no warning."""
    job_path, profile_path, job, sinks, channel = events_job
    table = job.reference.table

    def drain(*bodies: bytes) -> Any:
        for body in bodies:
            channel.basic_publish("", job.source.queue, body, pika.BasicProperties(delivery_mode=2))
        return runner.invoke(app, ["events", "drain", "-j", job_path, "-p", profile_path, "--max-seconds", "5"])

    empty = drain(*(event(i) for i in range(120)))  # three batches of 50, 50 and 20
    assert empty.exit_code == 0, empty.output
    assert "120 received: 0 stored, 0 duplicate(s), 120 rejected, 0 dead-lettered" in empty.output
    warned = [line for line in empty.output.splitlines() if line.startswith("warning:")]
    assert warned == [
        f"warning: the article table {table} is empty: every event is rejected as an unknown article until it is filled"
    ]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "article table" in r.getMessage()]
    assert logged == [warned[0].removeprefix("warning: ")]

    sinks.articles.put({"a1": True, "a2": True})  # a1 stays "unknown" in the drain's lookup cache for 10 minutes
    unknown = drain(*(event(i, article="a9") for i in range(10)))
    assert unknown.exit_code == 0 and "10 received: 0 stored, 0 duplicate(s), 10 rejected" in unknown.output
    assert [line for line in unknown.output.splitlines() if line.startswith("warning:")] == [
        f"warning: every event of 1 batch(es) named an article the table {table} does not know: is it filled and "
        "up to date?"
    ]

    known = drain(event(1, article="a2"), event(2, article="a9"))  # one unknown among known ones: no warning
    assert known.exit_code == 0 and "2 received: 1 stored" in known.output and "warning:" not in known.output
