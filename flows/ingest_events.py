"""Event ingestion: drain activity events from the broker into DynamoDB and the S3 archive, exactly once."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, State

from config.loader import load_events, load_profile
from flows.common import artifact_key, ends_failed_on_errors, refuse_if_misconfigured, refuse_if_paused, ride_out
from tasks.ingest import drain_events
from tasks.resources import resources_for
from tasks.retries import within

PAUSED = "The ingest flows are paused: nothing drained (`keyflow resume ingest`)"


@flow(name="ingest-events", validate_parameters=True)
@ends_failed_on_errors
def ingest_events(
    job: str = "activity",
    profile: str = "local",
    max_events: int | None = None,
    max_seconds: float | None = None,
) -> State[Any]:
    """Drain up to ``max_events`` messages or ``max_seconds`` (defaults from the YAML).

    As the original Lambda polled its broker; a message is acknowledged only after its batch is stored.
    """
    prof, cfg = load_profile(profile), load_events(job)
    if refused := refuse_if_paused("ingest", data={}, warning=PAUSED):
        return refused
    resources = resources_for(prof)
    seconds = max_seconds or cfg.max_seconds
    if refused := refuse_if_misconfigured(cfg, resources, within=seconds):
        return refused
    # A broker, table or bucket that drops out is retried within the profile's window, and only while the drain's
    # own time allows: --max-seconds is a promise.
    drain = drain_events.with_options(**within(ride_out(resources), seconds))
    summary = drain(cfg, resources, max_events or cfg.max_events, seconds)
    row = summary.as_row()
    create_table_artifact(key=artifact_key(cfg.name, "drain"), table=[row], description=f"{cfg.name}: one drain")
    return Completed(
        message=f"{summary.received} received: {summary.stored} stored, {summary.duplicates} duplicate(s), "
        f"{summary.rejected} rejected, {summary.dead_lettered} dead-lettered",
        data=row,
    )
