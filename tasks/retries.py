"""The retry condition every I/O task of every flow family shares."""

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
