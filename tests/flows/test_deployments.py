"""deployments/prefect.yaml: entrypoints import, parameters fit, schedules are as documented; `serve` works."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.errors import ConfigError
from flows.serve import deployment_specs, load_flow
from tests.helpers.config_files import write_yaml

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "deployments" / "prefect.yaml"


def test_every_deployment_imports_and_its_parameters_fit_the_flow() -> None:
    specs = deployment_specs(FILE)
    etl = next(s for s in specs if s["entrypoint"] == "flows/rds_to_redshift.py:rds_to_redshift")
    assert etl["schedules"] == [{"cron": "0 3,14 * * *", "timezone": "UTC"}]
    assert etl["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert load_flow(etl["entrypoint"]).name == "rds-to-redshift"
    trends = next(s for s in specs if s["entrypoint"] == "flows/trend_scoring.py:trend_scoring")
    assert trends["schedules"] == [{"cron": "* * * * *", "timezone": "UTC"}]
    # A run still going when the next minute starts: the new one is cancelled, its windows caught up next time.
    assert trends["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert load_flow(trends["entrypoint"]).name == "trend-scoring"
    ingest = next(s for s in specs if s["entrypoint"] == "flows/ingest_events.py:ingest_events")
    assert ingest["schedules"] == [{"cron": "*/5 * * * *", "timezone": "UTC"}]
    assert ingest["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    files = next(s for s in specs if s["entrypoint"] == "flows/ingest_files.py:ingest_files")
    assert files["schedules"] == [{"cron": "15 * * * *", "timezone": "UTC"}]
    assert {s["name"] for s in specs} == {
        "rds-to-redshift-campaign-facts",
        "ingest-files-campaign-facts",
        "ingest-events-activity",
        "trend-scoring-trending",
    }
    assert all(s["work_pool"]["name"] == "keyflow-process" and "keyflow" in s["tags"] for s in specs)


def test_a_parameter_the_flow_does_not_take_is_refused(tmp_path: Path) -> None:
    bad = write_yaml(
        tmp_path / "prefect.yaml",
        {
            "deployments": [
                {
                    "name": "x",
                    "entrypoint": "flows/rds_to_redshift.py:rds_to_redshift",
                    "parameters": {"datset": "typo"},
                }
            ]
        },
    )
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.parameters: "):
        deployment_specs(bad)


@pytest.mark.usefixtures("prefect_harness")
def test_serve_registers_the_scheduled_deployment() -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--file", str(FILE)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 90
        found = None
        while time.time() < deadline and found is None and proc.poll() is None:
            with get_client(sync_client=True) as client:
                found = next((d for d in client.read_deployments() if d.name == "rds-to-redshift-campaign-facts"), None)
            time.sleep(1)
        assert found is not None, proc.stdout.read() if proc.poll() is not None and proc.stdout else "not served"
        assert [s.schedule.cron for s in found.schedules] == ["0 3,14 * * *"]  # type: ignore[union-attr]
        assert found.parameters == {"dataset": "campaign_facts", "profile": "aws"}
        with get_client(sync_client=True) as client:
            trends = next(d for d in client.read_deployments() if d.name == "trend-scoring-trending")
        assert [s.schedule.cron for s in trends.schedules] == ["* * * * *"]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(30)
