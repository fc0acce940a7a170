"""Retries happen for transient errors only: a throttled call is tried again, bad data is not."""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.states import State

from config.errors import ConfigError, KeyFailedError, RetryableError
from tasks.retries import RetryTransient, retry_transient, retrying

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
    ("name", "delays", "jitter", "deadline"),
    [
        ("tasks.etl:prepare_target", [2, 8], None, 120),
        ("tasks.etl:list_active_keys", [1, 4, 10], None, 120),
        ("tasks.etl:stage_key", [2, 10], 0.5, 900),
        ("tasks.etl:load_key", [2, 10], 0.5, 900),
        ("tasks.etl:remove_inactive_keys", [2, 8], None, 120),
        ("tasks.ingest:drain_events", [2, 10, 30], None, 300),
        ("tasks.ingest_files:prepare_file_target", [2, 8], None, 120),
        ("tasks.ingest_files:list_landing_files", [2, 8], None, 120),
        ("tasks.ingest_files:ingest_file", [2, 10], None, 900),
        ("tasks.trends:plan_windows", [2, 8], None, 120),
        ("tasks.trends:count_windows", [2, 10], None, 900),
        ("tasks.trends:score_trends", [2, 10], None, 900),
        ("tasks.trends:advance_watermark", [2, 8], None, 120),
    ],
)
def test_each_io_task_retries_transient_errors_with_its_own_delays(
    name: str, delays: list[float], jitter: float | None, deadline: float
) -> None:
    """One retry per delay, within a total deadline; Prefect's count is one more, so the condition has the last
    word and a task that gives up logs no "Retries are exhausted" traceback."""
    module, attr = name.split(":")
    t = getattr(importlib.import_module(module), attr)
    assert _numbers(t) == (len(delays) + 1, delays, jitter, RetryTransient(delays, deadline))


