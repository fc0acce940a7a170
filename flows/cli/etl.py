"""`keyflow etl`: run the key-driven ETL for one date, or backfill a range of dates."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer

from flows.cli.common import DatasetOpt, ProfileOpt, check_config, interruptible, parse_date
from flows.cli.output import (
    FAILED,
    OK,
    PAUSED,
    err,
    fail,
    finish,
    out,
    print_dates,
    print_json,
    print_summary,
    reports_errors,
)

etl_app = typer.Typer(help="Run the key-driven ETL.", no_args_is_help=True)


def run_etl(dataset: str, run_date: date | None, profile: str, as_json: bool = False) -> int:
    """Validate config, run the flow, print the summary; return the exit code (or end the command: error, paused)."""
    check_config(profile, "datasets", dataset)
    from flows.rds_to_redshift import for_profile

    with interruptible():  # SIGINT / SIGTERM: what the run staged is removed, then exit 130 / 143
        state = for_profile(profile)(dataset=dataset, run_date=run_date, profile=profile, return_state=True)
    title = f"{dataset} on {run_date or 'today'} — {state.message}"

    def paused(rows: Any) -> None:
        if rows:
            print_summary(rows, title)

    done = finish(state, "etl", resume_hint="switches the etl flows back on", on_paused=paused)
    rows: list[dict[str, Any]] = done.data or []
    if as_json:
        print_json(rows)
        return done.code
    if not rows:
        out.print(f"Nothing to do: no key of {dataset} is active on {run_date or 'today'}.")
        return OK
    print_summary(rows, title)
    return done.code


@etl_app.command("run")
@reports_errors
def etl_run(
    dataset: DatasetOpt,
    run_date: Annotated[str | None, typer.Option("--date", help="run date YYYY-MM-DD (default: today, UTC)")] = None,
    profile: ProfileOpt = "local",
    as_json: Annotated[bool, typer.Option("--json", help="print the per-key results as one JSON line")] = False,
) -> None:
    """Load every key of DATASET active on the run date; exit 1 when any key failed."""
    day = parse_date(run_date, "--date") if run_date else None
    raise typer.Exit(run_etl(dataset, day, profile, as_json))


@etl_app.command("backfill")
@reports_errors
def etl_backfill(
    dataset: DatasetOpt,
    start: Annotated[str, typer.Option("--from", help="first run date, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--to", help="last run date, YYYY-MM-DD (inclusive)")],
    profile: ProfileOpt = "local",
    force: Annotated[bool, typer.Option("--force", help="reload dates already loaded and reconciled")] = False,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=8, help="dates at once")] = 1,
) -> None:
    """Run past dates with the keys active on each; resumable: loaded dates are skipped unless --force."""
    from rich.progress import Progress

    first, last = parse_date(start, "--from"), parse_date(end, "--to")
    if last < first:
        fail(f"--to {last} is before --from {first}")
    check_config(profile, "datasets", dataset)
    from flows.backfill import backfill

    with interruptible(), Progress(console=err, transient=True) as progress:
        bar = progress.add_task(f"backfill {dataset}", total=(last - first).days + 1)
        results = backfill(
            dataset, first, last, profile, force, parallel, on_done=lambda _: progress.advance(bar), preflight=False
        )
    print_dates(results, f"backfill {dataset} {first} → {last}")
    counts = {s: sum(r.status == s for r in results) for s in ("loaded", "skipped", "nothing", "failed", "paused")}
    out.print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    raise typer.Exit(FAILED if counts["failed"] else PAUSED if counts["paused"] else OK)
