"""Event ingestion test steps shared by the RabbitMQ and Kinesis tests: a job YAML with its sinks, events,
the archive read back, and a drain in a process that dies at a chosen point."""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from config.loader import load_events, load_profile
from tasks.ingest import sinks_for
from tasks.resources import object_store_for
from tests.helpers.config_files import write_yaml

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 27, 9, 58, tzinfo=dt.UTC)


def ingestion(
    tmp_path: Path, names: dict[str, str], profile_path: Path, source: dict[str, Any], batch_size: int
) -> Any:
    """An event ingestion job YAML of fresh tables for this test, loaded, with its sinks created."""
    job_path = write_yaml(
        tmp_path / "events" / "job.yaml",
        {
            "name": "pytest_events",
            "source": source,
            "reference": {"table": names["keys_table"] + "_articles"},
            "events_table": names["keys_table"] + "_events",
            "batch_size": batch_size,
            "max_seconds": 60,
            "idle_seconds": 1,
        },
    )
    job, profile = load_events(job_path), load_profile(profile_path, environ={})
    return str(job_path), str(profile_path), job, profile, sinks_for(job, profile)


def event(i: int, article: str = "a1", **extra: Any) -> bytes:
    """Event ``i`` as the broker carries it: JSON, ``i`` seconds after ``T0``, every ninth a click."""
    ts = (T0 + dt.timedelta(seconds=i)).isoformat()
    return json.dumps(
        {
            "event_id": f"e{i}",
            "ts": ts,
            "article_id": article,
            "user_id": f"u{i % 7}",
            "action": "click" if i % 9 == 0 else "impression",
            **extra,
        }
    ).encode()


def archived(profile: Any, job: Any) -> collections.Counter[str]:
    """Every event id in the archive, with how many times it appears."""
    store = object_store_for(profile)
    ids: collections.Counter[str] = collections.Counter()
    for key in store.list_keys(job.archive_prefix + "/"):
        for line in gzip.decompress(store.get_bytes(key)).splitlines():
            ids[json.loads(line)["event_id"]] += 1
    return ids


def crash_drain(job_path: str, profile_path: str, point: str) -> None:
    """Drain in a separate process that dies (``os._exit``) at ``point``, as a killed worker would."""
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.helpers.crash_drain", job_path, profile_path, point],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 17, crashed.stderr
