"""`keyflow setup` and `keyflow cleanup`: create what a profile names in AWS, and remove what killed runs left."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from flows.cli.common import parse_duration
from flows.cli.output import FAILED, hint, out, print_status, reports_errors

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
    """Create what the profile and its jobs name in AWS, when missing; one line per resource.

    The staging bucket (default encryption, public access blocked, staged objects expiring after 7 days), the key
    table, and the article and trend serving tables of the events and trends jobs (DynamoDB, SSE). Idempotent: a
    second run reports everything as already there.
    """
    from config.loader import load_profile
    from tasks.setup import DIFFERS, jobs_for, setup_resources

    prof = load_profile(profile)
    steps = setup_resources(prof, jobs_for(jobs), dry_run)
    print_status((s.status, s.what + (f": {s.detail}" if s.detail else "")) for s in steps)
    if any(s.status == DIFFERS for s in steps):
        raise typer.Exit(FAILED)


@reports_errors
def cleanup_cmd(
    profile: RequiredProfileOpt,
    older_than: Annotated[
        str, typer.Option("--older-than", help="remove runs with nothing written for this long (30m, 24h, 7d)")
    ] = "24h",
    dry_run: DryRunOpt = False,
) -> None:
    """Remove what killed ETL runs left: staged objects, incomplete uploads, local part folders.

    A run that is still running (its lease renewed in the last 5 minutes) is never touched, however old its files.
    """
    from config.loader import load_profile
    from tasks.cleanup import find_leftovers, remove_leftovers

    age = parse_duration(older_than, "--older-than")
    prof = load_profile(profile)
    found = find_leftovers(prof, age)
    verb = "would remove" if dry_run else "removed"
    bucket = f"s3://{found.bucket}"
    rows: list[tuple[str, str]] = []
    for run in found.remove:
        rows.append((verb, f"{bucket}/{run.prefix}: {run.objects} object(s), {_size(run.bytes)}"))
    for run, why in found.keep:
        rows.append(("kept", f"{bucket}/{run.prefix}: {why}"))
    for upload in found.uploads:
        rows.append((verb, f"incomplete upload {bucket}/{upload['Key']}"))
    for folder in found.folders:
        rows.append((verb, f"local folder {folder.path} (process {folder.pid} is gone)"))
    deleted = sum(run.objects for run in found.remove)
    if not dry_run:
        deleted = remove_leftovers(prof, found)
    print_status(rows)
    if not (found.remove or found.uploads or found.folders):
        out.print(f"Nothing to clean up under {bucket}/{prof.prefix.strip('/')}/.", highlight=False)
    elif dry_run:
        hint(f"{deleted} object(s) of {len(found.remove)} run(s) would be removed; run again without --dry-run.")
    else:
        out.print(f"Removed {deleted} object(s) of {len(found.remove)} run(s).", highlight=False)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{n} bytes"  # pragma: no cover


def cleanup_hint(profile: str, older_than: timedelta) -> str:
    """What `keyflow audit` tells the user to run when it finds leftovers."""
    hours = older_than.total_seconds() / 3600
    age = "" if hours == 24 else f" --older-than {hours:g}h"
    return f"run `keyflow cleanup -p {profile}{age}` to remove them"
