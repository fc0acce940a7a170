"""Tasks of trend scoring: count event-time windows from the S3 archive, score and publish the top articles."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from config.errors import KeyFailedError
from config.models import Profile, TrendConfig
from tasks.io.archive import (
    ArchiveScan,
    FileReport,
    StoreSource,
    archive_files_of,
    hour_prefix,
    quarantine,
    write_rejected,
)
from tasks.io.compaction import ArchivePlaces, CompactionResult, compact_hour
from tasks.resources import Resources, trend_counts_for
from tasks.retries import BATCH_IO, SETUP_IO
from tasks.transforms.trends import (
    RecountRange,
    ScoreParams,
    WindowSpec,
    best_per_audience,
    count_stream,
    fit_beta_prior,
    over_invalid_share,
    recount_range,
    scored_pairs,
    top_n,
)


def window_spec(job: TrendConfig, ignore_lateness: bool = False) -> WindowSpec:
    """The job's tumbling windows (``ignore_lateness``: count by event time alone)."""
    return WindowSpec(
        width=timedelta(seconds=job.window_seconds),
        lateness=timedelta(seconds=job.lateness_seconds),
        ignore_lateness=ignore_lateness,
    )


def archive_places(job: TrendConfig) -> ArchivePlaces:
    """Where the job's archive, rejected lines and quarantined files live."""
    return ArchivePlaces(job.archive_prefix, job.rejected_prefix, job.quarantine_prefix)


def check_counts_store(profile: Profile, job: TrendConfig) -> None:
    """Raise ``ConfigError`` now, before a run starts, when the profile has nowhere to keep the job's counts."""
    trend_counts_for(profile, job)


@dataclass(frozen=True)
class CountSummary:
    """What one counting pass read and wrote.

    Every line read is one of: counted, late, invalid (rejected, with its line number), outside the range, or a
    duplicate (its event id was read before in its hour): ``events = counted + late + invalid + outside +
    duplicates``. ``quarantined`` files could not be read at all.
    """

    start: datetime
    end: datetime
    files: int = 0
    events: int = 0
    counted: int = 0
    late: int = 0
    invalid: int = 0
    outside: int = 0
    duplicates: int = 0
    quarantined: int = 0
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


def count_range(
    job: TrendConfig, resources: Resources, start: datetime, end: datetime, ignore_lateness: bool = False
) -> CountSummary:
    """Count every window in ``[start, end)`` from the archive and replace those windows in the warehouse.

    Bad lines are written under the job's rejected prefix and unreadable files copied to its quarantine prefix
    first; then, when an hour's share of invalid lines is over ``max_invalid_share``, nothing is written and the
    range fails (``KeyFailedError``).
    """
    started = time.perf_counter()
    store = resources.object_store()
    files = archive_files_of(store, job.archive_prefix, start, end)
    scan = ArchiveScan(StoreSource(store), files, job.parallel_files, processes=job.file_processes)
    stream = scan.reader()  # its worker processes start while the user file is read
    try:
        users = resources.users(job).table()
        counts, events = count_stream(stream, users, window_spec(job, ignore_lateness), start, end, names=scan.names)
    finally:
        stream.close()  # a stream left unread (the count failed) stops its reading threads first…
        scan.close()  # …then the worker processes (a stream read to its end has ended them already)
    reports = list(scan.reports.values())
    write_rejected(store, job.rejected_prefix, reports)
    for r in reports:
        if r.quarantined:
            quarantine(store, job.quarantine_prefix, r.file, r.quarantined)
    check_invalid_share(job, store.bucket, reports)
    counts_store = resources.trend_counts(job)
    counts_store.ensure()
    rows = counts_store.replace_windows(start, end, counts.counts)
    duplicates = scan.duplicates
    invalid = sum(r.invalid for r in reports) + counts.invalid_events
    return CountSummary(
        start=start,
        end=end,
        files=len(files),
        events=events + duplicates + invalid - counts.invalid_events,
        counted=counts.counted_events,
        late=counts.late_events,
        invalid=invalid,
        outside=counts.outside_events,
        duplicates=duplicates,
        quarantined=sum(1 for r in reports if r.quarantined),
        rows=rows,
        seconds=round(time.perf_counter() - started, 3),
    )


