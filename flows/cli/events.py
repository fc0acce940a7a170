"""`keyflow events drain`: store broker events in DynamoDB and the S3 archive."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import ProfileOpt, check_config
from flows.cli.output import finish, out, reports_errors, warning

events_app = typer.Typer(help="Ingest activity events from the broker.", no_args_is_help=True)


@events_app.command("drain")
@reports_errors
def events_drain(
    job: Annotated[str, typer.Option("--job", "-j", help="event ingestion name or path (config/events/)")] = "activity",
    profile: ProfileOpt = "local",
    max_events: Annotated[int | None, typer.Option("--max-events", min=1, help="stop after this many")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", min=1, help="stop after this long")] = None,
    forever: Annotated[bool, typer.Option("--forever", help="long-running: drain again as soon as one ends")] = False,
) -> None:
    """Store broker events in DynamoDB and the S3 archive; each batch is acknowledged only once stored."""
    check_config(profile, "events", job)
    from flows.ingest_events import ingest_events

    while True:
        state = ingest_events(
            job=job, profile=profile, max_events=max_events, max_seconds=max_seconds, return_state=True
        )
        row = finish(state, "ingest").data
        out.print(state.message or "", highlight=False)
        if isinstance(row, dict) and row.get("warnings"):
            warning(row["warnings"])
        if not forever:
            assert isinstance(row, dict)
            return
