"""The retry condition every I/O task of every flow family shares, and the named retry presets the tasks use.

A preset is a dict of ``@task`` options: ``@task(name="load_key", **KEY_IO)``. Each retry waits the next delay
(seconds); only errors that can succeed on retry (:class:`~config.errors.RetryableError`: throttling, connection
trouble) are retried, and only while the task's total time stays within the preset's deadline. A permanent error
(a :class:`~config.errors.ConfigError` such as a wrong password, or a failed key) is never retried.

The condition, not Prefect's retry count, decides when to stop: a preset allows one retry more than it has delays,
and :class:`RetryTransient` refuses that last one. So a task that gives up ends Failed with its error's one line,
without the "Retries are exhausted" traceback Prefect logs when its own count runs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from threading import Lock
from typing import Any
from uuid import UUID

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


def _elapsed(task_run: TaskRun, now: datetime | None = None) -> float:
    """Seconds since the task run's first attempt started (0 when Prefect has not recorded it)."""
    if task_run.start_time is None:
        return 0.0
    start = task_run.start_time
    return ((now or datetime.now(UTC)) - (start if start.tzinfo else start.replace(tzinfo=UTC))).total_seconds()


_first_failures: dict[UUID, datetime] = {}
_first_failures_lock = Lock()


def _since_first_failure(task_run: TaskRun, now: datetime | None = None) -> float:
    """Seconds since this task run first failed transiently (0 at its first failure), as this process saw it."""
    now = now or datetime.now(UTC)
    with _first_failures_lock:
        first = _first_failures.setdefault(task_run.id, now)
    return (now - first).total_seconds()


def forget_failures(task_run_id: UUID) -> None:
    """Drop what :func:`_since_first_failure` remembers of a task run (it ended)."""
    with _first_failures_lock:
        _first_failures.pop(task_run_id, None)


class RetryTransient:
    """A retry condition: a transient error, a delay left for this attempt, and the next start before the deadline.

    Args:
        delays: the wait before each retry, in seconds; attempt ``n`` (1-based) that fails waits ``delays[n-1]``.
        deadline: seconds after which no retry starts (None: no deadline), counted from the first attempt's start,
            or, with ``from_first_failure``, from the first failure: a step that ran for an hour before a failover
            still gets the whole window to ride it out.
        from_first_failure: where the deadline counts from (see ``deadline``).
    """

    def __init__(
        self, delays: Sequence[float], deadline: float | None = None, from_first_failure: bool = False
    ) -> None:
        self.delays = tuple(delays)
        self.deadline = deadline
        self.from_first_failure = from_first_failure

    def _key(self) -> tuple[tuple[float, ...], float | None, bool]:
        return self.delays, self.deadline, self.from_first_failure

    def __repr__(self) -> str:
        since = ", from_first_failure=True" if self.from_first_failure else ""
        return f"RetryTransient(delays={list(self.delays)}, deadline={self.deadline}{since})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryTransient) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __call__(self, task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
        """Whether Prefect should run the task again."""
        if not retry_transient(task, task_run, state):
            return False
        attempt = max(task_run.run_count, 1)
        if attempt > len(self.delays):
            forget_failures(task_run.id)
            return False
        if self.deadline is None:
            return True
        elapsed = _since_first_failure(task_run) if self.from_first_failure else _elapsed(task_run)
        if elapsed + self.delays[attempt - 1] <= self.deadline:
            return True
        forget_failures(task_run.id)
        return False


def retrying(
    *delays: float, jitter: float | None = None, deadline: float | None = None, from_first_failure: bool = False
) -> dict[str, Any]:
    """``@task`` options: one retry per delay in ``delays`` (seconds), transient errors only.

    No retry starts later than ``deadline`` seconds after the first attempt (after the first failure, with
    ``from_first_failure``); ``jitter`` spreads the delays.
    """
    options: dict[str, Any] = {
        "retries": len(delays) + 1,  # the condition refuses the last: see the module docstring
        "retry_delay_seconds": list(delays),
        "retry_condition_fn": RetryTransient(delays, deadline, from_first_failure),
    }
    if jitter is not None:
        options["retry_jitter_factor"] = jitter
    return options


def within(preset: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The ``preset`` with its deadline cut to ``seconds`` (a drain that must end by ``--max-seconds``)."""
    condition: RetryTransient = preset["retry_condition_fn"]
    deadline = seconds if condition.deadline is None else min(condition.deadline, seconds)
    return {**preset, "retry_condition_fn": RetryTransient(condition.delays, deadline)}  # --max-seconds: from start


MAX_BACKOFF = 30.0
"""The longest wait between two retries of :func:`backoff_within`."""


def backoff_delays(window: float, first: float, cap: float = MAX_BACKOFF) -> list[float]:
    """Exponential waits (``first``, twice that, … at most ``cap``) until they add up to ``window`` seconds.

    ``backoff_delays(180, 2)`` is 2, 4, 8, 16, 30, 30, 30, 30, 30: nine retries over three minutes.
    """
    delays: list[float] = []
    delay = first
    while sum(delays) < window:
        delays.append(min(delay, cap))
        delay *= 2
    return delays


def backoff_within(window: float, first: float, jitter: float = 0.5) -> dict[str, Any]:
    """``@task`` options: transient errors retried with exponential backoff and jitter for up to ``window`` seconds.

    For the I/O steps of every flow (``flows.common.ride_out``): a database failover or restart (60-120 s on RDS
    Multi-AZ) is ridden out within the profile's ``retry_window_seconds``; ``first`` is its ``retry_backoff_seconds``.
    The window counts from the step's first failure, not its start: a key that staged for an hour still gets it.
    """
    return retrying(*backoff_delays(window, first), jitter=jitter, deadline=window, from_first_failure=True)


SETUP_IO = retrying(2, 8, deadline=120)
"""One short call that creates, lists or records something (a table, the landing files, a watermark)."""

LISTING_IO = retrying(1, 4, 10, deadline=120)
"""Reading the run's work list (the active keys): soon, then a little later."""

BATCH_IO = retrying(2, 10, deadline=900)
"""One unit of work (a landing file, an hour of windows, a scoring pass)."""

KEY_IO = retrying(2, 10, jitter=0.5, deadline=900)
"""One key of the ETL; many run at once, so the jitter spreads their retries."""

DRAIN_IO = retrying(2, 10, 30, deadline=300)
"""A broker drain: a broker that restarts may need half a minute (the flow cuts the deadline to ``max_seconds``)."""