def check_invalid_share(job: TrendConfig, bucket: str, reports: Sequence[FileReport]) -> None:
    """Fail (``KeyFailedError``) when an hour's invalid lines are more than ``max_invalid_share`` of its lines."""
    by_hour: dict[datetime, list[int]] = {}
    for r in reports:
        tally = by_hour.setdefault(r.file.hour, [0, 0])
        tally[0] += r.invalid
        tally[1] += r.events + r.invalid
    problems = [
        f"hour {hour:%Y-%m-%d %H}:00: {invalid:,} of {lines:,} line(s) invalid ({invalid / lines:.1%}), over "
        f"max_invalid_share {job.max_invalid_share:g} ({job.file}); the lines and reasons are under "
        f"s3://{bucket}/{hour_prefix(job.rejected_prefix, hour)}"
        for hour, (invalid, lines) in sorted(by_hour.items())
        if over_invalid_share(invalid, lines, job.max_invalid_share)
    ]
    if problems:
        raise KeyFailedError("\n".join(problems))


@task(name="count_windows", **BATCH_IO)
def count_windows(
    job: TrendConfig, resources: Resources, start: datetime, end: datetime, ignore_lateness: bool = False
) -> CountSummary:
    """Count the windows in ``[start, end)`` from the event archive into the warehouse (idempotent)."""
    summary = count_range(job, resources, start, end, ignore_lateness)
    logger = get_run_logger()
    logger.info(
        "Windows %s to %s: %d file(s), %d line(s): %d counted, %d late, %d invalid, %d outside, %d duplicate(s); "
        "%d count row(s)",
        start.isoformat(),
        end.isoformat(),
        summary.files,
        summary.events,
        summary.counted,
        summary.late,
        summary.invalid,
        summary.outside,
        summary.duplicates,
        summary.rows,
    )
    if summary.late:
        logger.warning(
            "%d event(s) arrived after their window closed (lateness %ds)", summary.late, job.lateness_seconds
        )
    if summary.invalid:
        logger.warning("%d invalid line(s), written under %s", summary.invalid, job.rejected_prefix)
    if summary.quarantined:
        logger.warning("%d unreadable file(s) copied to %s", summary.quarantined, job.quarantine_prefix)
    return summary


@task(name="compact_hours", **BATCH_IO)
def compact_hours(job: TrendConfig, resources: Resources, hours: Sequence[datetime]) -> list[CompactionResult]:
    """Compact each closed hour of ``hours`` into Parquet (idempotent; an hour another run is compacting is skipped)."""
    store = resources.object_store()
    counts = resources.trend_counts(job)
    logger = get_run_logger()
    results = []
    for hour in hours:
        with counts.lock(f"keyflow-compact s3://{store.bucket}/{hour_prefix(job.archive_prefix, hour)}") as mine:
            if not mine:
                results.append(CompactionResult(hour, reason="being compacted by another run"))
                continue
            result = compact_hour(store, archive_places(job), hour, job.compact_target_mb << 20)
        results.append(result)
        if result.files_out:
            logger.info(
                "Compacted hour %s: %d file(s) into %d (%d event(s), %d duplicate(s) and %d invalid line(s) dropped)",
                hour.isoformat(),
                result.files_in,
                len(result.files_out),
                result.events,
                result.duplicates,
                result.invalid,
            )
    return results


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
    pairs = scored_pairs(counts, now, params, spec=window_spec(job))
    best = top_n(best_per_audience(pairs, job.top_n).to_pylist(), job.top_n)
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
        pairs.num_rows,
        now.isoformat(),
        params.alpha,
        params.beta,
        job.top_n,
        len(best),
    )
    top = [
        {"gender": g, "segment_id": s, "rank": i + 1, **r} for (g, s), rows in slim.items() for i, r in enumerate(rows)
    ]
    return ScoreSummary(now, params.alpha, params.beta, pairs.num_rows, len(best), top)


@task(name="advance_watermark", **SETUP_IO)
def advance_watermark(job: TrendConfig, resources: Resources, end: datetime) -> None:
    """Record that every window before ``end`` has been counted (the next run's catch-up starts there)."""
    resources.trend_counts(job).advance(job.name, end)
