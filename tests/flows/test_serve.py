"""`keyflow serve` against a real Prefect server touches only what it serves: a work-pool deployment of the same
name is refused, and stays in its pool and active after `serve` stops."""

from __future__ import annotations

import copy
import os
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

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_harness")


def read(name: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def test_serve_refuses_a_work_pool_deployment_and_leaves_it_active(tmp_path: Path) -> None:
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    tag = uuid.uuid4().hex[:8]
    pooled, served, pool = f"etl-{tag}", f"etl-served-{tag}", f"pool-{tag}"
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    etl = spec["deployments"][0]
    spec["deployments"] = [
        {**copy.deepcopy(etl), "name": pooled, "work_pool": {"name": pool}},
        {**copy.deepcopy(etl), "name": served},
    ]
    deployments = write_yaml(tmp_path / "prefect.yaml", spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = str(Path(sys.executable).parent / "prefect")
    for args in (["work-pool", "create", pool, "--type", "process"], ["--no-prompt", "deploy", "-n", pooled]):
        done = subprocess.run(
            [prefect, *args, "--prefect-file", str(deployments)] if "deploy" in args else [prefect, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    before = read(f"rds-to-redshift/{pooled}")
    assert before.work_pool_name == pool and not before.paused

    def serve(*names: str) -> subprocess.Popen[str]:
        args = [sys.executable, "-m", "flows.cli", "serve", "--file", str(deployments)]
        for name in names:
            args += ["--name", name]
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    refused = serve(pooled)
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2, out
    assert out.strip().splitlines()[-1] == (
        f"error: {deployments}: deployment 'rds-to-redshift/{pooled}' exists in work pool '{pool}': serving it "
        "would take it from the pool's workers and pause its schedule when `keyflow serve` stops; leave it out "
        "(--name) or rename it in the file"
    ), out
    assert "Traceback" not in out

    # Serving the other one, then stopping with Ctrl-C: only what serve served is paused.
    running = serve(served)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and running.poll() is None:
            try:
                read(f"rds-to-redshift/{served}")
                break
            except ObjectNotFound:
                time.sleep(1)
        assert running.poll() is None, running.communicate()[0]
        time.sleep(2)
        running.send_signal(signal.SIGINT)
        running.wait(60)
    finally:
        if running.poll() is None:
            running.kill()
    after = read(f"rds-to-redshift/{pooled}")
    assert after.work_pool_name == pool and not after.paused, after
    assert [s.active for s in after.schedules] == [True]
    assert read(f"rds-to-redshift/{served}").paused  # what serve served, it pauses when it stops
