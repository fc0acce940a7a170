"""`keyflow check`: the preflight of a profile's jobs on its own: every problem a run would meet, nothing run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.cli.common import ProfileOpt, quiet_prefect
from flows.cli.output import CONFIG, err, error, fail, print_check, reports_errors

if TYPE_CHECKING:
    from tasks.preflight import Job

KINDS = ("datasets", "sources", "events", "trends")


def _loaders() -> dict[str, Any]:
    from config import loader

    return {
        "datasets": loader.load_dataset,
        "sources": loader.load_file_source,
        "events": loader.load_events,
        "trends": loader.load_trends,
    }


def _every(kind: str) -> list[Path]:
    from config.loader import config_dir

    return sorted((config_dir() / kind).glob("*.y*ml"))


@reports_errors
def check_cmd(
    profile: ProfileOpt = "local",
    datasets: Annotated[
        list[str] | None, typer.Option("--dataset", "-d", help="dataset name or path (repeatable)")
    ] = None,
    sources: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="file source name or path (repeatable)")
    ] = None,
    events: Annotated[
        list[str] | None, typer.Option("--events", "-e", help="event ingestion name or path (repeatable)")
    ] = None,
    trends: Annotated[
        list[str] | None, typer.Option("--trends", "-t", help="trend job name or path (repeatable)")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="every dataset, file source, event ingestion and trend job of the config dir")
    ] = False,
) -> None:
    """Check, without running anything, what a run of each job would need.

    The source and its columns, the rules, the secrets, the bucket (a probe object is written and deleted), the key
    table, the warehouse target; the broker, the article table, the users file for event and trend jobs. With no
    job, the profile's own resources.

    Every problem is one line naming the file and field or the resource; exit 2 when there is any.
    """
    from config.loader import load_profile

    named = {"datasets": datasets or [], "sources": sources or [], "events": events or [], "trends": trends or []}
    if every and any(named.values()):
        fail("give --all or the jobs to check, not both")
    prof = load_profile(profile)
    quiet_prefect()
    from config.errors import ConfigError
    from tasks.preflight import check_jobs

    jobs: list[Job] = []
    loaders = _loaders()
    broken = 0
    for kind in KINDS:
        for name in _every(kind) if every else named[kind]:
            try:
                jobs.append(loaders[kind](name))
            except ConfigError as exc:  # a YAML that does not load is a problem like the others
                for line in exc.problems:
                    error(line)
                broken += len(exc.problems)
    if every and not jobs and not broken:
        fail("no dataset, file source, event ingestion or trend job in the config dir")
    reports = check_jobs(prof, jobs)
    for report in reports:
        print_check(report)
    found = broken + sum(len(r.problems) for r in reports)
    if found:
        err.print(f"{found} problem(s) found; nothing was run.", highlight=False)
        raise typer.Exit(CONFIG)
