"""The trend-scoring flow end to end: event archive on the moto server → window counts in PostgreSQL → top-N in
DynamoDB, read back through the CLI. Counts are checked against a plain-Python count of the same events."""

from __future__ import annotations

import collections
import datetime as dt
import gzip
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
from flows.trend_scoring import trend_compaction, trend_scoring
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
            "max_invalid_share": 0.05,
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


def gz_lines(lines: list[bytes]) -> bytes:
    return gzip.compress(b"\n".join(lines) + b"\n")


def read_rejected(store: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in gzip.decompress(store.get_bytes(key)).splitlines()]


@pytest.mark.parametrize("file_processes", [False, True], ids=["threads", "processes"])
def test_duplicates_bad_lines_numeric_ids_and_an_unreadable_file_give_exact_counts(
    setup: Any, file_processes: bool
) -> None:
    """The same exact counts whether gzip files are read in threads (the default) or in worker processes."""
    job_path, profile_path, job, profile, store = setup
    Path(job_path).write_text(Path(job_path).read_text() + f"file_processes: {str(file_processes).lower()}\n")
    rows = [
        ev(i, i % 9 + 0.5, "a1" if i % 3 else "a2", f"u{i % 4}", "click" if i % 5 == 0 else "impression")
        for i in range(60)
    ]
    numeric = [{**ev(100 + i, 2.5, "a3", "u1", "click"), "article_id": 7, "user_id": 2} for i in range(3)]
    part0 = [json.dumps(r).encode() for r in rows[:40]]
    part0 += [json.dumps(r).encode() for r in rows[:4]]  # a producer's retries: lines 41-44 again
    part0.insert(5, b"")  # line 6: blank
    part0.insert(10, b'{"event_id": "e999", "ts": "2026-11-27T10:0')  # line 11: cut short
    part1 = [json.dumps(r).encode() for r in rows[40:] + numeric]
    part1 += [json.dumps(r).encode() for r in rows[30:33]]  # copies of part 0's lines, in another file
    part1.append(json.dumps({**ev(200, 3, "a1", "u1", "view")}).encode())  # line 27: unknown action
    base = hour_prefix(job.archive_prefix, H10)
    store.put_bytes(gz_lines(part0), base + "part-0.jsonl.gz")
    store.put_bytes(gz_lines(part1), base + "part-1.jsonl.gz")
    store.put_bytes(b"article_id,user_id\na1,u1\n", base + "part-2.jsonl.gz")  # not gzip at all

    result = runner.invoke(app, ["trends", "run", "-j", job_path, "-p", profile_path, "--end", at(10).isoformat()])
    assert result.exit_code == 0, result.output
    assert (
        "Windows 2026-11-27T07:10:00+00:00 → 2026-11-27T10:10:00+00:00: 72 line(s) in 3 file(s), 63 counted, "
        "0 late, 2 invalid, 7 duplicate(s); 4 audience(s) ranked." in result.output
    )
    assert "1 unreadable file(s) quarantined" in result.output
    expected = expected_counts(rows + [{**r, "article_id": "7", "user_id": "2"} for r in numeric], at(-180), at(10))
    assert stored(job, profile, at(-180), at(10)) == expected
    assert sum(i + c for i, c in expected.values()) == 63
    assert read_rejected(store, "events/trends-rejected/dt=2026-11-27/hour=10/part-0.jsonl.gz.rejected.jsonl.gz") == [
        {
            "file": f"s3://{store.bucket}/{base}part-0.jsonl.gz",
            "line": 11,
            "reason": "not JSON: Unterminated string starting at: line 1 column 28 (char 27)",
            "text": '{"event_id": "e999", "ts": "2026-11-27T10:0',
        }
    ]
    assert [
        (r["line"], r["reason"])
        for r in read_rejected(store, "events/trends-rejected/dt=2026-11-27/hour=10/part-1.jsonl.gz.rejected.jsonl.gz")
    ] == [(27, "unknown action 'view' (known: click, impression)")]
    assert store.get_bytes("events/trends-quarantine/dt=2026-11-27/hour=10/part-2.jsonl.gz.reason.txt").decode() == (
        f"s3://{store.bucket}/{base}part-2.jsonl.gz: not gzip JSON lines: Not a gzipped file (b'ar')\n"
    )
    # The log counts every pair scored, not the top-N kept per audience.
    again = trend_scoring(job=job_path, profile=profile_path, end=at(10), return_state=True).result()
    pairs = {(g, s, a) for (_, g, s, a) in expected}
    assert again["scored"] == len(pairs) > job.top_n * again["audiences"]
    assert stored(job, profile, at(-180), at(10)) == expected


