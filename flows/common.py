"""Steps every flow shares: refuse to start while paused, gather mapped branches, end in one state, name artifacts."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Completed, Failed, State

from tasks.control import is_paused

T = TypeVar("T")
R = TypeVar("R")


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
    """Failed with message ``failed`` when given, else Cancelled with ``paused`` when given, else Completed."""
    if failed:
        return Failed(message=failed, data=data)
    if paused:
        return Cancelled(message=paused, data=data)
    return Completed(message=done, data=data)


def artifact_key(name: str, kind: str) -> str:
    """The key of a flow's ``kind`` of artifact for ``name``, in the only characters Prefect allows in a key.

    Lower case and dashes: ``campaign_facts`` → ``campaign-facts-run-summary``.
    """
    return re.sub(r"[^a-z0-9-]", "-", f"{name}-{kind}".lower())
