"""Trend scoring: count one-minute event-time windows from the event archive, score fresh articles, publish top-N."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, State

from config.loader import load_profile, load_trends
from flows.common import artifact_key, ends_failed_on_errors, refuse_if_misconfigured, refuse_if_paused
from tasks.resources import resources_for
from tasks.transforms.trends import floor_time
from tasks.trends import CountSummary, advance_watermark, count_windows, plan_windows, score_trends, window_spec

ARTIFACT_ROWS = 200  # of the published rankings, shown in the run's table artifact
PAUSED = "The trends flows are paused: nothing started (`keyflow resume trends`)"


def _utc(t: datetime | None) -> datetime:
    if t is None:
        return datetime.now(UTC)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _hours(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut at hour boundaries, so each piece reads one hour partition of the archive."""
    out = []
    while start < end:
        next_hour = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        out.append((start, min(next_hour, end)))
        start = next_hour
    return out


@flow(name="trend-scoring", validate_parameters=True)
@ends_failed_on_errors
def trend_scoring(job: str = "trending", profile: str = "local", end: datetime | None = None) -> State[Any]:
    """Recount the windows still open to late events and any missed since the last run, then rank fresh articles.

    ``end`` (default: now) is rounded down to a window boundary; the ranking is computed as of that instant, so
    re-running with the same ``end`` writes identical counts and rankings.
    """
    prof, cfg = load_profile(profile), load_trends(job)
    if refused := refuse_if_paused("trends", data={}, warning=PAUSED):
        return refused
    resources = resources_for(prof)
    if refused := refuse_if_misconfigured(cfg, resources):
        return refused
    until = floor_time(_utc(end), window_spec(cfg).width)
    planned = plan_windows(cfg, resources, until)
    # Catch-up after downtime may span hours: count an hour at a time, so memory follows an hour's groups.
    hours = _hours(planned.start, planned.end)
    summaries: list[CountSummary] = [count_windows(cfg, resources, a, b) for a, b in hours]
    scored = score_trends(cfg, resources, until)
    advance_watermark(cfg, resources, until)

    totals = {k: sum(getattr(s, k) for s in summaries) for k in ("files", "events", "counted", "late", "invalid")}
    create_table_artifact(
        key=artifact_key(cfg.name, "top-articles"),
        table=scored.top[:ARTIFACT_ROWS],
        description=f"Top {cfg.top_n} articles per (gender, segment) at {until.isoformat()}",
    )
    create_markdown_artifact(
        key=artifact_key(cfg.name, "windows"),
        markdown=(
            f"### {cfg.name}: windows {planned.start:%Y-%m-%d %H:%M} to {planned.end:%H:%M} UTC\n\n"
            "| files | events | counted | late | invalid | audiences | prior |\n|---|---|---|---|---|---|---|\n"
            f"| {totals['files']} | {totals['events']} | {totals['counted']} | {totals['late']} | {totals['invalid']} "
            f"| {scored.audiences} | Beta({scored.alpha:.3g}, {scored.beta:.3g}) |\n"
        ),
    )
    data = {
        "start": planned.start.isoformat(),
        "end": planned.end.isoformat(),
        **totals,
        "audiences": scored.audiences,
        "scored": scored.scored,
        "skipped": [t.isoformat() for t in planned.skipped] if planned.skipped else None,
    }
    return Completed(message=f"{totals['counted']} event(s) counted, {scored.audiences} audience(s) ranked", data=data)


@flow(name="trend-backfill", validate_parameters=True)
@ends_failed_on_errors
def trend_backfill(job: str, start: datetime, end: datetime, profile: str = "local") -> State[Any]:
    """Recount every window in ``[start, end)`` from the archive, an hour at a time (the watermark is left alone)."""
    prof, cfg = load_profile(profile), load_trends(job)
    width = window_spec(cfg).width
    a, b = floor_time(_utc(start), width), floor_time(_utc(end), width)
    if b <= a:
        raise ValueError(f"end {b.isoformat()} is not after start {a.isoformat()}")
    if refused := refuse_if_paused("trends", data=[]):
        return refused
    resources = resources_for(prof)
    if refused := refuse_if_misconfigured(cfg, resources):
        return refused
    summaries = [count_windows(cfg, resources, x, y) for x, y in _hours(a, b)]
    rows = [s.as_row() for s in summaries]
    create_table_artifact(key=artifact_key(cfg.name, "backfill"), table=rows, description=f"{cfg.name} backfill")
    counted = sum(s.counted for s in summaries)
    return Completed(message=f"{len(summaries)} hour(s) recounted, {counted} event(s) counted", data=rows)
