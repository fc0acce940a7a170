"""`keyflow trends`: score trending articles, recount a past range, compact closed hours, show a published ranking."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli.common import JobOpt, ProfileOpt, parse_time, quiet_prefect
from flows.cli.output import (
    FAILED,
    err,
    error,
    fail,
    finish,
    out,
    print_compaction,
    print_hours,
    print_json,
    print_ranking,
    reports_errors,
)

trends_app = typer.Typer(help="Score trending articles from the event archive.", no_args_is_help=True)
NO_RANKING = "no ranking published yet (`keyflow trends run` publishes one)"


def _check_trends(job: str, profile: str, compact_only: bool = False) -> None:
    """Load the profile and the job, and run its preflight (counts store, users file…), before Prefect starts.

    ``trends compact`` needs only the counts store (the compaction lock lives there), not the users file.
    """
    from config.loader import load_profile, load_trends

    prof, spec = load_profile(profile), load_trends(job)
    quiet_prefect()
    if compact_only:
        from tasks.trends import check_counts_store

        check_counts_store(prof, spec)
        return
    from config.errors import ConfigError
    from tasks.preflight import problems_before_run

    problems = problems_before_run(spec, prof)  # the counts store, the archive, the users file
    if problems:
        raise ConfigError(problems)


def _notes(data: dict[str, Any]) -> None:
    """The warnings a run's figures call for, one line each on standard error."""
    if data.get("late_note"):
        err.print(f"[yellow]{data['late_note']}[/yellow]", highlight=False, soft_wrap=True)
    for failure in data.get("failed") or []:
        error(failure)


@trends_app.command("run")
@reports_errors
def trends_run(
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
    end: Annotated[str | None, typer.Option("--end", help="rank as of this time (default: now), UTC")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the run's figures as one JSON line")] = False,
) -> None:
    """Count the windows since the last run and those still open to late events, publish the top-N.

    Then compact the archive hours closed to late events.
    """
    until = parse_time(end, "--end") if end else None
    _check_trends(job, profile)
    from flows.trend_scoring import trend_scoring

    outcome = finish(trend_scoring(job=job, profile=profile, end=until, return_state=True), "trends")
    data = outcome.data
    if as_json:
        print_json(data)
        raise typer.Exit(outcome.code)
    assert isinstance(data, dict)
    out.print(
        f"Windows {data['start']} → {data['end']}: {data['events']:,} line(s) in {data['files']} file(s), "
        f"{data['counted']:,} counted, {data['late']:,} late, {data['invalid']:,} invalid, "
        f"{data['duplicates']:,} duplicate(s); {data['audiences']} audience(s) ranked.",
        highlight=False,
        soft_wrap=True,
    )
    if data.get("quarantined"):
        err.print(f"[yellow]{data['quarantined']} unreadable file(s) quarantined[/yellow]")
    if data.get("skipped"):
        a, b = data["skipped"]
        err.print(f"[yellow]catch-up capped: windows {a} → {b} not counted; run `keyflow trends backfill`[/yellow]")
    _notes(data)
    raise typer.Exit(outcome.code)


@trends_app.command("backfill")
@reports_errors
def trends_backfill(
    start: Annotated[str, typer.Option("--from", help="first window, YYYY-MM-DD[THH:MM] (UTC)")],
    end: Annotated[str, typer.Option("--to", help="end of the range (exclusive), YYYY-MM-DD[THH:MM] (UTC)")],
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
    ignore_lateness: Annotated[
        bool,
        typer.Option(
            "--ignore-lateness", help="count by event time alone (rebuild history from replayed events: none is late)"
        ),
    ] = False,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            help="then rank as of --to and publish to the serving table; without it the ranking is left as it is",
        ),
    ] = False,
) -> None:
    """Recount every window of a past range from the archive, an hour at a time (idempotent).

    Publishes nothing unless --publish is given.
    """
    first, last = parse_time(start, "--from"), parse_time(end, "--to")
    if last <= first:
        fail(f"--to {last.isoformat()} is not after --from {first.isoformat()}")
    _check_trends(job, profile)
    from flows.trend_scoring import trend_backfill

    state = trend_backfill(
        job=job,
        start=first,
        end=last,
        profile=profile,
        ignore_lateness=ignore_lateness,
        publish=publish,
        return_state=True,
    )
    outcome = finish(state, "trends")
    print_hours(outcome.data, f"trends backfill {first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M}")
    late = sum(r["late"] for r in outcome.data)
    events = sum(r["events"] for r in outcome.data)
    if not ignore_lateness and late * 2 > events > 0:
        err.print(
            f"[yellow]most events were late: {late:,} of {events:,} arrived after their window closed; to rebuild "
            "history from a replay, add --ignore-lateness[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
    if outcome.code:
        for line in str(state.message).splitlines():
            error(line)
    elif publish:
        out.print(str(state.message), highlight=False, soft_wrap=True)
    raise typer.Exit(outcome.code)


@trends_app.command("compact")
@reports_errors
def trends_compact(
    start: Annotated[str, typer.Option("--from", help="first hour, YYYY-MM-DD[THH] (UTC)")],
    end: Annotated[str, typer.Option("--to", help="end of the range (exclusive), YYYY-MM-DD[THH:MM] (UTC)")],
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
) -> None:
    """Compact the archive hours of a range that are closed to late events into Parquet files (idempotent).

    `trends run` does it for the hours it can still see.
    """
    first, last = parse_time(start, "--from"), parse_time(end, "--to")
    if last <= first:
        fail(f"--to {last.isoformat()} is not after --from {first.isoformat()}")
    _check_trends(job, profile, compact_only=True)
    from flows.trend_scoring import trend_compaction

    outcome = finish(trend_compaction(job=job, start=first, end=last, profile=profile, return_state=True), "trends")
    print_compaction(outcome.data, f"trends compact {first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M}")
    raise typer.Exit(outcome.code)


@trends_app.command("top")
@reports_errors
def trends_top(
    gender: Annotated[str | None, typer.Option("--gender", "-g", help="gender (omit for unknown users)")] = None,
    segment: Annotated[str | None, typer.Option("--segment", "-s", help="segment id (omit for unknown users)")] = None,
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="articles to show")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print the ranking as one JSON line")] = False,
) -> None:
    """The published top articles of one audience, best first, read back from the DynamoDB serving table."""
    from config.loader import load_profile, load_trends
    from tasks.rankings import top_articles

    ranking = top_articles(load_profile(profile), load_trends(job), gender, segment, limit)
    if ranking is None:
        fail(NO_RANKING, code=FAILED)
    if as_json:
        print_json(ranking)
        return
    if not ranking:
        out.print(f"No ranking published for gender {gender or '-'}, segment {segment or '-'} (or it expired).")
        raise typer.Exit(FAILED)
    print_ranking(ranking, f"top articles: gender {gender or '-'}, segment {segment or '-'}")
