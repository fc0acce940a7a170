"""Backfill: run ``rds_to_redshift`` for every date of a range, skipping dates already loaded and reconciled."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta

from config.errors import ConfigError
from config.loader import load_dataset, load_profile
from flows.local_server import watch
from flows.rds_to_redshift import for_profile
from tasks.etl import pending_keys
from tasks.preflight import problems_before_run
from tasks.resources import resources_for


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

    days = dates_between(start, end)
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
