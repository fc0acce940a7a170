"""The trend-scoring flow end to end: event archive on the moto server → window counts in PostgreSQL → top-N in
DynamoDB, read back through the CLI. Counts are checked against a plain-Python count of the same events."""

from __future__ import annotations

import collections
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from config.loader import load_profile, load_trends
from flows.cli import app
from flows.trend_scoring import trend_scoring
from tasks.io.archive import hour_prefix, write_event_file
from tasks.resources import object_store_for, trend_counts_for
from tests.helpers.config_files import write_yaml

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()
H10 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
USERS = {"u1": ("f", "s1"), "u2": ("m", "s1"), "u3": ("f", "s2")}  # u9 is unknown: null gender and segment


def at(minutes: float) -> dt.datetime:
    return H10 + dt.timedelta(minutes=minutes)


def ev(i: int, minute: float, article: str, user: str, action: str, delay_s: float | None = 5) -> dict[str, Any]:
    row = {"event_id": f"e{i}", "ts": at(minute).isoformat(), "article_id": article, "user_id": user, "action": action}
    if delay_s is not None:
        row["received_at"] = (at(minute) + dt.timedelta(seconds=delay_s)).isoformat()
    return row


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def expected_counts(rows: list[dict[str, Any]], start: dt.datetime, end: dt.datetime) -> dict[tuple, tuple[int, int]]:
    """The oracle: count by hand what is on time and inside [start, end)."""
    out: dict[tuple, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in rows:
        if r["action"] not in ("click", "impression"):
            continue
        ts = dt.datetime.fromisoformat(r["ts"])
        window = ts.replace(second=0, microsecond=0)
        if not start <= window < end:
            continue
        if "received_at" in r and dt.datetime.fromisoformat(r["received_at"]) >= window + dt.timedelta(minutes=3):
            continue  # late: arrived after the window's end + 2 minutes
        gender, segment = USERS.get(r["user_id"], (None, None))
        out[(window, gender, segment, r["article_id"])][0 if r["action"] == "impression" else 1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def stored(job: Any, profile: Any, start: dt.datetime, end: dt.datetime) -> dict[tuple, tuple[int, int]]:
    table = trend_counts_for(profile, job).since(start, end)
    return {
        (r["window_start"], r["gender"], r["segment_id"], r["article_id"]): (r["impressions"], r["clicks"])
        for r in table.to_pylist()
    }


@pytest.fixture()
def setup(pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any) -> Any:
    profile_path = make_profile()
    job_path = write_yaml(
        tmp_path / "trends" / "trending.yaml",
        {
            "name": "pytest_trending",
            "archive_prefix": "events/archive",
            "users_key": "reference/users.csv",
            "counts_schema": names["wh_schema"],
            "serving_table": names["keys_table"] + "_trending",
            "top_n": 2,
            "scoring": {"prior": "fixed", "alpha": 1, "beta": 10},
        },
    )
    profile = load_profile(profile_path, environ={})
    store = object_store_for(profile)
    users = "user_id,gender,segment_id\n" + "".join(f"{u},{g},{s}\n" for u, (g, s) in USERS.items())
    store.put_bytes(users.encode(), "reference/users.csv")
    yield str(job_path), str(profile_path), load_trends(job_path), profile, store
    with pg.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_counts_scores_and_top_n_read_back(setup: Any) -> None:
    job_path, profile_path, job, profile, store = setup
    rows = [
        ev(i, i % 9 + 0.5, "a1" if i % 3 else "a2", f"u{i % 4}", "click" if i % 5 == 0 else "impression")
        for i in range(200)
    ]
    rows[1]["user_id"] = "u9"  # unknown user: counted with a null audience
    rows += [ev(900, 1.2, "a1", "u1", "bogus"), ev(901, 2.5, "a3", "u1", "click", delay_s=200)]  # invalid; late
    # No received_at: the file's upload time stands in, hours after these windows closed, so it is late.
    rows += [ev(902, 8.1, "a3", "u2", "impression", delay_s=None)]
    write_event_file(store, job.archive_prefix, H10, "part-0", jsonl(rows[:120]))
    table = pa.Table.from_pylist(
        [
            {**r, "ts": dt.datetime.fromisoformat(r["ts"]), "received_at": dt.datetime.fromisoformat(r["received_at"])}
            for r in rows[120:200]
        ]
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.put_bytes(buf.getvalue(), hour_prefix(job.archive_prefix, H10) + "part-1.parquet")
    write_event_file(store, job.archive_prefix, H10, "part-2", jsonl(rows[200:]))

    state = trend_scoring(job=job_path, profile=profile_path, end=at(10), return_state=True)
    assert state.is_completed(), state.message
    data = state.result()
    # First run: catch up max_catch_up_minutes (180) back from 10:10.
    assert (data["start"], data["end"]) == (at(10 - 180).isoformat(), at(10).isoformat())
    assert data["files"] == 3 and data["events"] == len(rows)
    assert (data["late"], data["invalid"], data["counted"]) == (2, 1, len(rows) - 3)
    got = stored(job, profile, at(-180), at(10))
    assert got == expected_counts([r for r in rows if r["event_id"] != "e902"], at(-180), at(10))
    assert {(g, s) for _, g, s, _ in got} == {("f", "s1"), ("m", "s1"), ("f", "s2"), (None, None)}  # u0, u9: unknown

    # Idempotent: the same end again writes identical rows and publishes the same ranking.
    top_before = json.loads(
        runner.invoke(
            app, ["trends", "top", "-g", "f", "-s", "s1", "-j", job_path, "-p", profile_path, "--json"]
        ).output
    )
    again = trend_scoring(job=job_path, profile=profile_path, end=at(10), return_state=True)
    assert again.is_completed() and stored(job, profile, at(-180), at(10)) == got
    top_after = runner.invoke(
        app, ["trends", "top", "-g", "f", "-s", "s1", "-j", job_path, "-p", profile_path, "--json"]
    )
    assert json.loads(top_after.output) == top_before and len(top_before) == 2
    assert top_before[0]["score"] >= top_before[1]["score"] > 0

    shown = runner.invoke(app, ["trends", "top", "-g", "f", "-s", "s1", "-j", job_path, "-p", profile_path])
    assert shown.exit_code == 0 and top_before[0]["article_id"] in shown.output
    none = runner.invoke(app, ["trends", "top", "-g", "x", "-s", "nope", "-j", job_path, "-p", profile_path])
    assert none.exit_code == 1 and "No ranking published" in none.output


def test_late_allowed_events_are_recounted_and_downtime_caught_up(setup: Any) -> None:
    job_path, profile_path, job, profile, store = setup
    first = [ev(i, 5 + i % 5, "a1", "u1", "impression") for i in range(50)]
    write_event_file(store, job.archive_prefix, H10, "part-0", jsonl(first))
    assert trend_scoring(job=job_path, profile=profile_path, end=at(10), return_state=True).is_completed()

    # Within lateness: an event of 09:08:30 that arrived at 10:10:30 belongs to the 10:09 window? No — to 10:08,
    # which closes at 10:11, so the next run must recount it.
    allowed = [ev(100, 8.5, "a1", "u2", "click", delay_s=120), ev(101, 7.5, "a1", "u2", "click", delay_s=400)]
    later = [ev(200 + i, 30 + i % 20, "a2", "u3", "impression") for i in range(40)]
    write_event_file(store, job.archive_prefix, H10, "part-1", jsonl(allowed + later))
    state = trend_scoring(job=job_path, profile=profile_path, end=at(50), return_state=True)
    data = state.result()
    assert data["start"] == at(7).isoformat()  # last end 10:10 - 2 min lateness - 1 min window
    assert data["late"] == 1  # the 10:07 click arrived after 10:10
    got = stored(job, profile, at(0), at(60))
    assert got == expected_counts(first + allowed + later, at(0), at(50))

    # Downtime longer than max_catch_up: the gap is reported, not silently skipped.
    cli = runner.invoke(app, ["trends", "run", "-j", job_path, "-p", profile_path, "--end", at(50 + 240).isoformat()])
    assert cli.exit_code == 0, cli.output
    assert "catch-up capped" in cli.output and "trends backfill" in cli.output

    # Backfill recounts a past range the same way; the watermark does not move back.
    with trend_counts_for(profile, job)._connect() as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {trend_counts_for(profile, job).target}")
    done = runner.invoke(
        app,
        [
            "trends",
            "backfill",
            "--from",
            "2026-11-27T10:00",
            "--to",
            "2026-11-27T11:00",
            "-j",
            job_path,
            "-p",
            profile_path,
        ],
    )
    assert done.exit_code == 0, done.output
    assert "2026-11-27 10:00" in done.output
    assert stored(job, profile, at(0), at(60)) == got
    assert trend_counts_for(profile, job).last_end(job.name) == at(50 + 240)


def test_a_non_postgres_warehouse_is_a_config_error(setup: Any, tmp_path: Path) -> None:
    job_path, *_ = setup
    result = runner.invoke(app, ["trends", "run", "-j", job_path, "-p", "local"])
    assert result.exit_code == 2
    assert (
        "error: config/profiles/local.yaml: trends_url: trend counts need PostgreSQL; set trends_url "
        "(the warehouse is 'duckdb')" in result.output
    )
