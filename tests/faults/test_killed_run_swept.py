"""A killed ETL run's leftovers are swept by the next run of its dataset, with no `keyflow cleanup` needed.

A real `keyflow etl run` process is SIGKILLed mid-upload (it leaves parts, its lease and a local part folder), then
the same command runs again: it logs one line naming what it removed, loads every row once and leaves nothing
staged. The sweep never touches a run with a fresh lease (a live run), a run without a lease (files kept on
purpose) or a run whose Data API load is still pending.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.flows.test_cleanup import dead_pid
from tests.flows.test_interrupts import KEYFLOW, interrupt, keyflow_env, slow_etl, staged
from tests.helpers.services import processes_with

__all__ = ["slow_etl"]  # the fixture of tests/flows/test_interrupts.py used here

SWEPT = "Swept what killed runs of facts left: {n} staged object(s) of run {run}"


def test_a_killed_runs_leftovers_are_swept_by_the_next_run(slow_etl: Any, pg: Any, tmp_path: Path) -> None:
    profile, dataset, store = slow_etl
    result, marker = interrupt(slow_etl, tmp_path, signal.SIGKILL)
    assert result.returncode == -9
    left = staged(store)
    assert any(k.endswith("/_lease.json") for k in left) and any("/part-" in k for k in left), left
    (killed_run,) = {k.split("/")[2] for k in left}
    assert list((tmp_path / "tmp").glob("keyflow-stage-*"))  # the killed process's part folder
    deadline = time.monotonic() + 60
    while processes_with(marker) and time.monotonic() < deadline:  # its temporary Prefect server goes too
        time.sleep(0.5)

    again = subprocess.run(
        [KEYFLOW, "etl", "run", "-d", str(dataset), "-p", str(profile), "--date", "2017-03-20"],
        env=keyflow_env(tmp_path, uuid.uuid4().hex),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert SWEPT.format(n=len(left), run=killed_run) in output, output
    assert "Traceback" not in output and "| ERROR" not in output
    assert staged(store) == []  # the killed run's objects and lease, and the new run's own: nothing left
    assert list((tmp_path / "tmp").glob("keyflow-stage-*")) == []
    with pg.cursor() as cur:
        cur.execute(
            "SELECT campaign_key, count(*), count(DISTINCT id) FROM "
            f"{_target_schema(dataset)}.facts GROUP BY campaign_key ORDER BY 1"
        )
        assert cur.fetchall() == [("K1", 6000, 6000), ("K2", 6000, 6000)]  # every row once


def _target_schema(dataset: Path) -> str:
    import yaml

    return str(yaml.safe_load(dataset.read_text())["target"]["schema"])


@pytest.mark.usefixtures("prefect_harness")
def test_the_sweep_takes_only_dead_runs(make_profile: Any) -> None:
    from prefect import flow

    from config.loader import load_profile
    from tasks.cleanup import RunLease, Swept, dead_runs, sweep_dead_runs
    from tasks.resources import object_store_for, resources_for
    from tasks.transforms.staging import lease_record

    profile = load_profile(make_profile(), environ={})
    store = object_store_for(profile)
    host = socket.gethostname()
    now = datetime.now(UTC)

    def put_run(dataset: str, run_id: str, lease: bytes | None) -> str:
        prefix = f"staging/{dataset}/{run_id}/"
        store.put_bytes(b"x", prefix + "K1/part-00000.csv.zst")
        if lease is not None:
            store.put_bytes(lease, prefix + "_lease.json")
        return run_id

    killed = put_run("facts", "2017-03-20-101010-deadbeef", lease_record("r", f"{host}:{dead_pid()}", now, 300))
    live = put_run("facts", "2017-03-20-111111-a11ce000", None)
    RunLease(store, "staging/facts/2017-03-20-111111-a11ce000/", live).renew()  # this process: alive
    put_run("facts", "2017-03-20-121212-0ce0ce00", None)  # keep_staged: no lease
    pending = put_run("facts", "2017-03-20-131313-0e0e0e0e", lease_record("r", f"{host}:{dead_pid()}", now, 300))
    store.put_bytes(
        json.dumps({"statement_id": "s1", "run_id": pending, "rows": 1}).encode(),
        "staging/_loads/facts/2017-03-20/K1/statement.json",
    )
    put_run("other", "2017-03-20-141414-0a0a0a0a", lease_record("r", f"{host}:{dead_pid()}", now, 300))
    remote = put_run("facts", "2017-03-20-151515-0b0b0b0b", lease_record("r", "elsewhere:1", now, 300))

    killed_upload = store._s3.create_multipart_upload(Bucket=store.bucket, Key=f"staging/facts/{killed}/K2/part-00000")
    live_upload = store._s3.create_multipart_upload(Bucket=store.bucket, Key=f"staging/facts/{live}/K2/part-00000")

    resources = resources_for(profile)
    assert [r.run_id for r in dead_runs(resources, "facts")] == [killed]
    # A lease no one renewed for longer than LEASE_SECONDS: its holder (on another host) is presumed dead too.
    later = datetime.now(UTC) + timedelta(seconds=301)
    assert sorted(r.run_id for r in dead_runs(resources, "facts", now=later)) == sorted([killed, live, remote])

    before = set(store.list_keys("staging/"))

    @flow
    def sweep() -> Swept:
        return sweep_dead_runs(resources, "facts")

    swept = sweep()
    assert (swept.runs, swept.objects, swept.uploads) == ((killed,), 2, 1)  # its part and its lease; its upload
    assert before - set(store.list_keys("staging/")) == {
        f"staging/facts/{killed}/K1/part-00000.csv.zst",
        f"staging/facts/{killed}/_lease.json",
    }
    uploads = {u["UploadId"] for u in store.incomplete_uploads("staging/")}
    assert live_upload["UploadId"] in uploads and killed_upload["UploadId"] not in uploads
    assert swept.line("facts").startswith(f"Swept what killed runs of facts left: 2 staged object(s) of run {killed}")