def test_an_hour_over_the_invalid_share_fails_the_run_and_the_other_hours_still_count(
    setup: Any, tmp_path: Path
) -> None:
    job_path, profile_path, job, profile, store = setup
    good = [ev(i, 65 + i % 10, "a1", "u1", "impression") for i in range(50)]
    store.put_bytes(
        gz_lines([json.dumps(r).encode() for r in good]),
        hour_prefix(job.archive_prefix, H10 + dt.timedelta(hours=1)) + "ok.jsonl.gz",
    )
    bad = [json.dumps(ev(i, 5, "a1", "u1", "click")).encode() for i in range(100, 150)] + [b"oops"] * 5
    store.put_bytes(gz_lines(bad), hour_prefix(job.archive_prefix, H10) + "bad.jsonl.gz")
    result = runner.invoke(
        app,
        [
            "trends",
            "backfill",
            "--from",
            "2026-11-27T10:00",
            "--to",
            "2026-11-27T12:00",
            "-j",
            job_path,
            "-p",
            profile_path,
        ],
    )
    assert result.exit_code == 1, result.output
    assert (
        f"error: hour 2026-11-27 10:00: 5 of 55 line(s) invalid (9.1%), over max_invalid_share 0.05 ({job.file}); "
        f"the lines and reasons are under s3://{store.bucket}/events/trends-rejected/dt=2026-11-27/hour=10/"
    ) in " ".join(result.output.split())
    assert "11:00" in result.output  # the good hour was counted and shown
    assert stored(job, profile, at(60), at(120)) == expected_counts(good, at(60), at(120))
    assert stored(job, profile, at(0), at(60)) == {}  # the bad hour wrote nothing
    # A run that reaches the hour fails the same way and publishes nothing.
    run = runner.invoke(app, ["trends", "run", "-j", job_path, "-p", profile_path, "--end", at(30).isoformat()])
    assert run.exit_code == 1 and "error: hour 2026-11-27 10:00: 5 of 55 line(s) invalid" in run.output
    top = runner.invoke(app, ["trends", "top", "-g", "f", "-s", "s1", "-j", job_path, "-p", profile_path])
    assert (top.exit_code, top.output) == (1, "error: no ranking published yet (`keyflow trends run` publishes one)\n")


def test_a_replay_is_late_unless_lateness_is_ignored_and_backfill_publishes_only_when_asked(setup: Any) -> None:
    job_path, profile_path, job, profile, store = setup
    replayed = [ev(i, i % 9, "a1" if i % 2 else "a2", "u1", "impression", delay_s=86_400) for i in range(40)]
    store.put_bytes(
        gz_lines([json.dumps(r).encode() for r in replayed]), hour_prefix(job.archive_prefix, H10) + "replay.jsonl.gz"
    )
    base = [
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
    ]
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    assert (
        "most events were late: 40 of 40 arrived after their window closed; to rebuild history from a replay, add "
        "--ignore-lateness" in " ".join(plain.output.split())
    )
    assert stored(job, profile, at(0), at(60)) == {}
    rebuilt = runner.invoke(app, [*base, "--ignore-lateness"])
    assert rebuilt.exit_code == 0 and "most events were late" not in rebuilt.output
    no_late = [{**r, "received_at": r["ts"]} for r in replayed]
    assert stored(job, profile, at(0), at(60)) == expected_counts(no_late, at(0), at(60))
    top = ["trends", "top", "-g", "f", "-s", "s1", "-j", job_path, "-p", profile_path, "--json"]
    assert runner.invoke(app, top).output == "error: no ranking published yet (`keyflow trends run` publishes one)\n"
    published = runner.invoke(app, [*base, "--ignore-lateness", "--publish"])
    assert published.exit_code == 0 and "ranked as of 2026-11-27T11:00:00+00:00 and published" in published.output
    assert [r["article_id"] for r in json.loads(runner.invoke(app, top).output)] == ["a1", "a2"]


def test_trends_run_without_the_user_file_is_one_line(setup: Any) -> None:
    job_path, profile_path, job, profile, store = setup
    store.delete_keys(["reference/users.csv"])
    result = runner.invoke(app, ["trends", "run", "-j", job_path, "-p", profile_path, "--end", at(10).isoformat()])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {job.file}: users_key: s3://{store.bucket}/reference/users.csv does not exist; upload the users file "
        "(CSV: user_id,gender,segment_id) before the first run\n"
    )


def test_a_run_compacts_closed_hours_and_counts_read_them_the_same(setup: Any) -> None:
    job_path, profile_path, job, profile, store = setup
    rows = [
        ev(i, i % 55, "a1" if i % 3 else "a2", f"u{i % 4}", "click" if i % 5 == 0 else "impression") for i in range(300)
    ]
    for f in range(6):
        chunk = rows[f * 50 : f * 50 + 50] + rows[f * 50 : f * 50 + 2]
        write_event_file(store, job.archive_prefix, H10, f"part-{f}", jsonl(chunk))
    first = trend_scoring(job=job_path, profile=profile_path, end=at(61), return_state=True).result()
    assert first["compacted"] == 0  # 11:01: hour 10's last window is still open to late events
    before = stored(job, profile, at(0), at(60))
    assert before == expected_counts(rows, at(0), at(60))
    second = trend_scoring(job=job_path, profile=profile_path, end=at(63), return_state=True).result()
    assert second["compacted"] == 1
    listing = [k.rsplit("/", 1)[1] for k in store.list_keys(hour_prefix(job.archive_prefix, H10))]
    assert "_compaction.json" in listing and all(n.startswith("compacted-") or n == "_compaction.json" for n in listing)
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
    assert stored(job, profile, at(0), at(60)) == before
    compacted = runner.invoke(
        app,
        [
            "trends",
            "compact",
            "--from",
            "2026-11-27T10:00",
            "--to",
            "2026-11-27T12:00",
            "-j",
            job_path,
            "-p",
            profile_path,
        ],
    )
    assert compacted.exit_code == 0, compacted.output
    rows = trend_compaction(job=job_path, start=H10, end=at(120), profile=profile_path, return_state=True).result()
    assert [(r["hour"], r["files_out"], r["reason"]) for r in rows] == [
        (H10.isoformat(), 0, "nothing new to compact"),
        (at(60).isoformat(), 0, "nothing new to compact"),
    ]
