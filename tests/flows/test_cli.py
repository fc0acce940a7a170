"""The keyflow command as a user runs it: keys management, etl run exit codes, and the embedded demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers.etl import D1, EVIL, PATHS, create_pg_source, put_keys, source_rows, write_dataset

runner = CliRunner()


@pytest.fixture()
def facts_dataset(tmp_path: Path, names: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dataset named ``facts`` that ``-d facts`` finds (keys are refused for a dataset that does not exist)."""
    monkeypatch.setenv("KEYFLOW_CONFIG_DIR", str(tmp_path))
    return write_dataset(tmp_path, names)


@pytest.mark.usefixtures("facts_dataset")
def test_keys_put_list_disable(make_profile: Any) -> None:
    profile = str(make_profile())
    ok = runner.invoke(
        app,
        [
            "keys",
            "put",
            "-d",
            "facts",
            "-k",
            "MCS2017",
            "--start",
            "2017-03-01",
            "--end",
            "2017-03-31",
            "--params",
            '{"region": "eu"}',
            "-p",
            profile,
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "Stored key 'MCS2017' of facts (2017-03-01 to 2017-03-31)." in ok.output
    listed = runner.invoke(app, ["keys", "list", "-d", "facts", "--date", "2017-03-10", "-p", profile])
    assert listed.exit_code == 0 and "MCS2017" in listed.output and '{"region": "eu"}' in listed.output
    assert runner.invoke(app, ["keys", "disable", "-d", "facts", "-k", "MCS2017", "-p", profile]).exit_code == 0
    listed = runner.invoke(app, ["keys", "list", "-d", "facts", "--date", "2017-03-10", "-p", profile])
    assert "MCS2017" not in listed.output
    missing = runner.invoke(app, ["keys", "disable", "-d", "facts", "-k", "NOPE", "-p", profile])
    assert missing.exit_code == 1 and "error: no key 'NOPE' in dataset 'facts'" in missing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2017-13-01", "--end", "2017-03-31"], "error: --start: '2017-13-01' is not a date (YYYY-MM-DD)"),
        (["--start", "2017-03-02", "--end", "2017-03-01"], "error: key 'K': end_date 2017-03-01 is before start_date"),
        (
            ["--start", "2017-03-01", "--end", "2017-03-02", "--params", "[1]"],
            "error: --params: expected a JSON object",
        ),
        (
            ["--start", "2017-03-01", "--end", "2017-03-02", "--params", '{"regions": ["eu"]}'],
            "error: --params: 'regions' is a JSON list; a parameter is a string, number, true/false or null",
        ),
    ],
)
@pytest.mark.usefixtures("facts_dataset")
def test_keys_put_refuses_bad_input(make_profile: Any, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["keys", "put", "-d", "facts", "-k", "K", *args, "-p", str(make_profile())])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_etl_run_exit_code_and_summary(pg: Any, names: dict[str, str], make_profile: Any, facts_dataset: Path) -> None:
    create_pg_source(pg, names["src_table"], source_rows(["K1", EVIL], per_key=10))
    profile = str(make_profile())
    dataset = str(facts_dataset)
    for key in ("K1", EVIL):
        put = runner.invoke(
            app,
            ["keys", "put", "-d", "facts", "-k", key, "--start", "2017-03-01", "--end", "2017-03-31", "-p", profile],
        )
        assert put.exit_code == 0, put.output
    try:
        ok = runner.invoke(app, ["etl", "run", "-d", dataset, "--date", D1.isoformat(), "-p", profile])
        assert ok.exit_code == 0, ok.output
        assert "2 key(s) loaded" in ok.output and "K1" in ok.output
        with pg.cursor() as cur:  # break the warehouse for one key: the run must say so in its exit code
            cur.execute(
                f"ALTER TABLE {names['wh_schema']}.facts ADD CONSTRAINT k1 CHECK (campaign_key <> 'K1') NOT VALID"
            )
        bad = runner.invoke(app, ["etl", "run", "-d", dataset, "--date", D1.isoformat(), "-p", profile])
        assert bad.exit_code == 1
        assert "1 of 2 key(s) failed: K1" in bad.output
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_etl_run_with_bad_config_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {table: t, key_column: k}\ntarget: {table: t, load_mode: upsert}\n")
    result = runner.invoke(app, ["etl", "run", "-d", str(bad), "--date", "2017-03-20"])
    assert result.exit_code == 2
    assert "target.load_mode: Input should be 'replace_key', 'replace_table' or 'merge'" in result.output
    assert "Traceback" not in result.output


