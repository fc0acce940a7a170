"""Retries happen for transient errors only: a throttled call is tried again, bad data is not."""

from __future__ import annotations

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
