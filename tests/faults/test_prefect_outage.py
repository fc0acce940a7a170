"""The Prefect API down mid-run (a restarted self-hosted server, an outage), on a real Prefect server of the test's own:
the kill-switch and limit checks fail open, no key fails for it, and a failed run still ends in a state Prefect can
raise (issue 18 items 3 and 5)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.errors import RunFailedError
from tests.faults.test_dropped_connections import (
    ACTIVE,
    PER_KEY,
    RIDE_OUT,
    assert_every_key_loaded,
    staged_left,
    warehouse_rows,
)
from tests.helpers.etl import D1, KEYS, create_pg_source, expected, put_keys, run, source_rows, write_dataset
from tests.helpers.faults import WhenRunning, pg_backends, restart, slow_pg_view
from tests.helpers.private_db import PrivatePrefect
from tests.helpers.services import PG_DSN, unique


@pytest.fixture()
def private_prefect() -> Iterator[PrivatePrefect]:
    """A Prefect server of this test alone, which it may stop (never the session's harness)."""
    server = PrivatePrefect()
    try:
        server.start()
        yield server
    finally:
        # Prefect's event and log workers of this server send what they hold while it is up: a worker left with a
        # server that is gone would hold up the end of the session.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (EventsWorker, APILogWorker):
            worker.drain_all(timeout=30)
        server.remove()


@pytest.fixture()
def keyflow_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Warnings of the run (the Prefect run loggers and keyflow's own)."""
    caplog.set_level(logging.WARNING)
    for name in ("prefect", "prefect.task_runs", "prefect.flow_runs", "keyflow"):
        logging.getLogger(name).propagate = True
    return caplog


def test_a_prefect_api_outage_mid_run_fails_no_key(
    pg: Any,
    private_prefect: PrivatePrefect,
    tmp_path: Path,
    names: dict[str, str],
    make_profile: Any,
    monkeypatch: pytest.MonkeyPatch,
    keyflow_log: pytest.LogCaptureFixture,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import tasks.control

    monkeypatch.setattr(tasks.control, "API_RETRY_DELAYS", (0.2, 0.4))  # fail open after 0.6 s, not 7 s
    rows = source_rows([k[0] for k in KEYS], per_key=PER_KEY)
    base, helpers = names["src_table"] + "_base", names["src_table"] + "_f"
    create_pg_source(pg, base, rows)
    slow_pg_view(pg, helpers, base, names["src_table"], 0.06)  # 2.4 s a key, one key at a time
    profile = make_profile(max_parallel_keys=1, source_concurrency_limit=unique("src-limit"), **RIDE_OUT)
    put_keys(profile)
    # Each key a branch of its own (three small keys would share one unit): each takes a source slot.
    dataset = write_dataset(tmp_path, names, units={"max_keys_per_unit": 1})
    # The server goes down while the first key extracts and comes back (same port, same database) seconds later:
    # the next keys check the kill switch and take a source slot while it is down.
    fault = WhenRunning(
        pg_backends(PG_DSN, f"COPY (SELECT%FROM%{names['src_table']}%"), restart(private_prefect, down_seconds=3)
    )
    try:
        fault.start()
        with temporary_settings({PREFECT_API_URL: private_prefect.url}):
            state, results = run(dataset, profile, D1)
        fault.check()
        assert_every_key_loaded(state, results)
        assert warehouse_rows(PG_DSN, names["wh_schema"]) == expected(rows, ACTIVE)
        assert staged_left(profile) == []
        # The first key's slot could not be given back while the server was down: a warning, not a failed key.
        assert "Prefect API unreachable, the slot of 'src-limit_" in keyflow_log.text
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP VIEW IF EXISTS {names['src_table']}")
            cur.execute(f"DROP TABLE IF EXISTS {base}")
            for schema in (helpers, names["wh_schema"]):
                cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_the_kill_switch_and_limit_checks_fail_open_when_the_api_stays_down(
    monkeypatch: pytest.MonkeyPatch, keyflow_log: pytest.LogCaptureFixture
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import tasks.control
    from tests.helpers.services import free_port

    monkeypatch.setattr(tasks.control, "API_RETRY_DELAYS", (0.1, 0.1))
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        assert tasks.control.is_paused("etl") is False
        tasks.control.ensure_limit("rds-marketing", 2)
        with tasks.control.source_slot("rds-marketing"):
            pass
    assert [r.getMessage().split(":")[0] for r in keyflow_log.records if r.name == "keyflow.control"] == [
        "Prefect API unreachable, cannot read the etl kill switch; going on",
        "Prefect API unreachable, cannot check the limit 'rds-marketing'; going on",
        "Prefect API unreachable, cannot take a slot of 'rds-marketing'; extracting without one",
    ]


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_run_raises_its_error_not_a_type_error(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """Issue 18 item 5: Prefect resolves a Failed state into an exception (a deployment run, a plain call)."""
    from flows.rds_to_redshift import rds_to_redshift

    rows = source_rows([k[0] for k in KEYS], per_key=5)
    create_pg_source(pg, names["src_table"], rows)
    try:
        profile = make_profile()
        put_keys(profile)
        dataset = write_dataset(tmp_path, names)
        rds_to_redshift(dataset=str(dataset), run_date=D1, profile=str(profile))  # creates the target
        with pg.cursor() as cur:  # K2's rows now break the target: its load fails, the others load
            cur.execute(
                f"ALTER TABLE {names['wh_schema']}.facts ADD CONSTRAINT no_k2 CHECK (campaign_key <> 'K2') NOT VALID"
            )
        with pytest.raises(RunFailedError, match=r"^1 of 3 key\(s\) failed: K2$") as failed:
            rds_to_redshift(dataset=str(dataset), run_date=D1, profile=str(profile))
        by_key = {r["key"]: r["status"] for r in failed.value.data}
        assert by_key == {"K1": "loaded", "K2": "failed", "x'); drop table t; --": "loaded"}
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.usefixtures("prefect_harness")
def test_a_deployment_run_that_ends_failed_logs_no_type_error(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """Issue 18 item 5 through a real worker: the run ends Failed naming its key, without Prefect's TypeError."""
    import os
    import subprocess
    import sys

    import yaml
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from tests.helpers.config_files import write_yaml

    root = Path(__file__).resolve().parents[2]
    rows = source_rows([k[0] for k in KEYS], per_key=5)
    create_pg_source(pg, names["src_table"], rows)
    try:
        profile = make_profile()
        put_keys(profile)
        dataset = write_dataset(tmp_path, names)
        run(dataset, profile, D1)  # creates the target; K2's rows then break it
        with pg.cursor() as cur:
            cur.execute(
                f"ALTER TABLE {names['wh_schema']}.facts ADD CONSTRAINT no_k2 CHECK (campaign_key <> 'K2') NOT VALID"
            )
        pool = names["keys_table"].replace("_", "-")
        spec = yaml.safe_load((root / "deployments" / "prefect.yaml").read_text())
        spec["deployments"] = [
            {
                **spec["deployments"][0],
                "name": "failing",
                "parameters": {"dataset": str(dataset), "profile": str(profile), "run_date": D1.isoformat()},
                "work_pool": {**spec["deployments"][0]["work_pool"], "name": pool},
            }
        ]
        prefect_file = write_yaml(tmp_path / "prefect.yaml", spec)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "KEYFLOW_HOME": str(root),
        }
        prefect = str(Path(sys.executable).parent / "prefect")
        output = ""
        for args in (
            ["work-pool", "create", pool, "--type", "process"],
            ["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
            ["deployment", "run", "rds-to-redshift/failing"],
            ["worker", "start", "--pool", pool, "--run-once"],
        ):
            proc = subprocess.run([prefect, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            output = proc.stdout + proc.stderr
        assert "cannot be resolved into an exception" not in output and "TypeError" not in output, output
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        (flow_run,) = [r for r in runs if r.deployment_id and r.parameters.get("profile") == str(profile)]
        assert flow_run.state is not None and flow_run.state.is_failed()
        assert flow_run.state.message == "1 of 3 key(s) failed: K2"
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")
