"""File ingestion: landing files in S3 into the RDS tables the ETL reads, with validation and quarantine."""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact
from prefect.states import State

from config.errors import first_line
from config.loader import load_file_source, load_profile
from flows.common import (
    artifact_key,
    ends_failed_on_errors,
    final_state,
    gather,
    refuse_if_misconfigured,
    refuse_if_paused,
    ride_out,
)
from tasks.ingest_files import FileResult, ingest_file, list_landing_files, prepare_file_target
from tasks.resources import resources_for

PAUSED = "The ingest flows are paused: nothing loaded (`keyflow resume ingest`)"
STATUSES = ("loaded", "skipped", "quarantined", "failed")


@flow(name="ingest-files", validate_parameters=True)
@ends_failed_on_errors
def ingest_files(source: str = "campaign_facts_files", profile: str = "local") -> State[Any]:
    """Load every new landing file of ``source`` (one parallel branch per file).

    Files already loaded are skipped by content hash, unreadable files are quarantined whole, bad rows are set aside
    with their reason.
    """
    prof, src = load_profile(profile), load_file_source(source)
    if refused := refuse_if_paused("ingest", data=[], warning=PAUSED):
        return refused
    resources = resources_for(prof)
    if refused := refuse_if_misconfigured(src, resources):
        return refused
    retries = ride_out(resources)  # a database failover or an S3 outage is ridden out within the profile's window
    prepare_file_target.with_options(**retries)(src, resources)
    keys = list_landing_files.with_options(**retries)(src, resources)
    futures = ingest_file.with_options(**retries).map(unmapped(src), unmapped(resources), keys)
    results = gather(keys, futures, _file_failure)
    rows = [r.as_row() for r in results]
    create_table_artifact(key=artifact_key(src.name, "files"), table=rows, description=f"{src.name}: files of this run")
    count = {s: sum(r.status == s for r in results) for s in STATUSES}
    message = ", ".join(f"{n} {s}" for s, n in count.items() if n) or "no new file"
    return final_state(rows, done=message, failed=message if count["failed"] else None)


def _file_failure(key: str, state: State[Any]) -> FileResult:
    """The row of a file whose branch failed (after its retries)."""
    return FileResult(key, "failed", reason=first_line(state.result(raise_on_failure=False), default="failed"))
