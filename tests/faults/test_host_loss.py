"""A host lost mid-load, end to end: the worker and the flow-run process SIGKILLed together, on a Prefect server with
its services and the shipped zombie automation (its window cut from 90 s to 45 s: the heartbeat cannot be sent more
often than every 30 s). The dead run is marked Crashed by the automation, the next run of the deployment (limit 1,
ENQUEUE, as shipped) waits for the slot, then starts once the dead run is Crashed, never alongside it, sweeps what
the dead run staged and loads every key exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.faults.test_dropped_connections import (
    ACTIVE,
    assert_every_key_loaded,
    slow_source,
    staged_left,
    warehouse_rows,
)
from tests.faults.test_zombie_runs import AUTOMATIONS, DEPLOYMENTS
from tests.helpers.config_files import write_yaml
from tests.helpers.etl import D1, expected, run
from tests.helpers.faults import pg_backends, slow_pg_inserts
from tests.helpers.private_db import PrivatePrefect
from tests.helpers.services import PG_DSN, processes_with

pytestmark = pytest.mark.usefixtures("prefect_harness")
__all__ = ["slow_source"]  # the fixture of test_dropped_connections.py used here

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")
WITHIN = 45  # at least one 30 s heartbeat interval and room for a late one
T = TypeVar("T")


def poll(what: str, get: Callable[[], T | None], seconds: float = 300) -> T:
    """``get()`` once it returns something; fail naming ``what`` after ``seconds`` (generous: a loaded machine)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = get()
        if found:
            return found
        time.sleep(1)
    pytest.fail(f"{what}: not seen within {seconds:.0f} s")


def test_a_host_lost_mid_load_is_crashed_and_the_next_run_loads_every_key_once(
    pg: Any, slow_source: Any, names: dict[str, str], tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    rows, dataset, profile, _ = slow_source
    state, results = run(dataset, profile, D1)  # on the session's server: creates the target (the previous slice)
    assert_every_key_loaded(state, results)
    slow_pg_inserts(pg, names["wh_schema"], "facts", 0.2)  # a key's load takes 8 s: the kill lands mid-load

    quick = yaml.safe_load(AUTOMATIONS.read_text())
    quick["automations"][0]["trigger"]["within"] = WITHIN
    (spec,) = [d for d in yaml.safe_load(DEPLOYMENTS.read_text())["deployments"] if d["name"].startswith("rds")]
    pool = names["keys_table"].replace("_", "-")
    deployment = {
        **{k: v for k, v in spec.items() if k != "schedules"},  # runs are started below, as the schedule would
        "name": "host-loss",
        "parameters": {"dataset": str(dataset), "profile": str(profile), "run_date": D1.isoformat()},
        "work_pool": {**spec["work_pool"], "name": pool},
    }
    prefect_file = write_yaml(
        tmp_path / "prefect.yaml", {**yaml.safe_load(DEPLOYMENTS.read_text()), "deployments": [deployment]}
    )
    # A queued run asks for the slot again every 5 s (30 s by default), a worker polls every 2 s (10 s): quicker.
    server = PrivatePrefect(services=True, settings={"PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5"})
    workers: list[subprocess.Popen[bytes]] = []
    marker = uuid.uuid4().hex
    (tmp_path / "tmp").mkdir()
    env = server.env() | {"KEYFLOW_HOME": str(ROOT), "TMPDIR": str(tmp_path / "tmp"), "KEYFLOW_TEST_MARKER": marker}
    env["PREFECT_WORKER_QUERY_SECONDS"] = "2"

    def prefect(*args: str) -> str:
        proc = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def worker() -> None:
        with open(tmp_path / f"worker-{len(workers)}.log", "wb") as log:
            workers.append(
                subprocess.Popen(
                    [PREFECT, "worker", "start", "--pool", pool], cwd=ROOT, env=env, stdout=log, stderr=log
                )
            )

    try:
        server.start()
        automations = write_yaml(tmp_path / "automations.yaml", quick)
        prefect("automation", "create", "--from-file", str(automations))
        prefect("work-pool", "create", pool, "--type", "process")
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
        with temporary_settings({PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
            deployment_id = client.read_deployment_by_name("rds-to-redshift/host-loss").id
            first = client.create_flow_run_from_deployment(deployment_id)
            worker()
            poll("the first run loading", pg_backends(PG_DSN, f"COPY %{names['wh_schema']}%facts%FROM STDIN%"))
            running = client.read_flow_run(first.id).state
            assert running is not None and running.is_running(), running
            for pid in processes_with(marker):  # the host is lost: the worker and the flow-run process at once
                os.kill(pid, signal.SIGKILL)
            for w in workers:
                w.wait(timeout=30)
            assert processes_with(marker) == []

            second = client.create_flow_run_from_deployment(deployment_id)  # the next scheduled run
            worker()  # a worker on another host, polling the pool
            crashed = poll(
                "the dead run marked Crashed",
                lambda: (s := client.read_flow_run(first.id).state) is not None and s.is_crashed() and s,
            )
            assert "No heartbeat for 90 s" in (crashed.message or "")  # the shipped automation did it
            done = poll(
                "the next run finished", lambda: (s := client.read_flow_run(second.id).state) and s.is_final() and s
            )
            assert done.is_completed() and done.message == f"{len(ACTIVE)} key(s) loaded", done.message
            after = client.read_flow_run(second.id)
            assert after.start_time is not None and after.start_time >= crashed.timestamp  # never alongside it
            history = client.read_flow_run_states(second.id)
            assert any(s.name == "AwaitingConcurrencySlot" for s in history), [s.name for s in history]
        assert warehouse_rows(PG_DSN, names["wh_schema"]) == expected(rows, ACTIVE)  # every key once
        assert staged_left(profile) == []  # the dead run's parts and lease were swept by the next run
        assert list((tmp_path / "tmp").glob("keyflow-stage-*")) == []
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        for w in workers:
            w.wait(timeout=30)
        server.remove()
