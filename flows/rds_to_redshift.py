"""The main job: for each key active on the run date, in parallel, extract → rules → stage in S3 → load."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from config.errors import PausedError, first_line
from config.loader import load_dataset, load_profile
from config.models import DatasetConfig
from flows.common import (
    artifact_key,
    ends_failed_on_errors,
    final_state,
    gather,
    plain_parameters,
    refuse_if_misconfigured,
    refuse_if_paused,
    ride_out,
    settled,
)
from tasks.cleanup import staged_run, sweep_dead_runs
from tasks.etl import (
    KeyResult,
    list_active_keys,
    load_key,
    load_unit,
    plan_work_units,
    prepare_target,
    remove_inactive_keys,
    retry_keys,
    stage_key,
    stage_unit,
)
from tasks.resources import Resources, resources_for
from tasks.transforms.keys import CampaignKey
from tasks.transforms.sql import TableSpec
from tasks.transforms.staging import StagedKey

T = TypeVar("T")

PAUSED = "The etl flows are paused: nothing started (`keyflow resume etl` switches them back on)"


@plain_parameters
@flow(
    name="rds-to-redshift",
    task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
    validate_parameters=True,
)
@ends_failed_on_errors
def rds_to_redshift(
    dataset: str = "campaign_facts", run_date: date | None = None, profile: str = "local"
) -> State[Any]:
    """Load every key of ``dataset`` active on ``run_date`` (today, UTC, by default), in parallel work units.

    Many small keys share a unit (one extraction, one staged object set, one load); a large key has its own. Each
    key is replaced atomically in the warehouse and reconciled; a failed key keeps its previous rows and fails the
    run after the other keys have loaded (a failed shared unit's keys are retried one by one first).
    """
    logger = get_run_logger()
    prof, ds = load_profile(profile), load_dataset(dataset)
    day = run_date or datetime.now(UTC).date()
    if refused := refuse_if_paused("etl", data=[], warning=PAUSED):
        return refused
    run_id = _run_id(day)
    logger.info("Run %s: dataset %s, run date %s, profile %s", run_id, ds.name, day, prof.name)

    resources = resources_for(prof)
    if refused := refuse_if_misconfigured(ds, resources):
        return refused
    spec = prepare_target.with_options(**ride_out(resources))(ds, resources)
    sweep_dead_runs(resources, ds.name)  # what killed runs of this dataset left (stale leases), before staging
    keys = list_active_keys(ds.name, day, resources)
    if not keys:
        logger.info("Nothing to do: no key of %s is active on %s", ds.name, day)
        return Completed(message="nothing to do", data=[])
    with staged_run(resources, ds.name, run_id):  # a lease while it runs; SIGINT/SIGTERM remove what it staged
        results = _load_keys(keys, ds, resources, spec, run_id, day)
    if ds.target.load_mode == "replace_table" and all(r.status == "loaded" for r in results):
        keep = quote([k.key for k in keys])  # called in the flow's thread: quote() is unwrapped by Prefect
        remove_inactive_keys.with_options(**ride_out(resources))(resources, spec, keep)  # type: ignore[call-overload]
    _publish_summary(ds.name, day, run_id, results)
    return _final_state(results)


def _run_id(run_date: date) -> str:
    run = str(flow_run.get_id() or "local")[:8]
    return f"{run_date.isoformat()}-{datetime.now(UTC):%H%M%S}-{run}"


def _load_keys(
    keys: list[CampaignKey],
    ds: DatasetConfig,
    resources: Resources,
    spec: TableSpec,
    run_id: str,
    day: date,
    dates: dict[str, list[date]] | None = None,
) -> list[KeyResult]:
    """Stage then load every work unit in parallel; each key's result in key order, a failed key's included.

    A key on its own is staged and loaded as it always was (``stage-K1``, ``load-K1``); many small keys share a
    unit (``stage-K0001..K0250 (250 keys)``), and a shared unit that fails has its keys retried one by one. A
    backfill's ``dates`` (key → the dates it is loaded for) make every unit record its keys for those dates.
    """
    retries = ride_out(resources)
    # quote(): thousands of keys are one opaque value to Prefect, not thousands of inputs to walk (about 0.2 ms a
    # key for each task that receives them).
    units = plan_work_units.with_options(**retries)(quote(keys), ds, resources, quote(dates))  # type: ignore[call-overload]  # quote() is unwrapped by Prefect
    alone = [u.keys[0] for u in units if not u.counted]
    alone_rows = [u.expected_rows for u in units if not u.counted]  # the planner's counts (None: not counted)
    shared = [u for u in units if u.counted]
    # The target's spec (one entry per column: 600 of them here) and the dataset would be walked by Prefect for every
    # task that receives them, twice (its inputs recorded, then resolved): ~27 ms a task for 600 columns.
    ds_, spec_ = opaque(ds), opaque(spec)
    # Everything is submitted before anything is awaited: single keys and shared units run side by side.
    staged = stage_key.with_options(**retries).map(
        alone, unmapped(ds_), unmapped(resources), unmapped(spec_), unmapped(run_id), unmapped(day), alone_rows
    )
    # A load's retry loads the files its key staged: a fault on the warehouse side never extracts the key again.
    loaded = load_key.with_options(**retries).map(staged, unmapped(ds_), unmapped(resources), unmapped(spec_))
    unit_staged = stage_unit.with_options(**retries).map(
        opaque(shared), unmapped(ds_), unmapped(resources), unmapped(spec_), unmapped(run_id), unmapped(day)
    )
    unit_loaded = load_unit.with_options(**retries).map(
        unit_staged, unmapped(ds_), unmapped(resources), unmapped(spec_)
    )
    by_key = {r.key: r for r in gather(list(zip(alone, staged, strict=True)), loaded, _branch_failure)}
    retried: list[PrefectFuture[list[KeyResult]]] = []
    for unit, stage, load in zip(shared, unit_staged, unit_loaded, strict=True):
        if settled(load).is_completed():
            by_key.update((r.key, r) for r in load.result())
            continue
        state = stage.state if not settled(stage).is_completed() else load.state
        failure = _failure(unit.label, state)
        if failure.status == "paused" or not unit.shared:  # paused, or a key alone already: nothing to retry
            label = unit.label if unit.shared else ""
            rows = [KeyResult(key=k, status=failure.status, error=failure.error, unit=label) for k in unit.names]
            by_key.update((r.key, r) for r in rows)
            continue
        retried.append(retry_keys.submit(opaque(unit), ds_, resources, spec_, run_id, day, failure.error))
    for future in retried:
        by_key.update((r.key, r) for r in future.result())
    return [by_key[k.key] for k in keys]


def opaque(value: T) -> T:
    """``quote(value)`` for a task submitted to threads; ``value`` itself for Dask.

    Prefect walks every task input (about 0.1 ms per key of a unit); ``quote`` stops it, but Dask rebuilds the
    quote (a named tuple) as a plain tuple on its way to a worker, so there the unit is passed as it is.
    """
    context = FlowRunContext.get()
    if context is not None and isinstance(context.task_runner, ThreadPoolTaskRunner):
        return cast(T, quote(value))
    return value


def _branch_failure(branch: tuple[CampaignKey, PrefectFuture[StagedKey]], load: State[Any]) -> KeyResult:
    """The row of a key whose branch failed: at its stage, or at its load (with the counts it staged)."""
    key, stage = branch
    if not settled(stage).is_completed():
        return _failure(key.key, stage.state)
    s = stage.result()
    return KeyResult(
        **{**_failure(key.key, load).as_row(), "rows_extracted": s.rows_extracted, "rows_staged": s.rows_staged}
    )


def _failure(key: str, state: State[Any]) -> KeyResult:
    exc = state.result(raise_on_failure=False)
    message = str(exc) if isinstance(exc, BaseException) else (state.message or state.name or "failed")
    status = "paused" if isinstance(exc, PausedError) else "failed"
    return KeyResult(key=key, status=status, error=first_line(message, default=status))


def _publish_summary(dataset: str, day: date, run_id: str, results: list[KeyResult]) -> None:
    """The run's table artifact; a Prefect API that cannot take it is a warning, never a failed run."""
    loaded = sum(r.status not in ("failed", "paused") for r in results)
    try:
        create_table_artifact(
            key=artifact_key(dataset, "run-summary"),
            table=[r.as_row() for r in results],
            description=f"{dataset} on {day}: {loaded} of {len(results)} key(s) loaded (run {run_id})",
        )
    except Exception as exc:  # the keys are committed: an orchestrator outage must not fail them now
        get_run_logger().warning("Run summary artifact not saved (the per-key results are in the run's data): %s", exc)


def _final_state(results: list[KeyResult]) -> State[Any]:
    """Failed when a key failed (each failure logged), else Cancelled when a key was paused, else Completed."""
    failed = [r for r in results if r.status == "failed"]
    paused = [r for r in results if r.status == "paused"]
    for r in failed:
        get_run_logger().error("Key %r failed: %s", r.key, r.error)
    n = len(results)
    return final_state(
        [r.as_row() for r in results],
        done=f"{n} key(s) loaded",
        failed=f"{len(failed)} of {n} key(s) failed: {', '.join(r.key for r in failed)}" if failed else None,
        paused=f"paused: {len(paused)} of {n} key(s) not started" if paused else None,
    )


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
    return plain_parameters(rds_to_redshift.with_options(task_runner=runner))  # type: ignore[arg-type]
