"""Steps every flow shares: refuse to start while paused or misconfigured, ride out connection trouble, one state.

Mapped branches are gathered so one failed branch hides no other; a keyflow error ends a flow in its Failed state
too, without a traceback; artifact keys are named here.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prefect import Flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Completed, Failed, State

from config.errors import ConfigError, KeyflowError, RunFailedError, first_line
from tasks.control import is_paused
from tasks.preflight import Job, check_before_run
from tasks.retries import backoff_within

if TYPE_CHECKING:
    from tasks.resources import Resources

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
F = TypeVar("F", bound=Flow[Any, Any])

PLAIN_TYPES = (str, int, float, bool, type(None))


def plain_parameters(flow: F) -> F:
    """``flow``, its run's parameters recorded with the Prefect API without importing FastAPI when they are plain.

    Prefect turns a flow run's parameters into JSON with FastAPI's ``jsonable_encoder``: FastAPI, Starlette and
    OpenTelemetry's API (69 modules, 5 MB and 0.07 CPU-seconds, BENCHMARKS.md) in a command that serves nothing.
    keyflow's flows take text, numbers, flags and dates: those are encoded as that encoder encodes them (a date as
    its ISO text), so the Prefect UI shows the same parameters; anything else still goes to Prefect's own. Put it
    above ``@flow``, and around a ``with_options`` copy (which is a new flow).
    """
    prefect_own = flow.serialize_parameters

    def serialize(parameters: dict[str, Any]) -> dict[str, Any]:
        if all(type(v) in PLAIN_TYPES or type(v) in (date, datetime) for v in parameters.values()):
            return {k: v.isoformat() if isinstance(v, date) else v for k, v in parameters.items()}
        return prefect_own(parameters)

    flow.serialize_parameters = serialize  # type: ignore[method-assign]
    return flow


def ends_failed_on_errors(body: Callable[P, State[Any]]) -> Callable[P, State[Any]]:
    """A flow body whose keyflow error ends the run Failed, with one log line per problem and no traceback.

    The error (a config problem, a failed step) becomes the Failed state's data, instead of Prefect's traceback.
    Other exceptions (bugs) still raise. Put it under ``@flow``: the flow keeps the body's name, signature and
    parameters.
    """

    @functools.wraps(body)
    def run(*args: P.args, **kwargs: P.kwargs) -> State[Any]:
        try:
            return body(*args, **kwargs)
        except KeyflowError as exc:
            lines = exc.problems if isinstance(exc, ConfigError) else [first_line(exc)]
            logger = get_run_logger()
            for line in lines:
                logger.error("%s", line)
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            return Failed(message=f"{lines[0]}{more}", data=exc)

    # Prefect reads the parameters' types from the signature and resolves names in the function's module: give it
    # the body's signature with its annotations already resolved (this module does not import `date`).
    run.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]
    return run


def ride_out(resources: Resources) -> dict[str, Any]:
    """``@task`` options of a step that talks to a database or AWS: connection trouble retried for the profile's window.

    Exponential backoff from ``retry_backoff_seconds``, with jitter, for up to ``retry_window_seconds`` (a failover
    or a restart is ridden out); only transient errors are retried. Every flow family uses it for its I/O steps.
    """
    prof = resources.profile
    return backoff_within(prof.retry_window_seconds, prof.retry_backoff_seconds)


def refuse_if_misconfigured(job: Job, resources: Resources, within: float | None = None) -> State[Any] | None:
    """The Failed state of a run whose preflight found problems; None when the run may start.

    Each problem is logged, all are in a :class:`ConfigError` as the state's data, nothing is run. Connection
    trouble is checked again while the run's time allows (``within`` seconds, when it has a limit).
    """
    problems = check_before_run(job, resources, within)
    if not problems:
        return None
    logger = get_run_logger()
    for line in problems:
        logger.error("%s", line)
    return Failed(
        message=f"preflight: {len(problems)} problem(s), nothing was run: {problems[0]}", data=ConfigError(problems)
    )


def refuse_if_paused(family: str, data: Any, warning: str | None = None) -> State[Any] | None:
    """The Cancelled state a run of a paused ``family`` ends in (``warning`` logged first); None when it may start."""
    if not is_paused(family):
        return None
    if warning:
        get_run_logger().warning(warning)
    return Cancelled(message=f"paused: the {family} flows are switched off", data=data)


def settled(future: PrefectFuture[Any]) -> State[Any]:
    """The final state of a future, once it has one."""
    future.wait()
    return future.state


def gather(
    items: Sequence[T], futures: Sequence[PrefectFuture[R]], on_failure: Callable[[T, State[Any]], R]
) -> list[R]:
    """Each branch's result, in order: the future's result when it completed, else ``on_failure(item, state)``.

    ``items[i]`` is what branch ``i`` was mapped over; a failed branch never raises here, so one bad branch does
    not hide the others' results.
    """
    if len(items) != len(futures):
        raise ValueError(f"{len(items)} item(s) but {len(futures)} future(s)")
    return [
        future.result() if settled(future).is_completed() else on_failure(item, future.state)
        for item, future in zip(items, futures, strict=True)
    ]


def final_state(data: Any, done: str, failed: str | None = None, paused: str | None = None) -> State[Any]:
    """Failed with message ``failed`` when given, else Cancelled with ``paused`` when given, else Completed.

    A Failed state's data is a :class:`RunFailedError` holding ``data`` (Prefect resolves a failed state into an
    exception: a list there is a ``TypeError`` in a deployment run); the others carry ``data`` itself.
    """
    if failed:
        return Failed(message=failed, data=RunFailedError(failed, data))
    if paused:
        return Cancelled(message=paused, data=data)
    return Completed(message=done, data=data)


def artifact_key(name: str, kind: str) -> str:
    """The key of a flow's ``kind`` of artifact for ``name``, in the only characters Prefect allows in a key.

    Lower case and dashes: ``campaign_facts`` → ``campaign-facts-run-summary``.
    """
    return re.sub(r"[^a-z0-9-]", "-", f"{name}-{kind}".lower())
