"""File ingestion: landing files in S3 into the RDS tables the ETL reads, with validation and quarantine."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact
from prefect.states import Cancelled, Completed, Failed, State

from config.loader import load_file_source, load_profile
from tasks.control import is_paused
from tasks.ingest_files import FileResult, ingest_file, list_landing_files, prepare_file_target


@flow(name="ingest-files", validate_parameters=True)
def ingest_files(source: str = "campaign_facts_files", profile: str = "local") -> State[Any]:
    """Load every new landing file of ``source`` (one parallel branch per file); files already loaded are skipped
    by content hash, unreadable files are quarantined whole, bad rows are set aside with their reason."""
    logger = get_run_logger()
    prof, src = load_profile(profile), load_file_source(source)
    if is_paused("ingest"):
        logger.warning("The ingest flows are paused: nothing loaded (`keyflow resume ingest`)")
        return Cancelled(message="paused: the ingest flows are switched off", data=[])
    prepare_file_target(src, prof)
    keys = list_landing_files(src, prof)
    futures = ingest_file.map(unmapped(src), unmapped(prof), keys)
    results: list[FileResult] = []
    for key, future in zip(keys, futures, strict=True):
        future.wait()
        if future.state.is_completed():
            results.append(future.result())
        else:
            exc = future.state.result(raise_on_failure=False)
            results.append(FileResult(key, "failed", reason=str(exc).splitlines()[0] if str(exc) else "failed"))
    rows = [r.as_row() for r in results]
    create_table_artifact(
        key=f"{src.name.replace('_', '-').lower()}-files", table=rows, description=f"{src.name}: files of this run"
    )
    count = {s: sum(r.status == s for r in results) for s in ("loaded", "skipped", "quarantined", "failed")}
    message = ", ".join(f"{n} {s}" for s, n in count.items() if n) or "no new file"
    if count["failed"]:
        return Failed(message=message, data=rows)
    return Completed(message=message, data=rows)
