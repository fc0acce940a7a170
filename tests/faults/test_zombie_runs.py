"""A killed flow-run process or worker does not hold the schedule (issue 18 item 2): every deployment sends
heartbeats, and the shipped automation, created by the README's one command on a real Prefect server, crashes a
keyflow run whose heartbeats stop."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "deployments" / "prefect.yaml"
AUTOMATIONS = ROOT / "deployments" / "automations.yaml"
HEARTBEAT = 30


def test_every_deployment_sends_heartbeats() -> None:
    specs = yaml.safe_load(DEPLOYMENTS.read_text())["deployments"]
    assert specs
    for spec in specs:
        env = spec["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT), spec["name"]


@pytest.mark.usefixtures("prefect_harness")
def test_the_zombie_automation_is_created_by_one_command_and_matches_keyflow_runs() -> None:
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [str(Path(sys.executable).parent / "prefect"), "automation", "create", "--from-file", str(AUTOMATIONS)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    created: Any = Automation.read(name="keyflow-crash-zombie-runs")
    try:
        assert created.enabled
        trigger = created.trigger
        assert isinstance(trigger, EventTrigger) and trigger.posture == Posture.Proactive
        # At least three heartbeats of silence before a run is called dead, and a Crashed run well within 2 minutes.
        assert timedelta(seconds=3 * HEARTBEAT) <= trigger.within <= timedelta(seconds=110)
        assert trigger.after == {"prefect.flow-run.heartbeat"}
        assert trigger.expect >= {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed"}
        assert trigger.for_each == {"prefect.resource.id"}
        assert trigger.match.root == {"prefect.resource.id": "prefect.flow-run.*"}
        related = trigger.match_related
        related = related[0] if isinstance(related, list) else related
        # Only keyflow's runs (every deployment is tagged keyflow).
        assert related.root == {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.keyflow"}
        (action,) = created.actions
        assert isinstance(action, ChangeFlowRunState) and action.state == StateType.CRASHED
    finally:
        created.delete()


def test_a_keyflow_run_whose_heartbeats_stop_is_crashed(tmp_path: Path) -> None:
    """The shipped automation on a real server with its services: a keyflow run that sent a heartbeat, then went
    silent, is marked Crashed; an untagged run is left alone. The window is cut to 15 s so the test is quick."""
    import asyncio
    import time
    import uuid

    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    from tests.helpers.private_db import PrivatePrefect

    data = yaml.safe_load(AUTOMATIONS.read_text())
    data["automations"][0]["trigger"]["within"] = 15
    quick = tmp_path / "automations.yaml"
    quick.write_text(yaml.safe_dump(data))
    server = PrivatePrefect(services=True)
    try:
        server.start()
        prefect = [str(Path(sys.executable).parent / "prefect"), "automation", "create", "--from-file", str(quick)]
        proc = subprocess.run(prefect, env=server.env(), capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with temporary_settings({PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
            stand_in = Flow(fn=lambda: None, name="rds-to-redshift")
            runs = {
                tag: client.create_flow_run(flow=stand_in, tags=[tag], state=Running()) for tag in ("keyflow", "other")
            }

            async def heartbeat() -> None:
                async with PrefectEventsClient(server.url) as events:
                    for tag, run in runs.items():
                        await events.emit(
                            Event(
                                event="prefect.flow-run.heartbeat",
                                resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
                                related=[{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}],
                                id=uuid.uuid4(),
                            )
                        )

            asyncio.run(heartbeat())
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                state = client.read_flow_run(runs["keyflow"].id).state
                if state is not None and state.is_crashed():
                    break
                time.sleep(2)
            crashed = client.read_flow_run(runs["keyflow"].id).state
            other = client.read_flow_run(runs["other"].id).state
        assert crashed is not None and crashed.is_crashed(), crashed
        assert "No heartbeat for 90 s" in (crashed.message or "")
        assert other is not None and other.is_running()
    finally:
        server.remove()
