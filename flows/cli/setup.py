"""`keyflow setup`: create what a profile names in AWS."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.output import FAILED, print_status, reports_errors

RequiredProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="profile name or path (config/profiles/)", show_default=False)
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="show what would be done; change nothing")]


@reports_errors
def setup_cmd(
    profile: RequiredProfileOpt,
    jobs: Annotated[
        list[str] | None,
        typer.Option("--job", "-j", help="events or trends job whose tables to create (repeatable; default: all)"),
    ] = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Create what the profile names, when missing: the staging bucket (default encryption, public access
    blocked, staged objects expiring after 7 days), the key table, and the article and trend serving tables of the
    events and trends jobs (DynamoDB, SSE). Idempotent: one line per resource, created or already there."""
    from config.loader import load_profile
    from tasks.setup import DIFFERS, jobs_for, setup_resources

    prof = load_profile(profile)
    steps = setup_resources(prof, jobs_for(jobs), dry_run)
    print_status((s.status, s.what + (f": {s.detail}" if s.detail else "")) for s in steps)
    if any(s.status == DIFFERS for s in steps):
        raise typer.Exit(FAILED)
