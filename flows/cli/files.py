"""`keyflow files ingest`: load new landing files from S3 into the RDS tables."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import ProfileOpt, check_config
from flows.cli.output import finish, print_files, print_json, reports_errors

files_app = typer.Typer(help="Load landing files from S3 into the RDS tables.", no_args_is_help=True)


@files_app.command("ingest")
@reports_errors
def files_ingest(
    source: Annotated[str, typer.Option("--source", "-s", help="file source name or path (config/sources/)")],
    profile: ProfileOpt = "local",
    as_json: Annotated[bool, typer.Option("--json", help="print the per-file results as one JSON line")] = False,
) -> None:
    """Load the new landing files of SOURCE; exit 1 when a file failed (quarantined files are not failures)."""
    check_config(profile, "sources", source)
    from flows.ingest_files import ingest_files

    state = ingest_files(source=source, profile=profile, return_state=True)
    done = finish(state, "ingest")
    assert isinstance(done.data, list)
    if as_json:
        print_json(done.data)
    else:
        print_files(done.data, f"{source}: {state.message}")
    raise typer.Exit(done.code)
