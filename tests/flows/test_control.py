"""Kill switch and the source guard, on a real Prefect server (the test harness) and real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers.config_files import write_yaml
from tests.helpers.etl import D1, create_pg_source, put_keys, run, source_rows, write_dataset

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()


@pytest.fixture()
def source(pg: Any, names: dict[str, str]) -> Any:
    create_pg_source(pg, names["src_table"], source_rows(["K1", "K2"], per_key=30))
    yield
    with pg.cursor() as cur:
        cur.execute(f"DROP VIEW IF EXISTS {names['src_table']}_slow")
        cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_pause_stops_new_runs_and_resume_brings_them_back(
    pg: Any, source: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    profile = make_profile()
    put_keys(profile)
    dataset = write_dataset(tmp_path, names)
    assert runner.invoke(app, ["pause", "etl"]).exit_code == 0
    try:
        state, rows = run(dataset, profile, D1)
        assert state.is_cancelled() and state.message == "paused: the etl flows are switched off" and rows == []
        with pg.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (names["wh_schema"],))
            assert cur.fetchone()[0] == 0  # nothing was touched, not even the target table
        cli = runner.invoke(app, ["etl", "run", "-d", str(dataset), "--date", D1.isoformat(), "-p", str(profile)])
        assert cli.exit_code == 3 and "paused" in cli.output
    finally:
        assert "Resumed the etl flows." in runner.invoke(app, ["resume", "etl"]).output
    state, rows = run(dataset, profile, D1)
    assert state.is_completed() and len(rows) == 3  # K1, K2 and the SQL-looking key (no rows)
    assert "were not paused" in runner.invoke(app, ["resume", "etl"]).output
    assert runner.invoke(app, ["pause", "nope"]).exit_code == 2


def test_source_limit_is_shared_by_overlapping_runs_in_separate_processes(
    pg: Any, source: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    """Two runs in two processes, two keys each: with a global limit of 1 slot, one extraction at a time."""
    from prefect.settings import PREFECT_API_URL

    slow = f"{names['src_table']}_slow"
    with pg.cursor() as cur:  # ~1.5 s per key, so overlapping extractions would be seen
        cur.execute(
            f"CREATE VIEW {slow} AS SELECT s.* FROM {names['src_table']} s, "
            "LATERAL (SELECT pg_sleep(0.05) WHERE s.id IS NOT NULL) z"
        )
    limit = names["src_table"].replace("_", "-")
    profile = make_profile(source_concurrency_limit=limit, source_max_connections=1, max_parallel_keys=2)
    put_keys(profile)
    ds = yaml.safe_load(write_dataset(tmp_path, names).read_text())
    ds["source"]["table"] = slow
    datasets = []
    for i in (1, 2):  # two targets, so the two runs never wait on each other's warehouse locks
        ds2 = {**ds, "target": {**ds["target"], "table": f"facts{i}"}}
        datasets.append(write_yaml(tmp_path / "datasets" / f"facts{i}.yaml", ds2))

    seen = []
    stop = threading.Event()

    def sample() -> None:
        with pg.cursor() as cur:
            while not stop.is_set():
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                    (f"COPY (SELECT%{slow}%",),
                )
                seen.append(cur.fetchone()[0])
                time.sleep(0.01)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flows.cli",
                    "etl",
                    "run",
                    "-d",
                    str(d),
                    "--date",
                    D1.isoformat(),
                    "-p",
                    str(profile),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for d in datasets
        ]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        stop.set()
        sampler.join()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert max(seen) == 1, f"{max(seen)} extractions at once"
    assert seen.count(1) > 20  # the sampler did see the extractions (about 1.5 s each)
