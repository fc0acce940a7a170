"""The main job: for each key active on the run date, in parallel, extract → rules → stage in S3 → load."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from config.errors import PausedError
from config.loader import load_dataset, load_profile
from tasks.control import is_paused
from tasks.etl import KeyResult, list_active_keys, load_key, prepare_target, remove_inactive_keys, stage_key


def _run_id(run_date: date) -> str:
    run = str(flow_run.get_id() or "local")[:8]
    return f"{run_date.isoformat()}-{datetime.now(UTC):%H%M%S}-{run}"


def _failure(key: str, state: State[Any]) -> KeyResult:
    exc = state.result(raise_on_failure=False)
    message = str(exc) if isinstance(exc, BaseException) else (state.message or state.name or "failed")
    status = "paused" if isinstance(exc, PausedError) else "failed"
    return KeyResult(key=key, status=status, error=message.splitlines()[0] if message else status)


def _artifact_key(dataset: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{dataset.lower()}-run-summary")


@flow(
    name="rds-to-redshift",
    task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
    validate_parameters=True,
)
def rds_to_redshift(
    dataset: str = "campaign_facts", run_date: date | None = None, profile: str = "local"
) -> State[Any]:
    """Load every key of ``dataset`` active on ``run_date`` (today, UTC, by default), one parallel branch per key.

    Each key is replaced atomically in the warehouse and reconciled; a failed key keeps its previous rows and
    fails the run after the other keys have loaded.
    """
    logger = get_run_logger()
    prof = load_profile(profile)
    ds = load_dataset(dataset)
    day = run_date or datetime.now(UTC).date()
    if is_paused("etl"):
        logger.warning("The etl flows are paused: nothing started (`keyflow resume etl` switches them back on)")
        return Cancelled(message="paused: the etl flows are switched off", data=[])
    run_id = _run_id(day)
    logger.info("Run %s: dataset %s, run date %s, profile %s", run_id, ds.name, day, prof.name)

    spec = prepare_target(ds, prof)
    keys = list_active_keys(ds.name, day, prof)
    if not keys:
        logger.info("Nothing to do: no key of %s is active on %s", ds.name, day)
        return Completed(message="nothing to do", data=[])

    staged = stage_key.map(keys, unmapped(ds), unmapped(prof), unmapped(spec), unmapped(run_id), unmapped(day))
    loaded = load_key.map(staged, unmapped(ds), unmapped(prof), unmapped(spec))

    results: list[KeyResult] = []
    for key, stage_future, load_future in zip(keys, staged, loaded, strict=True):
        stage_future.wait()
        if not stage_future.state.is_completed():
            results.append(_failure(key.key, stage_future.state))
            continue
        load_future.wait()
        if load_future.state.is_completed():
            results.append(load_future.result())
        else:
            failed = _failure(key.key, load_future.state)
            s = stage_future.result()
            results.append(
                KeyResult(**{**failed.as_row(), "rows_extracted": s.rows_extracted, "rows_staged": s.rows_staged})
            )

    failed_keys = [r.key for r in results if r.status == "failed"]
    paused_keys = [r.key for r in results if r.status == "paused"]
    if ds.target.load_mode == "replace_table" and not failed_keys and not paused_keys:
        remove_inactive_keys(prof, spec, [k.key for k in keys])

    create_table_artifact(
        key=_artifact_key(ds.name),
        table=[r.as_row() for r in results],
        description=f"{ds.name} on {day}: {len(results) - len(failed_keys) - len(paused_keys)} of {len(results)} "
        "key(s) loaded "
        f"(run {run_id})",
    )
    rows = [r.as_row() for r in results]
    if failed_keys:
        for r in results:
            if r.status == "failed":
                logger.error("Key %r failed: %s", r.key, r.error)
        return Failed(
            message=f"{len(failed_keys)} of {len(results)} key(s) failed: {', '.join(failed_keys)}", data=rows
        )
    if paused_keys:
        return Cancelled(message=f"paused: {len(paused_keys)} of {len(results)} key(s) not started", data=rows)
    return Completed(message=f"{len(results)} key(s) loaded", data=rows)


def for_profile(profile: str) -> Any:
    """The flow with the task runner the profile asks for (threads, or a Dask cluster for scale-out)."""
    prof = load_profile(profile)
    if prof.task_runner != "dask":
        return rds_to_redshift
    from prefect_dask import DaskTaskRunner  # only profiles that scale out need Dask

    if prof.dask_address:
        runner = DaskTaskRunner(address=prof.dask_address)
    else:
        runner = DaskTaskRunner(
            cluster_kwargs={"n_workers": prof.dask_workers, "threads_per_worker": 1, "processes": True}
        )
    return rds_to_redshift.with_options(task_runner=runner)  # type: ignore[arg-type]
