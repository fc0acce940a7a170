"""Event parsing, ids and the reference cache: exact reasons for bad messages, deterministic ids, TTL and LRU."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.transforms.events import Event, Message, Rejected, TTLCache, check_reference, derive_id, parse_event

T0 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)


def msg(body: object, **kw: object) -> Message:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(raw, T0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON: "),
        (b"{", "not JSON: Expecting property name enclosed in double quotes"),
        ([1, 2], "not a JSON object: list"),
        ({"article_id": "a"}, "missing field(s): user_id, action"),
        ({"article_id": "a", "user_id": "u", "action": "like"}, "unknown action 'like' (known: click, impression)"),
        ({"article_id": "a", "user_id": True, "action": "click"}, "'user_id' must be a string, got bool"),
        ({"article_id": {"x": 1}, "user_id": "u", "action": "click"}, "'article_id' must be a string, got dict"),
        ({"article_id": "a", "user_id": "u", "action": "click", "ts": "yesterday"}, "bad 'ts': "),
        ({"article_id": "a", "user_id": "u", "action": "click", "ts": [1]}, "bad 'ts': 'ts' must be an ISO 8601"),
        (b"x" * 70_000, "message is 70000 bytes; at most 65536"),
        ({"article_id": "a", "user_id": "u", "action": "click", "ts": "1969-12-31T23:59:59Z"}, "bad 'ts': 1969-12-31"),
    ],
)
def test_bad_messages_say_why(body: object, reason: str) -> None:
    out = parse_event(msg(body))
    assert isinstance(out, Rejected) and out.reason.startswith(reason)
    assert out.as_json()["reason"] == out.reason


def test_three_field_form_gets_arrival_time_and_a_stable_id() -> None:
    body = {"article_id": "a1", "user_id": 42, "action": "click"}
    first = parse_event(msg(body, source_id="m-1"))
    again = parse_event(Message(json.dumps(body).encode(), T0 + dt.timedelta(seconds=9), source_id="m-1"))
    assert isinstance(first, Event) and isinstance(again, Event)
    assert first.event_id == again.event_id and first.event_id.startswith("kf-")
    assert first.ts == T0 and first.user_id == "42"
    other = parse_event(msg(body, source_id="m-2"))
    assert isinstance(other, Event) and other.event_id != first.event_id
    # No broker id: the bytes and the producer's timestamp, never our clock.
    a, b = msg(body, sent_at=T0), Message(json.dumps(body).encode(), T0 + dt.timedelta(hours=1), sent_at=T0)
    assert derive_id(a) == derive_id(b)
    full = parse_event(msg({**body, "event_id": "e9", "ts": "2026-11-27T09:00:00Z"}))
    assert isinstance(full, Event) and full.event_id == "e9" and full.ts == T0 - dt.timedelta(hours=1)


def test_reference_check_names_unknown_and_retired_articles() -> None:
    events = [parse_event(msg({"article_id": a, "user_id": "u", "action": "click"}, source_id=a)) for a in "xyz"]
    good, bad = check_reference([e for e in events if isinstance(e, Event)], {"x": True, "y": False})
    assert [e.article_id for e in good] == ["x"]
    assert [r for _, r in bad] == ["article 'y' is not live", "unknown article 'z'"]


def test_cache_expires_and_evicts_least_recently_used() -> None:
    now = [0.0]
    cache = TTLCache(ttl_seconds=10, max_entries=2, clock=lambda: now[0])
    cache.put_many({"a": True, "b": False})
    assert cache.get_many(["a", "b", "c"]) == ({"a": True, "b": False}, ["c"])
    cache.get_many(["a"])  # a is now the most recent
    cache.put_many({"c": True})
    assert cache.get_many(["a", "b", "c"])[1] == ["b"]  # b was evicted
    now[0] = 11
    assert cache.get_many(["a", "c"]) == ({}, ["a", "c"])  # expired


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=60), size=st.integers(1, 5))
def test_cache_never_exceeds_its_size_and_returns_what_was_put(ops: list, size: int) -> None:
    cache = TTLCache(ttl_seconds=100, max_entries=size, clock=lambda: 0.0)
    last: dict[str, bool] = {}
    for key, value in ops:
        cache.put_many({key: value})
        last[key] = value
        assert len(cache) <= size
        found, _ = cache.get_many([key])
        assert found == {key: value}
    found, _ = cache.get_many(last)
    assert all(last[k] == v for k, v in found.items())


def test_cache_is_safe_across_threads() -> None:
    cache = TTLCache(ttl_seconds=100, max_entries=500)

    def work(n: int) -> None:
        for i in range(2000):
            cache.put_many({f"k{(i * n) % 900}": True})
            cache.get_many([f"k{i % 900}"])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) <= 500 and cache.hits + cache.misses == 8000
