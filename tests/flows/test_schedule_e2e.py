"""The README's "Run on a schedule", end to end: a real Prefect server, a process work pool, `prefect deploy`,
a deployment run picked up by `prefect worker start`, and the result checked in the warehouse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.config_files import write_yaml
from tests.helpers.etl import (
    D1,
    EVIL,
    create_pg_source,
    expected,
    put_keys,
    source_rows,
    warehouse,
    write_dataset,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_harness")


def prefect(*args: str, env: dict[str, str], timeout: int = 180) -> str:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_deploy_and_run_through_a_process_worker(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    from prefect.settings import PREFECT_API_URL

    rows = source_rows(["K1", "K2", EVIL], per_key=12)
    create_pg_source(pg, names["src_table"], rows)
    try:
        profile = make_profile()
        put_keys(profile)
        dataset = write_dataset(tmp_path, names)
        pool = names["keys_table"].replace("_", "-")
        spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
        spec["deployments"] = [
            {
                **spec["deployments"][0],
                "name": "e2e",
                "parameters": {"dataset": str(dataset), "profile": str(profile), "run_date": D1.isoformat()},
                "work_pool": {"name": pool},
            }
        ]
        prefect_file = write_yaml(tmp_path / "prefect.yaml", spec)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "KEYFLOW_HOME": str(ROOT),
        }
        prefect("work-pool", "create", pool, "--type", "process", env=env)
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), env=env)
        prefect("deployment", "run", "rds-to-redshift/e2e", env=env)
        prefect("worker", "start", "--pool", pool, "--run-once", env=env, timeout=300)
        # Only the worker's flow run could have loaded these rows.
        assert warehouse(pg, names) == expected(rows, {"K1", "K2", EVIL})
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")
