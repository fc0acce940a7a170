"""Backfill: load every date of a range, skipping (key, date) loads already in the ledger.

Where keys can share work units (a table source, a warehouse that loads units, not ``replace_table``), the whole
range is ONE run (:func:`rds_to_redshift_backfill`): each key pending on some date is extracted and loaded once —
its rows are its rows within its own window, whatever the run date — and its ledger gets a row for each of those
dates in the same transaction. Otherwise every date is its own ``rds_to_redshift`` run, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner

from config.errors import ConfigError, RunFailedError
from config.loader import load_dataset, load_profile
from config.models import DatasetConfig
from flows.common import (
    ends_failed_on_errors,
    final_state,
    plain_parameters,
    refuse_if_misconfigured,
    refuse_if_paused,
    ride_out,
)
from flows.local_server import watch
from flows.rds_to_redshift import PAUSED, _load_keys, _publish_summary, _run_id, for_profile
from tasks.cleanup import staged_run, sweep_dead_runs
from tasks.etl import KeyResult, pending_keys, plan_backfill_dates, prepare_target, why_not_in_units
from tasks.preflight import problems_before_run
from tasks.resources import Resources, resources_for


@dataclass(frozen=True)
class DateResult:
    """What happened to one date of a backfill."""

    run_date: date
    status: str  # loaded | skipped | failed | paused | nothing
    keys: int
    message: str


def dates_between(start: date, end: date) -> list[date]:
    """Every date from ``start`` to ``end``, both included."""
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def backfill(
    dataset: str,
    start: date,
    end: date,
    profile: str = "local",
    force: bool = False,
    parallel: int = 1,
    on_done: Callable[[DateResult], None] | None = None,
    preflight: bool = True,
) -> list[DateResult]:
    """Load each date's active keys; a date whose keys all have a ledger row is skipped unless ``force``.

    Every problem of the configuration is raised (:class:`ConfigError`) before any date starts, unless the caller
    checked already (``preflight=False``; each date's run checks again anyway).

    The ledger row of a key is committed with its rows, so an interrupted backfill resumes where it stopped.
    """
    ds, prof = load_dataset(dataset), load_profile(profile)
    problems = problems_before_run(ds, prof) if preflight else []
    if problems:
        raise ConfigError(problems)
    resources = resources_for(prof)
    days = dates_between(start, end)
    if one_run_backfill(ds, resources):
        return _backfill_in_one_run(dataset, days, profile, force, on_done)
    flow = for_profile(profile)

    def one(day: date) -> DateResult:
        active, pending = pending_keys(ds, resources, day)
        if not active:
            result = DateResult(day, "nothing", 0, "no key active")
        elif not pending and not force:
            result = DateResult(day, "skipped", len(active), "already loaded and reconciled")
        else:
            state = flow(dataset=dataset, run_date=day, profile=profile, return_state=True)
            watch(state.state_details.flow_run_id)
            status = "loaded" if state.is_completed() else "paused" if state.is_cancelled() else "failed"
            result = DateResult(day, status, len(active), state.message or "")
        if on_done:
            on_done(result)
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, 8)))
    try:
        results = list(pool.map(one, days))
    except Exception:
        pool.shutdown()
        raise
    except BaseException:  # interrupted: no date starts any more, and the command does not wait for the others
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def one_run_backfill(ds: DatasetConfig, resources: Resources) -> bool:
    """Whether a backfill of ``ds`` runs as one run of work units (see the module's docstring)."""
    return ds.target.load_mode != "replace_table" and why_not_in_units(ds, resources) is None


def _backfill_in_one_run(
    dataset: str, days: list[date], profile: str, force: bool, on_done: Callable[[DateResult], None] | None
) -> list[DateResult]:
    """Run :func:`rds_to_redshift_backfill` over ``days``; one result per date."""
    run = rds_to_redshift_backfill
    prof = load_profile(profile)
    if prof.task_runner == "dask":
        run = plain_parameters(run.with_options(task_runner=for_profile(profile).task_runner))
    state = run(dataset=dataset, start=days[0], end=days[-1], profile=profile, force=force, return_state=True)
    watch(state.state_details.flow_run_id)
    data = state.result(raise_on_failure=False)
    rows = data.data if isinstance(data, RunFailedError) else data
    if not (isinstance(rows, list) and rows and isinstance(rows[0], dict)):  # refused before any date ran
        status = "paused" if state.is_cancelled() else "failed"
        rows = [{"run_date": d.isoformat(), "status": status, "keys": 0, "message": state.message or ""} for d in days]
    results = [DateResult(date.fromisoformat(r["run_date"]), r["status"], r["keys"], r["message"]) for r in rows]
    for r in results:
        if on_done:
            on_done(r)
    return results


@plain_parameters
@flow(
    name="rds-to-redshift-backfill",
    task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
    validate_parameters=True,
)
@ends_failed_on_errors
def rds_to_redshift_backfill(
    dataset: str, start: date, end: date, profile: str = "local", force: bool = False
) -> State[Any]:
    """Load every date from ``start`` to ``end`` in one run: each pending key once, recorded for each of its dates.

    The keys are listed once and the ledger read once for the range; a (key, date) with a ledger row is skipped
    unless ``force``. The run's data is one row per date (``run_date``, ``status``, ``keys``, ``message``).
    """
    logger = get_run_logger()
    prof, ds = load_profile(profile), load_dataset(dataset)
    days = dates_between(start, end)
    if refused := refuse_if_paused("etl", data=[], warning=PAUSED):
        return refused
    run_id = _run_id(end)
    logger.info("Backfill %s: dataset %s, %s → %s, profile %s", run_id, ds.name, start, end, prof.name)
    resources = resources_for(prof)
    if refused := refuse_if_misconfigured(ds, resources):
        return refused
    spec = prepare_target.with_options(**ride_out(resources))(ds, resources)
    sweep_dead_runs(resources, ds.name)  # what killed runs of this dataset left (stale leases), before staging
    plan = plan_backfill_dates(ds, resources, days, force)
    results: list[KeyResult] = []
    if plan.keys:
        with staged_run(resources, ds.name, run_id):
            results = _load_keys(plan.keys, ds, resources, spec, run_id, end, plan.dates)
        _publish_summary(ds.name, end, run_id, results)
    by_key = {r.key: r for r in results}
    rows = []
    for day in days:
        iso = day.isoformat()
        active, pending = plan.active[iso], plan.pending[iso]
        failed = [k for k in pending if by_key[k].status == "failed"]
        paused = [k for k in pending if by_key[k].status == "paused"]
        if not active:
            row = (iso, "nothing", 0, "no key active")
        elif not pending:
            row = (iso, "skipped", len(active), "already loaded and reconciled")
        elif failed:
            row = (iso, "failed", len(active), f"{len(failed)} of {len(pending)} key(s) failed: {', '.join(failed)}")
        elif paused:
            row = (iso, "paused", len(active), f"paused: {len(paused)} of {len(pending)} key(s) not started")
        else:
            row = (iso, "loaded", len(active), f"{len(pending)} key(s) loaded")
        rows.append(dict(zip(("run_date", "status", "keys", "message"), row, strict=True)))
    for r in results:
        if r.status == "failed":
            logger.error("Key %r failed: %s", r.key, r.error)
    failed_days = [r["run_date"] for r in rows if r["status"] == "failed"]
    paused_days = [r["run_date"] for r in rows if r["status"] == "paused"]
    loaded = sum(r.status == "loaded" for r in results)
    if not plan.keys:
        return Completed(message=f"nothing to do over {len(days)} date(s)", data=rows)
    return final_state(
        rows,
        done=f"{loaded} key(s) loaded for {sum(r['status'] == 'loaded' for r in rows)} date(s)",
        failed=f"{len(failed_days)} of {len(days)} date(s) failed" if failed_days else None,
        paused=f"paused: {len(paused_days)} date(s) not loaded" if paused_days else None,
    )
