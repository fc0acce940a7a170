"""`keyflow trends`: score trending articles, recount a past range, show a published ranking."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import JobOpt, ProfileOpt, parse_time, quiet_prefect
from flows.cli.output import FAILED, err, fail, finish, out, print_hours, print_json, print_ranking, reports_errors

trends_app = typer.Typer(help="Score trending articles from the event archive.", no_args_is_help=True)


def _check_trends(job: str, profile: str) -> None:
    """Load the profile and the job, and run its preflight (counts store, users file…), before Prefect starts."""
    from config.loader import load_profile, load_trends

    prof, spec = load_profile(profile), load_trends(job)
    quiet_prefect()
    from config.errors import ConfigError
    from tasks.preflight import problems_before_run

    problems = problems_before_run(spec, prof)  # the counts store, the archive, the users file
    if problems:
        raise ConfigError(problems)


@trends_app.command("run")
@reports_errors
def trends_run(
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
    end: Annotated[str | None, typer.Option("--end", help="rank as of this time (default: now), UTC")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the run's figures as one JSON line")] = False,
) -> None:
    """Count the windows since the last run (and those still open to late events), then publish the top-N."""
    until = parse_time(end, "--end") if end else None
    _check_trends(job, profile)
    from flows.trend_scoring import trend_scoring

    data = finish(trend_scoring(job=job, profile=profile, end=until, return_state=True), "trends").data
    if as_json:
        print_json(data)
        return
    assert isinstance(data, dict)
    out.print(
        f"Windows {data['start']} → {data['end']}: {data['events']:,} event(s) in {data['files']} file(s), "
        f"{data['counted']:,} counted, {data['late']:,} late, {data['invalid']:,} invalid; "
        f"{data['audiences']} audience(s) ranked."
    )
    if data.get("skipped"):
        a, b = data["skipped"]
        err.print(f"[yellow]catch-up capped: windows {a} → {b} not counted; run `keyflow trends backfill`[/yellow]")


@trends_app.command("backfill")
@reports_errors
def trends_backfill(
    start: Annotated[str, typer.Option("--from", help="first window, YYYY-MM-DD[THH:MM] (UTC)")],
    end: Annotated[str, typer.Option("--to", help="end of the range (exclusive), YYYY-MM-DD[THH:MM] (UTC)")],
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
) -> None:
    """Recount every window of a past range from the archive, an hour at a time (idempotent)."""
    first, last = parse_time(start, "--from"), parse_time(end, "--to")
    if last <= first:
        fail(f"--to {last.isoformat()} is not after --from {first.isoformat()}")
    _check_trends(job, profile)
    from flows.trend_scoring import trend_backfill

    rows = finish(trend_backfill(job=job, start=first, end=last, profile=profile, return_state=True), "trends").data
    print_hours(rows, f"trends backfill {first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M}")


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
    if as_json:
        print_json(ranking)
        return
    if not ranking:
        out.print(f"No ranking published for gender {gender or '-'}, segment {segment or '-'} (or it expired).")
        raise typer.Exit(FAILED)
    print_ranking(ranking, f"top articles: gender {gender or '-'}, segment {segment or '-'}")
