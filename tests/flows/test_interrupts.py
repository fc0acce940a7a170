"""An interrupted ETL run leaves nothing behind: SIGINT and SIGTERM (a user's Ctrl-C, a worker cancelling a
deployment run) remove what the run staged and its local part folders before the process ends, the CLI exits
130 / 143 with one line; after a SIGKILL, `keyflow cleanup` removes what is left at once. No process survives."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.config_files import write_yaml
from tests.helpers.etl import put_keys
from tests.helpers.services import processes_with

ROOT = Path(__file__).resolve().parents[2]
KEYFLOW = str(Path(sys.executable).parent / "keyflow")
LINE = re.compile(r"interrupted: removed (\d+) staged object\(s\) of run (\S+)")
LINES = re.compile(r"interrupted: removed (\d+) staged object\(s\) of runs? (\S+)(, \S+)?")


@pytest.fixture()
def slow_etl(pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any) -> Any:
    """A source that trickles rows (2 ms each), so a run is caught mid-staging: its profile, dataset and bucket."""
    from config.loader import load_profile
    from tasks.resources import object_store_for

    table = names["src_table"]
    with pg.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id bigint primary key, campaign_key text not null, v integer)")
        cur.execute(
            f"INSERT INTO {table} SELECT k * 100000 + n, 'K' || k, n FROM generate_series(1, 2) k, "
            "generate_series(1, 6000) n"
        )
    dataset = write_yaml(
        tmp_path / "datasets" / "slow.yaml",
        {
            "name": "facts",
            "source": {
                "query": f"SELECT s.* FROM {table} s, LATERAL (SELECT pg_sleep(0.002 + 0 * s.v)) z "
                "WHERE s.campaign_key = :key",
                "key_column": "campaign_key",
                "batch_rows": 100,
            },
            "staging": {"part_rows": 1000},
            "target": {
                "schema": names["wh_schema"],
                "table": "facts",
                "columns": [
                    {"name": "id", "type": "bigint"},
                    {"name": "campaign_key", "type": "text"},
                    {"name": "v", "type": "integer"},
                ],
            },
        },
    )
    profile = make_profile()
    put_keys(profile)  # K1 and K2 are active on 2017-03-20 (EVIL too, with no rows)
    yield profile, dataset, object_store_for(load_profile(profile, environ={}))
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def staged(store: Any) -> list[str]:
    return sorted(store.list_keys("staging/"))


def wait_for_parts(store: Any, proc: subprocess.Popen[str] | None = None, n: int = 2, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while sum("/part-" in k for k in staged(store)) < n:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended before it was interrupted:\n{proc.communicate()[1]}")
        assert time.time() < deadline, "no part was staged"
        time.sleep(0.2)


def keyflow_env(tmp_path: Path, marker: str, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TMPDIR": str(tmp_path / "tmp"), "COLUMNS": "200"}
    env["KEYFLOW_TEST_MARKER"] = marker
    if api_url:
        env["PREFECT_API_URL"] = api_url
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


def interrupt(
    slow_etl: Any, tmp_path: Path, sig: int, api_url: str | None = None, backfill: bool = False
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `keyflow etl run` (or a two-date backfill) on the slow source, send ``sig`` once parts are staged; the
    result and the marker."""
    profile, dataset, store = slow_etl
    marker = uuid.uuid4().hex
    args = [KEYFLOW, "etl", "run", "-d", str(dataset), "-p", str(profile), "--date", "2017-03-20"]
    if backfill:
        args[2:3] = ["backfill"]
        args[-2:] = ["--from", "2017-03-20", "--to", "2017-03-21", "--parallel", "2"]
    env = keyflow_env(tmp_path, marker, api_url)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_parts(store, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(args, proc.returncode, out, err), marker


def test_ctrl_c_removes_what_the_run_staged_and_exits_130_with_one_line(slow_etl: Any, tmp_path: Path) -> None:
    """No Prefect API configured: the command's temporary Prefect server goes too."""
    result, marker = interrupt(slow_etl, tmp_path, signal.SIGINT)
    output = result.stdout + result.stderr
    assert result.returncode == 130, output
    last = result.stderr.strip().splitlines()[-1]
    match = LINE.fullmatch(last)
    assert match and int(match[1]) > 0, last
    assert "Traceback" not in output and "| ERROR" not in output and "Aborted" not in output
    assert staged(slow_etl[2]) == []  # parts, manifests, records and the lease: all gone
    assert list((tmp_path / "tmp").glob("keyflow-stage-*")) == []
    assert processes_with(marker) == []  # the command stopped its server before it exited


def test_ctrl_c_during_a_parallel_backfill_removes_what_every_running_date_staged(
    slow_etl: Any, tmp_path: Path
) -> None:
    """The dates' flows run on threads, where no signal arrives: the command's own handler removes their runs."""
    result, marker = interrupt(slow_etl, tmp_path, signal.SIGINT, backfill=True)
    output = result.stdout + result.stderr
    assert result.returncode == 130, output
    match = LINES.fullmatch(result.stderr.strip().splitlines()[-1])
    assert match and int(match[1]) > 0, result.stderr
    assert "Traceback" not in output and "| ERROR" not in output and "Error logging" not in output
    assert staged(slow_etl[2]) == []
    assert list((tmp_path / "tmp").glob("keyflow-stage-*")) == []
    assert processes_with(marker) == []


@pytest.mark.usefixtures("prefect_harness")
def test_sigterm_removes_what_the_run_staged_and_exits_143(slow_etl: Any, tmp_path: Path) -> None:
    """With a Prefect server: the run is reported, not left running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    result, _ = interrupt(slow_etl, tmp_path, signal.SIGTERM, str(PREFECT_API_URL.value()))
    assert result.returncode == 143, result.stdout + result.stderr
    match = LINE.fullmatch(result.stderr.strip().splitlines()[-1])
    assert match and int(match[1]) > 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert staged(slow_etl[2]) == []
    assert list((tmp_path / "tmp").glob("keyflow-stage-*")) == []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=50, sort=FlowRunSort.START_TIME_DESC)
        run = next(r for r in runs if match[2].endswith(str(r.id)[:8]))
    assert run.state is not None and run.state.is_final() and not run.state.is_completed(), run.state


def test_after_a_sigkill_cleanup_removes_the_run_at_once(
    slow_etl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run renews no lease; its holder is gone from this host, so cleanup need not wait the lease out.
    The temporary Prefect server dies with the command."""
    import tempfile

    from typer.testing import CliRunner

    from flows.cli import app

    profile, _, store = slow_etl
    result, marker = interrupt(slow_etl, tmp_path, signal.SIGKILL)
    assert result.returncode == -9
    left = staged(store)
    assert any(k.endswith("/_lease.json") for k in left) and any("/part-" in k for k in left), left
    assert list((tmp_path / "tmp").glob("keyflow-stage-*"))  # the killed process's part folder
    deadline = time.time() + 30
    while processes_with(marker) and time.time() < deadline:  # the kernel sent its server SIGTERM
        time.sleep(0.5)
    assert processes_with(marker) == []

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    cleaned = CliRunner().invoke(app, ["cleanup", "-p", str(profile), "--older-than", "0"])
    assert cleaned.exit_code == 0, cleaned.output
    assert f"Removed {len(left)} object(s) of 1 run(s)." in cleaned.output
    assert staged(store) == []
    assert list((tmp_path / "tmp").glob("keyflow-stage-*")) == []


@pytest.mark.usefixtures("prefect_harness")
def test_a_worker_cancelling_a_deployment_run_removes_what_it_staged(
    slow_etl: Any, tmp_path: Path, names: dict[str, str]
) -> None:
    """SIGTERM is how a worker cancels a flow run: the run's process removes its staged objects before it ends."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    profile, dataset, store = slow_etl
    pool = names["keys_table"].replace("_", "-")
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    spec["deployments"] = [
        {
            **spec["deployments"][0],
            "name": "cancel-me",
            "parameters": {"dataset": str(dataset), "profile": str(profile), "run_date": "2017-03-20"},
            "work_pool": {"name": pool},
        }
    ]
    prefect_file = write_yaml(tmp_path / "prefect.yaml", spec)
    marker = uuid.uuid4().hex
    env = keyflow_env(tmp_path, marker, str(PREFECT_API_URL.value())) | {"KEYFLOW_HOME": str(ROOT)}
    prefect = str(Path(sys.executable).parent / "prefect")

    def call(*args: str) -> str:
        proc = subprocess.run([prefect, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    call("work-pool", "create", pool, "--type", "process")
    call("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    out = call("deployment", "run", "rds-to-redshift/cancel-me")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert flow_run_id, out
    worker = subprocess.Popen(
        [prefect, "worker", "start", "--pool", pool],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_parts(store, timeout=240)
        call("flow-run", "cancel", flow_run_id[1])
        deadline = time.time() + 120
        state = None
        while time.time() < deadline:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(uuid.UUID(flow_run_id[1])).state
            if state is not None and state.is_final():
                break
            time.sleep(1)
        assert state is not None and state.is_cancelled(), state
        deadline = time.time() + 30
        while staged(store) and time.time() < deadline:  # the flow-run process removes them as it ends
            time.sleep(0.5)
        assert staged(store) == []
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert list((tmp_path / "tmp").glob("keyflow-stage-*")) == []
