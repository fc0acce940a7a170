"""Trend scoring: count one-minute event-time windows from the event archive, score fresh articles, publish top-N.

The archive's closed hours are compacted as well.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed, State

from config.errors import RunFailedError, first_line
from config.loader import load_profile, load_trends
from flows.common import artifact_key, ends_failed_on_errors, refuse_if_misconfigured, refuse_if_paused, ride_out
from tasks.resources import Resources, resources_for
from tasks.transforms.trends import closed_hours, floor_time, late_note
from tasks.trends import (
    CountSummary,
    advance_watermark,
    compact_hours,
    count_windows,
    plan_windows,
    score_trends,
    window_spec,
)

ARTIFACT_ROWS = 200  # of the published rankings, shown in the run's table artifact
PAUSED = "The trends flows are paused: nothing started (`keyflow resume trends`)"
HOUR = timedelta(hours=1)
FIGURES = ("files", "events", "counted", "late", "invalid", "duplicates", "quarantined")


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


def _count_hours(
    cfg: Any, resources: Resources, pieces: list[tuple[datetime, datetime]], ignore_lateness: bool = False
) -> tuple[list[CountSummary], list[str]]:
    """Count each hour; an hour that fails (too many invalid lines) does not stop the others.

    Returns the summaries of the hours counted and one line per hour that failed.
    """
    summaries, failures = [], []
    for a, b in pieces:
        state = count_windows.with_options(**ride_out(resources))(
            cfg, resources, a, b, ignore_lateness, return_state=True
        )
        result = state.result(raise_on_failure=False)
        if isinstance(result, CountSummary):
            summaries.append(result)
        else:
            failures.append(first_line(result) if isinstance(result, BaseException) else str(state.message))
    return summaries, failures


def _totals(summaries: list[CountSummary]) -> dict[str, int]:
    return {k: sum(getattr(s, k) for s in summaries) for k in FIGURES}


@flow(name="trend-scoring", validate_parameters=True)
@ends_failed_on_errors
def trend_scoring(job: str = "trending", profile: str = "local", end: datetime | None = None) -> State[Any]:
    """Recount the windows still open to late events and any missed since the last run, then rank fresh articles.

    Then compact the hours closed to late events (``compact: true``).

    ``end`` (default: now) is rounded down to a window boundary; the ranking is computed as of that instant, so
    re-running with the same ``end`` writes identical counts and rankings. An hour with more invalid lines than
    ``max_invalid_share`` fails the run after the other hours are counted; nothing is then published.
    """
    prof, cfg = load_profile(profile), load_trends(job)
    if refused := refuse_if_paused("trends", data={}, warning=PAUSED):
        return refused
    resources = resources_for(prof)
    if refused := refuse_if_misconfigured(cfg, resources):
        return refused
    spec = window_spec(cfg)
    until = floor_time(_utc(end), spec.width)
    planned = plan_windows.with_options(**ride_out(resources))(cfg, resources, until)
    # Catch-up after downtime may span hours: count an hour at a time, so memory follows an hour's groups.
    summaries, failures = _count_hours(cfg, resources, _hours(planned.start, planned.end))
    totals = _totals(summaries)
    data: dict[str, Any] = {
        "start": planned.start.isoformat(),
        "end": planned.end.isoformat(),
        **totals,
        "skipped": [t.isoformat() for t in planned.skipped] if planned.skipped else None,
        "late_note": late_note(totals["late"], totals["events"], spec.lateness),
    }
    if note := data["late_note"]:
        get_run_logger().warning("%s", note[0].upper() + note[1:])
    if failures:
        message = "\n".join(failures)  # an exception, not a dict: a deployment run raises what a Failed state holds
        return Failed(
            message=message, data=RunFailedError(message, {**data, "failed": failures, "audiences": 0, "scored": 0})
        )
    scored = score_trends.with_options(**ride_out(resources))(cfg, resources, until)
    advance_watermark.with_options(**ride_out(resources))(cfg, resources, until)
    data |= {"audiences": scored.audiences, "scored": scored.scored, "compacted": _compact(cfg, resources, until)}

    create_table_artifact(
        key=artifact_key(cfg.name, "top-articles"),
        table=scored.top[:ARTIFACT_ROWS],
        description=f"Top {cfg.top_n} articles per (gender, segment) at {until.isoformat()}",
    )
    create_markdown_artifact(
        key=artifact_key(cfg.name, "windows"),
        markdown=(
            f"### {cfg.name}: windows {planned.start:%Y-%m-%d %H:%M} to {planned.end:%H:%M} UTC\n\n"
            "| files | events | counted | late | invalid | duplicates | quarantined | audiences | prior |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            + "| "
            + " | ".join(str(totals[k]) for k in FIGURES)
            + f" | {scored.audiences} | Beta({scored.alpha:.3g}, {scored.beta:.3g}) |\n"
        ),
    )
    return Completed(message=f"{totals['counted']} event(s) counted, {scored.audiences} audience(s) ranked", data=data)


def _compact(cfg: Any, resources: Resources, until: datetime) -> int:
    """Compact the closed hours a run can still see (the catch-up span).

    A failure is logged, not fatal: the next run compacts what this one did not.
    """
    if not cfg.compact:
        return 0
    span = [a for a, _ in _hours(floor_time(until - timedelta(minutes=cfg.max_catch_up_minutes), HOUR), until)]
    hours = closed_hours(span, until, window_spec(cfg))
    if not hours:
        return 0
    state = compact_hours.with_options(**ride_out(resources))(cfg, resources, hours, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        get_run_logger().warning("Compaction left for the next run: %s", first_line(result))
        return 0
    return sum(1 for r in result if r.files_out)


@flow(name="trend-backfill", validate_parameters=True)
@ends_failed_on_errors
def trend_backfill(
    job: str,
    start: datetime,
    end: datetime,
    profile: str = "local",
    ignore_lateness: bool = False,
    publish: bool = False,
) -> State[Any]:
    """Recount every window in ``[start, end)`` from the archive, an hour at a time (the watermark is left alone).

    ``ignore_lateness`` counts by event time alone (rebuilding history from a replay); ``publish`` then ranks as of
    ``end`` and publishes, as a run at that time would have. An hour over ``max_invalid_share`` fails the backfill
    once every other hour is counted.
    """
    prof, cfg = load_profile(profile), load_trends(job)
    spec = window_spec(cfg, ignore_lateness)
    a, b = floor_time(_utc(start), spec.width), floor_time(_utc(end), spec.width)
    if b <= a:
        raise ValueError(f"end {b.isoformat()} is not after start {a.isoformat()}")
    if refused := refuse_if_paused("trends", data=[]):
        return refused
    resources = resources_for(prof)
    if refused := refuse_if_misconfigured(cfg, resources):
        return refused
    summaries, failures = _count_hours(cfg, resources, _hours(a, b), ignore_lateness)
    rows = [s.as_row() for s in summaries]
    create_table_artifact(key=artifact_key(cfg.name, "backfill"), table=rows, description=f"{cfg.name} backfill")
    totals = _totals(summaries)
    if note := late_note(totals["late"], totals["events"], spec.lateness):
        get_run_logger().warning("%s", note[0].upper() + note[1:])
    if failures:
        return Failed(message="\n".join(failures), data=RunFailedError("\n".join(failures), rows))
    message = f"{len(summaries)} hour(s) recounted, {totals['counted']} event(s) counted"
    if publish:
        scored = score_trends.with_options(**ride_out(resources))(cfg, resources, b)
        message += f"; {scored.audiences} audience(s) ranked as of {b.isoformat()} and published"
    return Completed(message=message, data=rows)


@flow(name="trend-compaction", validate_parameters=True)
@ends_failed_on_errors
def trend_compaction(job: str, start: datetime, end: datetime, profile: str = "local") -> State[Any]:
    """Compact the archive hours of ``[start, end)`` that are closed to late events (idempotent)."""
    prof, cfg = load_profile(profile), load_trends(job)
    spec = window_spec(cfg)
    now = datetime.now(UTC)
    hours = [a for a, _ in _hours(floor_time(_utc(start), HOUR), _utc(end))]
    closed = closed_hours(hours, now, spec)
    if refused := refuse_if_paused("trends", data=[]):
        return refused
    resources = resources_for(prof)
    results = compact_hours.with_options(**ride_out(resources))(cfg, resources, closed) if closed else []
    rows = [r.as_row() for r in results]
    rows += [{"hour": h.isoformat(), "reason": "still open to late events"} for h in hours if h not in closed]
    done = sum(1 for r in results if r.files_out)
    return Completed(message=f"{done} hour(s) compacted, {len(hours) - done} left as they were", data=rows)
