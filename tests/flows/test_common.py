"""The flows' shared steps, without Prefect: gather mapped branches, the final state, artifact keys."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.states import Completed, Failed

from config.errors import RunFailedError
from flows.common import artifact_key, final_state, gather


class FakeFuture:
    """A settled future: ``wait`` counts calls, ``state`` and ``result`` answer like Prefect's."""

    def __init__(self, state: Any, value: Any = None) -> None:
        self.state = state
        self.value = value
        self.waited = 0

    def wait(self) -> None:
        self.waited += 1

    def result(self) -> Any:
        assert self.state.is_completed()
        return self.value


def test_gather_keeps_order_and_turns_failures_into_rows() -> None:
    futures = [
        FakeFuture(Completed(), "a-done"),
        FakeFuture(Failed(message="boom\nsecond line")),
        FakeFuture(Completed(), "c-done"),
    ]
    seen: list[tuple[str, str | None]] = []

    def on_failure(item: str, state: Any) -> str:
        seen.append((item, state.message))
        return f"{item}-failed"

    assert gather(["a", "b", "c"], futures, on_failure) == ["a-done", "b-failed", "c-done"]  # type: ignore[arg-type]
    assert seen == [("b", "boom\nsecond line")]
    assert [f.waited for f in futures] == [1, 1, 1]


def test_gather_refuses_items_and_futures_that_do_not_pair() -> None:
    with pytest.raises(ValueError, match="2 item\\(s\\) but 1 future\\(s\\)"):
        gather(["a", "b"], [FakeFuture(Completed(), 1)], lambda item, state: 0)  # type: ignore[list-item]


def test_final_state_failed_wins_then_paused_then_completed() -> None:
    rows = [{"key": "K1"}]
    failed = final_state(rows, done="1 loaded", failed="1 of 1 key(s) failed: K1", paused="paused: 1 of 1")
    assert failed.is_failed() and failed.message == "1 of 1 key(s) failed: K1"
    # Prefect resolves a Failed state into an exception (a deployment run raises it): the rows travel inside.
    with pytest.raises(RunFailedError, match=r"^1 of 1 key\(s\) failed: K1$") as raised:
        failed.result()
    assert raised.value.data == rows
    paused = final_state(rows, done="1 loaded", paused="paused: 1 of 1 key(s) not started")
    assert paused.is_cancelled() and paused.message == "paused: 1 of 1 key(s) not started"
    done = final_state(rows, done="1 key(s) loaded", failed=None, paused=None)
    assert done.is_completed() and done.message == "1 key(s) loaded"
    assert done.result() == rows


@pytest.mark.parametrize(
    ("name", "kind", "key"),
    [
        ("campaign_facts", "run-summary", "campaign-facts-run-summary"),
        ("Campaign_Facts_Files", "files", "campaign-facts-files-files"),
        ("activity", "drain", "activity-drain"),
        ("trending", "top-articles", "trending-top-articles"),
    ],
)
def test_artifact_keys_are_lower_case_with_dashes(name: str, kind: str, key: str) -> None:
    assert artifact_key(name, kind) == key
