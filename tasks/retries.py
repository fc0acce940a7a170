"""The retry condition every I/O task of every flow family shares, and the named retry presets the tasks use.

A preset is a dict of ``@task`` options: ``@task(name="load_key", **KEY_IO)``. Each retry waits the next delay
(seconds); only errors that can succeed on retry (:class:`~config.errors.RetryableError`) are retried.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from config.errors import RetryableError


def retry_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what can succeed on retry (throttling, connection trouble), never bad data or config."""
    try:
        state.result()
    except RetryableError:
        return True
    except Exception:
        return False
    return False


def retrying(*delays: float, jitter: float | None = None) -> dict[str, Any]:
    """``@task`` options: one retry per delay in ``delays`` (seconds), transient errors only, optional jitter."""
    options: dict[str, Any] = {
        "retries": len(delays),
        "retry_delay_seconds": list(delays),
        "retry_condition_fn": retry_transient,
    }
    if jitter is not None:
        options["retry_jitter_factor"] = jitter
    return options


SETUP_IO = retrying(2, 8)
"""One short call that creates, lists or records something (a table, the landing files, a watermark)."""

LISTING_IO = retrying(1, 4, 10)
"""Reading the run's work list (the active keys): soon, then a little later."""

BATCH_IO = retrying(2, 10)
"""One unit of work (a landing file, an hour of windows, a scoring pass)."""

KEY_IO = retrying(2, 10, jitter=0.5)
"""One key of the ETL; many run at once, so the jitter spreads their retries."""

DRAIN_IO = retrying(2, 10, 30)
"""A broker drain: a broker that restarts may need half a minute."""
