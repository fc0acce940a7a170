"""Without a Prefect server (no PREFECT_API_URL), a command runs its flows against one temporary server it starts
and stops itself: a run of any size ends without an ERROR line or a traceback, and nothing outlives the command."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.config_files import write_yaml
from tests.helpers.services import processes_with

KEYFLOW = str(Path(sys.executable).parent / "keyflow")


@pytest.fixture()
def many_keys(pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any) -> Any:
    """120 active keys of three rows each: enough task runs that the server's recorder is still busy at the end."""
    from config.loader import load_profile
    from tasks.resources import key_store_for
    from tasks.transforms.keys import CampaignKey

    table = names["src_table"]
    with pg.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id bigint primary key, campaign_key text not null, v integer)")
        cur.execute(
            f"INSERT INTO {table} SELECT k * 10 + n, 'K' || lpad(k::text, 3, '0'), n "
            "FROM generate_series(1, 120) k, generate_series(1, 3) n"
        )
    dataset = write_yaml(
        tmp_path / "datasets" / "many.yaml",
        {
            "name": "many",
            "source": {"table": table, "key_column": "campaign_key"},
            "target": {"schema": names["wh_schema"], "table": "many"},
        },
    )
    profile = make_profile()
    store = key_store_for(load_profile(profile, environ={}))
    for k in range(1, 121):
        store.put_key(CampaignKey("many", f"K{k:03d}", dt.date(2017, 3, 1), dt.date(2017, 3, 31), True))
    yield profile, dataset
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def keyflow(*args: str, marker: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "KEYFLOW_TEST_MARKER": marker, "COLUMNS": "200"}
    return subprocess.run([KEYFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_120_key_run_without_a_prefect_server_ends_clean_and_leaves_no_process(
    many_keys: Any, pg: Any, names: dict[str, str]
) -> None:
    profile, dataset = many_keys
    marker = uuid.uuid4().hex
    result = keyflow(
        "etl", "run", "-d", str(dataset), "-p", str(profile), "--date", "2017-03-20", "--json", marker=marker
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert '"status": "loaded"' in result.stdout
    assert "Error flushing" not in output and "| ERROR" not in output and "Traceback" not in output, output[-3000:]
    assert processes_with(marker) == []
    with pg.cursor() as cur:
        cur.execute(f"SELECT count(*), count(DISTINCT campaign_key) FROM {names['wh_schema']}.many")
        assert cur.fetchone() == (360, 120)


def test_a_parallel_backfill_starts_one_server_and_leaves_no_process(many_keys: Any) -> None:
    """Two flows started at once from two threads used to start two temporary servers and stop only one."""
    profile, dataset = many_keys
    marker = uuid.uuid4().hex
    args = ["etl", "backfill", "-d", str(dataset), "-p", str(profile), "--from", "2017-03-01", "--to", "2017-03-02"]
    result = keyflow(*args, "--parallel", "2", marker=marker)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "2 loaded" in result.stdout
    assert "| ERROR" not in output and "Traceback" not in output, output[-3000:]
    assert processes_with(marker) == []
