"""Retries happen for transient errors only: a throttled call is tried again, bad data is not."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from prefect import flow, task

from config.errors import KeyFailedError, RetryableError
from tasks.retries import retry_transient

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_transient_errors_retry_and_data_errors_do_not() -> None:
    calls = {"transient": 0, "bad": 0}

    @task(retries=3, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def flaky() -> str:
        calls["transient"] += 1
        if calls["transient"] < 3:
            raise RetryableError("ThrottlingException: slow down")
        return "ok"

    @task(retries=3, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def bad_data() -> None:
        calls["bad"] += 1
        raise KeyFailedError("key 'K': rules[0].cast.x: cannot cast")

    @flow
    def both() -> str:
        result = flaky()
        bad_data(return_state=True)
        return result

    assert both() == "ok"
    assert calls == {"transient": 3, "bad": 1}


def _numbers(t: Any) -> tuple[int, list[float], float | None, Any]:
    return t.retries, list(t.retry_delay_seconds), t.retry_jitter_factor, t.retry_condition_fn


@pytest.mark.parametrize(
    ("name", "retries", "delays", "jitter"),
    [
        ("tasks.etl:prepare_target", 2, [2, 8], None),
        ("tasks.etl:list_active_keys", 3, [1, 4, 10], None),
        ("tasks.etl:stage_key", 2, [2, 10], 0.5),
        ("tasks.etl:load_key", 2, [2, 10], 0.5),
        ("tasks.etl:remove_inactive_keys", 2, [2, 8], None),
        ("tasks.ingest:drain_events", 3, [2, 10, 30], None),
        ("tasks.ingest_files:prepare_file_target", 2, [2, 8], None),
        ("tasks.ingest_files:list_landing_files", 2, [2, 8], None),
        ("tasks.ingest_files:ingest_file", 2, [2, 10], None),
        ("tasks.trends:plan_windows", 2, [2, 8], None),
        ("tasks.trends:count_windows", 2, [2, 10], None),
        ("tasks.trends:score_trends", 2, [2, 10], None),
        ("tasks.trends:advance_watermark", 2, [2, 8], None),
    ],
)
def test_each_io_task_retries_transient_errors_with_its_own_delays(
    name: str, retries: int, delays: list[float], jitter: float | None
) -> None:
    module, attr = name.split(":")
    t = getattr(importlib.import_module(module), attr)
    assert _numbers(t) == (retries, delays, jitter, retry_transient)
