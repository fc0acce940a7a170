"""Event ingestion: drain activity events from the broker into DynamoDB and the S3 archive, exactly once."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Cancelled, Completed, State

from config.loader import load_events, load_profile
from tasks.control import is_paused
from tasks.ingest import drain_events


@flow(name="ingest-events", validate_parameters=True)
def ingest_events(
    job: str = "activity",
    profile: str = "local",
    max_events: int | None = None,
    max_seconds: float | None = None,
) -> State[Any]:
    """Drain up to ``max_events`` messages or ``max_seconds`` (defaults from the YAML), as the original Lambda
    polled its broker; a message is acknowledged only after its batch is stored."""
    logger = get_run_logger()
    prof, cfg = load_profile(profile), load_events(job)
    if is_paused("ingest"):
        logger.warning("The ingest flows are paused: nothing drained (`keyflow resume ingest`)")
        return Cancelled(message="paused: the ingest flows are switched off", data={})
    summary = drain_events(cfg, prof, max_events or cfg.max_events, max_seconds or cfg.max_seconds)
    row = summary.as_row()
    create_table_artifact(
        key=f"{cfg.name.replace('_', '-').lower()}-drain", table=[row], description=f"{cfg.name}: one drain"
    )
    return Completed(
        message=f"{summary.received} received: {summary.stored} stored, {summary.duplicates} duplicate(s), "
        f"{summary.rejected} rejected, {summary.dead_lettered} dead-lettered",
        data=row,
    )