@pytest.fixture()
def prefect_log() -> Any:
    """Every record Prefect logs during the test (its loggers do not propagate to pytest's)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.exc_info]


def raised(flow_state: State[Any]) -> Any:
    """The error of the task whose state a flow returned."""
    inner = flow_state.result(raise_on_failure=False)
    return inner.result(raise_on_failure=False) if isinstance(inner, State) else inner


def attempts(flow_state: State[Any]) -> int:
    """How many times the task whose state a flow returned ran (from the Prefect API)."""
    from prefect.client.orchestration import get_client

    inner = flow_state.result(raise_on_failure=False)
    with get_client(sync_client=True) as client:
        return int(client.read_task_run(inner.state_details.task_run_id).run_count)


def test_a_transient_error_is_retried_only_within_the_deadline(prefect_log: list[logging.LogRecord]) -> None:
    starts: list[float] = []

    @task(**retrying(1, 1, 1, 1, deadline=2.5))
    def down() -> None:
        starts.append(time.monotonic())
        raise RetryableError("connect to source (u@db:5432/x): Connection refused")

    @flow
    def run() -> State[Any]:
        return down(return_state=True)

    state = run(return_state=True)
    assert state.is_failed() and isinstance(raised(state), RetryableError)
    # after 1 s and 2 s a retry still starts before 2.5 s; the next would start at 3 s: it does not
    assert len(starts) == 3
    assert not tracebacks(prefect_log)  # gave up with its one line, no "Retries are exhausted" traceback


def test_every_delay_is_used_and_the_last_failure_has_no_traceback(prefect_log: list[logging.LogRecord]) -> None:
    calls = {"n": 0}

    @task(**retrying(0, 0))
    def flaky() -> None:
        calls["n"] += 1
        raise RetryableError("ThrottlingException: slow down")

    @flow
    def run() -> State[Any]:
        return flaky(return_state=True)

    assert run(return_state=True).is_failed() and calls["n"] == 3
    assert not tracebacks(prefect_log)


def test_a_permanent_error_is_not_retried(prefect_log: list[logging.LogRecord]) -> None:
    calls = {"n": 0}

    @task(**retrying(0, 0))
    def wrong_password() -> None:
        calls["n"] += 1
        raise ConfigError("connect to source (u@db:3306/x): Access denied for user 'u' (error 1045)")

    @flow
    def run() -> State[Any]:
        return wrong_password(return_state=True)

    assert run(return_state=True).is_failed() and calls["n"] == 1
    assert not tracebacks(prefect_log)


def test_a_drain_gives_up_within_its_max_seconds(
    tmp_path: Path, names: dict[str, str], make_profile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that refuses connections is retried only while ``--max-seconds`` allows (it was 2 + 10 + 30 s)."""
    from config.loader import load_events, load_profile
    from tasks.ingest import drain_events
    from tasks.resources import resources_for
    from tasks.retries import DRAIN_IO, within
    from tests.helpers.config_files import write_yaml

    profile = load_profile(make_profile(), environ={})

    def job(url: str) -> Any:
        path = write_yaml(
            tmp_path / "events" / "job.yaml",
            {
                "name": "pytest_events",
                "source": {"kind": "rabbitmq", "url": url, "queue": names["keys_table"], "dead_letter_queue": "d"},
                "reference": {"table": names["keys_table"] + "_articles"},
                "events_table": names["keys_table"] + "_events",
            },
        )
        return load_events(path)

    @flow
    def drain_flow(url: str, seconds: float) -> State[Any]:
        return drain_events.with_options(**within(DRAIN_IO, seconds))(
            job(url), resources_for(profile), 10, seconds, return_state=True
        )

    def drain(url: str, seconds: float) -> State[Any]:
        return drain_flow(url, seconds, return_state=True)

    down = drain("amqp://guest@127.0.0.1:1/%2F", 5)
    assert isinstance(raised(down), RetryableError)
    assert attempts(down) == 2  # one retry after 2 s; the next (10 s) would pass the 5 s
    monkeypatch.setenv("KEYFLOW_BROKER_PASSWORD", "wrong")
    refused = drain("amqp://guest@127.0.0.1:5672/%2F", 5)
    assert attempts(refused) == 1  # a refused login is not retried
    assert str(raised(refused)).endswith("ACCESS_REFUSED: the broker refused the user name or password")


def test_the_etl_backoff_doubles_up_to_30_s_within_the_profile_window() -> None:
    """Issue 18: a 60-120 s failover is ridden out by the default window of 180 s; a window of 0 retries nothing."""
    from tasks.retries import RetryTransient, backoff_delays, backoff_within

    assert backoff_delays(180, 2) == [2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert backoff_delays(60, 0.5) == [0.5, 1, 2, 4, 8, 16, 30]
    assert backoff_delays(0, 2) == []
    options = backoff_within(180, 2)
    assert options["retry_condition_fn"] == RetryTransient([2, 4, 8, 16, 30, 30, 30, 30, 30], 180, True)
    assert options["retry_jitter_factor"] == 0.5


def test_the_window_counts_from_the_first_failure_not_the_start() -> None:
    """A key that staged longer than the window before a failover still gets the whole window to ride it out."""
    from tasks.retries import backoff_within

    calls = {"n": 0}

    @task(**backoff_within(0.5, 0.1))
    def long_then_flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(1.0)  # longer than the window, then the connection drops
            raise RetryableError("connect to source (u@db:5432/x): server closed the connection unexpectedly")
        return "loaded"

    @task(**retrying(0.1, deadline=0.5))
    def from_start() -> str:
        time.sleep(1.0)
        raise RetryableError("connect to source (u@db:5432/x): server closed the connection unexpectedly")

    @flow
    def run() -> tuple[State[Any], State[Any]]:
        return long_then_flaky(return_state=True), from_start(return_state=True)

    windowed, started = run()
    assert windowed.is_completed() and windowed.result() == "loaded" and calls["n"] == 2
    assert started.is_failed()  # a deadline counted from the start (--max-seconds) is past: no retry
