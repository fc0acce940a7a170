"""Tasks of trend scoring: count event-time windows from the S3 archive, score and publish the top articles."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from config.models import Profile, TrendConfig
from tasks.io.archive import archive_objects, event_reader, read_events
from tasks.resources import Resources, trend_counts_for
from tasks.retries import BATCH_IO, SETUP_IO
from tasks.transforms.trends import (
    COUNT_INPUT_SCHEMA,
    RecountRange,
    ScoreParams,
    WindowSpec,
    count_stream,
    fit_beta_prior,
    recount_range,
    score_articles,
    top_n,
)


def window_spec(job: TrendConfig) -> WindowSpec:
    """The job's tumbling windows."""
    return WindowSpec(width=timedelta(seconds=job.window_seconds), lateness=timedelta(seconds=job.lateness_seconds))


def check_counts_store(profile: Profile, job: TrendConfig) -> None:
    """Raise ``ConfigError`` now, before a run starts, when the profile has nowhere to keep the job's counts."""
    trend_counts_for(profile, job)


@dataclass(frozen=True)
class CountSummary:
    """What one counting pass read and wrote; ``events = counted + late + invalid + outside``."""

    start: datetime
    end: datetime
    files: int = 0
    events: int = 0
    counted: int = 0
    late: int = 0
    invalid: int = 0
    outside: int = 0
    rows: int = 0
    seconds: float = 0.0

    def as_row(self) -> dict[str, Any]:
        """The summary as JSON-ready values (artifacts, ``--json``)."""
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


@task(name="plan_windows", **SETUP_IO)
def plan_windows(job: TrendConfig, resources: Resources, end: datetime) -> RecountRange:
    """The windows this run recounts: those still open to late events, plus any missed since the last run."""
    store = resources.trend_counts(job)
    store.ensure()
    last = store.last_end(job.name)
    planned = recount_range(last, end, window_spec(job), timedelta(minutes=job.max_catch_up_minutes))
    logger = get_run_logger()
    if planned.skipped:
        logger.warning(
            "Catch-up capped at %d minutes: windows %s to %s were not counted (run `keyflow trends backfill`)",
            job.max_catch_up_minutes,
            planned.skipped[0].isoformat(),
            planned.skipped[1].isoformat(),
        )
    logger.info("Counting windows %s to %s (last run ended %s)", planned.start, planned.end, last or "never")
    return planned


def count_range(job: TrendConfig, resources: Resources, start: datetime, end: datetime) -> CountSummary:
    """Count every window in ``[start, end)`` from the archive and replace those windows in the warehouse."""
    started = time.perf_counter()
    store = resources.object_store()
    objects = archive_objects(store, job.archive_prefix, start, end)
    users = resources.users(job).table()

    def opener(key: str, arrived: datetime | None) -> Callable[[], Iterator[pa.Table]]:
        return lambda: read_events(store, key, arrived=arrived, schema=COUNT_INPUT_SCHEMA)

    reader = event_reader([opener(o["Key"], o.get("LastModified")) for o in objects], job.parallel_files)
    counts, events = count_stream(reader, users, window_spec(job), start, end)
    counts_store = resources.trend_counts(job)
    counts_store.ensure()
    rows = counts_store.replace_windows(start, end, counts.counts)
    return CountSummary(
        start=start,
        end=end,
        files=len(objects),
        events=events,
        counted=counts.counted_events,
        late=counts.late_events,
        invalid=counts.invalid_events,
        outside=counts.outside_events,
        rows=rows,
        seconds=round(time.perf_counter() - started, 3),
    )


@task(name="count_windows", **BATCH_IO)
def count_windows(job: TrendConfig, resources: Resources, start: datetime, end: datetime) -> CountSummary:
    """Count the windows in ``[start, end)`` from the event archive into the warehouse (idempotent)."""
    summary = count_range(job, resources, start, end)
    logger = get_run_logger()
    logger.info(
        "Windows %s to %s: %d file(s), %d event(s): %d counted, %d late, %d invalid, %d outside; %d count row(s)",
        start.isoformat(),
        end.isoformat(),
        summary.files,
        summary.events,
        summary.counted,
        summary.late,
        summary.invalid,
        summary.outside,
        summary.rows,
    )
    if summary.late:
        logger.warning(
            "%d event(s) arrived after their window closed (lateness %ds)", summary.late, job.lateness_seconds
        )
    return summary


def score_params(job: TrendConfig, counts: pa.Table) -> ScoreParams:
    """Score parameters from the YAML; with ``prior: fit``, alpha and beta fitted to the recent per-article CTRs."""
    s = job.scoring
    alpha, beta = s.alpha, s.beta
    if s.prior == "fit" and counts.num_rows:
        per_article = counts.group_by(["article_id"], use_threads=False).aggregate(
            [("impressions", "sum"), ("clicks", "sum")]
        )
        alpha, beta = fit_beta_prior(
            per_article["impressions_sum"].to_pylist(), per_article["clicks_sum"].to_pylist(), fallback=(alpha, beta)
        )
    return ScoreParams(
        alpha=alpha,
        beta=beta,
        half_life=timedelta(minutes=s.half_life_minutes),
        max_age=timedelta(minutes=s.max_age_minutes),
        velocity_weight=s.velocity_weight,
        baseline_windows=s.baseline_windows,
    )


@dataclass(frozen=True)
class ScoreSummary:
    """What one scoring pass published."""

    computed_at: datetime
    alpha: float
    beta: float
    scored: int
    audiences: int
    top: list[dict[str, Any]]


@task(name="score_trends", **BATCH_IO)
def score_trends(job: TrendConfig, resources: Resources, now: datetime) -> ScoreSummary:
    """Score the fresh articles from the stored windows and publish the top-N per audience to DynamoDB."""
    counts = resources.trend_counts(job).since(now - timedelta(minutes=job.scoring.max_age_minutes), now)
    params = score_params(job, counts)
    scored = score_articles(counts, now, params, spec=window_spec(job), per_audience=job.top_n)
    best = top_n(scored, job.top_n)
    serving = resources.trend_serving(job)
    serving.ensure()
    slim = {
        audience: [
            {k: r[k] for k in ("article_id", "score", "ctr", "impressions", "clicks", "velocity", "age_minutes")}
            for r in rows
        ]
        for audience, rows in best.items()
    }
    serving.put(slim, now, job.ttl_minutes * 60)
    get_run_logger().info(
        "Ranked %d (audience, article) pair(s) at %s with prior Beta(%.3g, %.3g); top %d of %d audience(s) published",
        len(scored),
        now.isoformat(),
        params.alpha,
        params.beta,
        job.top_n,
        len(best),
    )
    top = [
        {"gender": g, "segment_id": s, "rank": i + 1, **r} for (g, s), rows in slim.items() for i, r in enumerate(rows)
    ]
    return ScoreSummary(now, params.alpha, params.beta, len(scored), len(best), top)


@task(name="advance_watermark", **SETUP_IO)
def advance_watermark(job: TrendConfig, resources: Resources, end: datetime) -> None:
    """Record that every window before ``end`` has been counted (the next run's catch-up starts there)."""
    resources.trend_counts(job).advance(job.name, end)