def test_demo_runs_with_no_servers_and_prints_a_clean_summary(tmp_path: Path) -> None:
    """`make run`: the embedded default end to end in a fresh process; no traceback, no ERROR line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYFLOW_", "PREFECT_"))}
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--dir", str(tmp_path / "demo"), "--rows", "500"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for key in ("MCS2017", "SPRING17", "VIP17"):
        assert key in proc.stdout
    assert "3 key(s) loaded" in proc.stdout
    assert "WINTER16" not in proc.stdout and "PAUSED17" not in proc.stdout
    assert "Traceback" not in output and "| ERROR" not in output and "Error flushing" not in output
    import duckdb

    with duckdb.connect(str(tmp_path / "demo" / "warehouse.duckdb"), read_only=True) as db:
        counts = dict(db.execute("SELECT campaign_key, count(*) FROM analytics.campaign_facts GROUP BY 1").fetchall())
    assert set(counts) == {"MCS2017", "SPRING17", "VIP17"} and all(400 < n <= 500 for n in counts.values())


def test_quiet_prints_the_summary_and_no_run_log(tmp_path: Path) -> None:
    """`keyflow --quiet`: the per-key summary on stdout, nothing of Prefect's run log on either stream."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYFLOW_", "PREFECT_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--quiet", "demo", "--dir", str(tmp_path / "demo"), "--rows", "100"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 key(s) loaded" in proc.stdout and "MCS2017" in proc.stdout
    assert "| INFO" not in proc.stdout + proc.stderr and "Task run" not in proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@pytest.mark.usefixtures("prefect_harness")
def test_the_command_exits_at_once_yet_every_log_and_task_state_reaches_the_server(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """`keyflow` skips the interpreter's module teardown on exit (~0.8 s a run): Prefect's log and event workers
    must still be drained first, so the server has the run's last log line and every task run's final state."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    from tests.helpers.etl import put_keys

    create_pg_source(pg, names["src_table"], source_rows(["K1", "K2"], per_key=10))
    try:
        profile = make_profile()
        put_keys(profile)
        dataset = write_dataset(tmp_path, names)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        keyflow = str(Path(sys.executable).parent / "keyflow")
        args = ["etl", "run", "-d", str(dataset), "-p", str(profile), "--date", D1.isoformat(), "--json"]
        proc = subprocess.run([keyflow, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.rstrip().endswith("]")  # the JSON summary was flushed before the exit

        async def read_back() -> tuple[Any, list[Any], list[Any]]:
            async with get_client() as client:
                run = (await client.read_flow_runs(limit=1, sort="START_TIME_DESC"))[0]  # type: ignore[arg-type]
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
                tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))
                return run, logs, tasks

        run, logs, tasks = asyncio.run(read_back())
        assert run.state is not None and run.state.is_completed()
        assert any("Finished in state Completed" in log.message for log in logs), [log.message for log in logs]
        assert any("Loaded key 'K2'" in log.message for log in logs) and any("'K1'" in log.message for log in logs)
        assert {"stage-K1", "load-K1", "stage-K2", "load-K2"} <= {t.name for t in tasks}
        assert all(t.state is not None and t.state.is_completed() for t in tasks), [(t.name, t.state) for t in tasks]

        bad = subprocess.run(
            [keyflow, "etl", "run", "-d", str(tmp_path / "missing.yaml"), "-p", str(profile)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


# `keyflow` itself, saying as it exits which of the libraries its ETL never uses were loaded after all.
KEYFLOW_SAYING_WHAT_IT_LOADED = """
import atexit, sys
atexit.register(lambda: print("loaded:", sorted({"numpy", "pandas", "fastapi"} & set(sys.modules))))
sys.argv[0] = "keyflow"
from flows.cli import main
main()
"""


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("path", list(PATHS))
def test_the_etl_command_runs_every_path_without_numpy_or_fastapi(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any, path: str
) -> None:
    """`keyflow etl` refuses numpy (20 MB that Arrow imports with itself) and records its run's parameters without
    FastAPI (BENCHMARKS.md): a run with text rules on the source (Arrow's whitespace and case maps are probed for
    them), one rule left for the client, or every rule on the client loads each key, and the Prefect API shows the
    run's parameters as before (the date as its ISO text)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    create_pg_source(pg, names["src_table"], source_rows(["K1", "K2", EVIL], per_key=10))
    try:
        profile = make_profile()
        put_keys(profile)
        dataset = write_dataset(tmp_path, names, path=path, rules=[{"trim": ["title"]}, {"lower": ["title"]}])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        args = ["etl", "run", "-d", str(dataset), "-p", str(profile), "--date", D1.isoformat(), "--json"]
        proc = subprocess.run(
            [sys.executable, "-c", KEYFLOW_SAYING_WHAT_IT_LOADED, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        *_, summary, loaded = proc.stdout.splitlines()
        assert loaded == "loaded: []"
        rows = json.loads(summary)
        assert sorted((r["key"], r["status"], r["rows_loaded"]) for r in rows) == sorted(
            (key, "loaded", 10) for key in ("K1", "K2", EVIL)
        )

        async def last_run_parameters() -> dict[str, Any]:
            async with get_client() as client:
                run = (await client.read_flow_runs(limit=1, sort="START_TIME_DESC"))[0]  # type: ignore[arg-type]
                return run.parameters

        assert asyncio.run(last_run_parameters()) == {
            "dataset": str(dataset),
            "run_date": "2017-03-20",
            "profile": str(profile),
        }
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")
