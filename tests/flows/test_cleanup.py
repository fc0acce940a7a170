"""What an ETL run leaves behind: `keyflow cleanup` removes a killed run's objects, incomplete uploads and local
part folders, never a run that is still running (its lease is fresh), however long its load takes; `keyflow audit`
names the command when it finds leftovers."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers.etl import D1, create_pg_source, expected, put_keys, run, source_rows, warehouse, write_dataset

runner = CliRunner()
DEAD = "staging/facts/2017-03-20-101010-deadbeef/"
LIVE = "staging/facts/2017-03-20-111111-a11ce000/"


def store_of(profile: Path) -> Any:
    from config.loader import load_profile
    from tasks.resources import object_store_for

    return object_store_for(load_profile(profile, environ={}))


def keys_under(store: Any, prefix: str = "staging/") -> set[str]:
    return set(store.list_keys(prefix))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cleanup_removes_what_a_killed_run_left_and_keeps_a_running_run(
    make_profile: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.cleanup import RunLease

    profile = make_profile()
    store = store_of(profile)
    for key in ("K1/part-00000.csv.zst", "K1/manifest.json", "K1/_keyflow.json", "K2/part-00000.csv.zst"):
        store.put_bytes(b"x" * 10, DEAD + key)
    upload = store._s3.create_multipart_upload(Bucket=store.bucket, Key=DEAD + "K3/part-00000.csv.zst")
    store.put_bytes(b"y", LIVE + "K1/part-00000.csv.zst")
    RunLease(store, LIVE, "2017-03-20-111111-a11ce000").renew()  # a run in another process, renewing its lease
    others = {"staging/notes.txt", "staging/facts/by-hand/x.csv"}  # not a run's: never touched
    for key in others:
        store.put_bytes(b"z", key)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = tmp_path / f"keyflow-stage-{dead_pid()}-abc123"
    mine = tmp_path / f"keyflow-stage-{__import__('os').getpid()}-def456"
    gone.mkdir()
    mine.mkdir()
    monkeypatch.setenv("COLUMNS", "250")

    fresh = runner.invoke(app, ["cleanup", "-p", str(profile)])  # default --older-than 24h: all of it is fresh
    assert fresh.exit_code == 0, fresh.output
    assert f"kept         s3://{store.bucket}/{DEAD}: written " in fresh.output
    assert "ago, younger than 24.0 h" in fresh.output
    assert f"kept         s3://{store.bucket}/{LIVE}: running: its lease was renewed " in fresh.output
    assert f"removed      local folder {gone} (process " in fresh.output  # a dead process's folder: always
    assert not gone.exists() and mine.exists()

    dry = runner.invoke(app, ["cleanup", "-p", str(profile), "--older-than", "0", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would remove s3://{store.bucket}/{DEAD}: 4 object(s), 40 bytes" in dry.output
    assert f"would remove incomplete upload s3://{store.bucket}/{DEAD}K3/part-00000.csv.zst" in dry.output
    assert f"kept         s3://{store.bucket}/{LIVE}: running" in dry.output
    assert "4 object(s) of 1 run(s) would be removed; run again without --dry-run." in dry.output
    assert len(keys_under(store, DEAD)) == 4

    done = runner.invoke(app, ["cleanup", "-p", str(profile), "--older-than", "0"])
    assert done.exit_code == 0, done.output
    assert "Removed 4 object(s) of 1 run(s)." in done.output
    assert keys_under(store) == others | {LIVE + "K1/part-00000.csv.zst", LIVE + "_lease.json"}
    uploads = store._s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert upload["UploadId"] not in {u["UploadId"] for u in uploads}

    again = runner.invoke(app, ["cleanup", "-p", str(profile), "--older-than", "0"])
    assert again.exit_code == 0 and f"Nothing to clean up under s3://{store.bucket}/staging/." in again.output

    bad = runner.invoke(app, ["cleanup", "-p", str(profile), "--older-than", "yesterday"])
    assert bad.exit_code == 2
    assert "error: --older-than: 'yesterday' is not a duration (a number and s, m, h or d: 30m, 24h, 7d)" in bad.output


def test_audit_names_the_cleanup_command_and_spares_a_running_run(make_profile: Any) -> None:
    from tasks.cleanup import RunLease

    profile = make_profile()
    store = store_of(profile)
    store.put_bytes(b"x", DEAD + "K1/part-00000.csv.zst")
    store.put_bytes(b"y", LIVE + "K1/part-00000.csv.zst")
    RunLease(store, LIVE, "2017-03-20-111111-a11ce000").renew()

    stale = runner.invoke(app, ["audit", "-p", str(profile), "--max-age-hours", "0"])
    assert stale.exit_code == 1
    assert f"leftover staged file: s3://{store.bucket}/{DEAD}K1/part-00000.csv.zst" in stale.output
    assert LIVE + "K1" not in stale.output.replace("\n", "")  # a running run's files are not leftovers
    assert f"1 leftover staged file(s): run `keyflow cleanup -p {profile} --older-than 0h` to remove them" in (
        stale.output.replace("\n", "")
    )
    assert runner.invoke(app, ["cleanup", "-p", str(profile), "--older-than", "0h"]).exit_code == 0
    assert runner.invoke(app, ["audit", "-p", str(profile), "--max-age-hours", "0"]).exit_code == 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_still_loading_is_never_cleaned_up_and_its_lease_goes_when_it_ends(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """The case `--older-than` alone gets wrong: a load blocked (here by a lock) while cleanup runs with
    `--older-than 0`. The run's lease keeps it; the load then commits every row; the run leaves nothing."""
    import psycopg2

    from tests.helpers.services import PG_DSN

    rows = source_rows(["K1", "K2"], per_key=15)
    create_pg_source(pg, names["src_table"], rows)
    profile = make_profile()
    put_keys(profile)
    dataset = write_dataset(tmp_path, names)
    store = store_of(profile)
    try:
        run(dataset, profile, D1)  # creates the target table
        blocker = psycopg2.connect(PG_DSN)
        with blocker.cursor() as cur:
            cur.execute(f"SELECT id FROM {names['wh_schema']}.facts FOR UPDATE")  # K1's and K2's loads must wait
        outcome: dict[str, Any] = {}
        flow = threading.Thread(target=lambda: outcome.update(result=run(dataset, profile, D1)))
        flow.start()
        try:
            deadline = time.time() + 120
            while time.time() < deadline and not any("/K2/part-" in k for k in keys_under(store)):
                time.sleep(0.2)
            time.sleep(1)  # the loads of K1 and K2 now wait for the row locks
            staged = {k for k in keys_under(store) if "/K1/" in k or "/K2/" in k or k.endswith("/_lease.json")}
            assert any(k.endswith("/_lease.json") for k in staged), staged
            result = runner.invoke(app, ["cleanup", "-p", str(profile), "--older-than", "0"])
            assert result.exit_code == 0, result.output
            assert "running: its lease was renewed" in result.output
            assert keys_under(store) >= staged  # nothing of the running run was removed
        finally:
            blocker.commit()
            blocker.close()
            flow.join(180)
        state, _ = outcome["result"]
        assert state.is_completed(), state.message
        assert warehouse(pg, names) == expected(rows, {"K1", "K2"})
        assert keys_under(store) == set()  # parts deleted after the load, the lease when the run ended
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")
