"""Trend-scoring core: counts conserved and independent of order and split, idempotent; scores bounded, decaying."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.transforms.trends import (
    EVENT_SCHEMA,
    USER_SCHEMA,
    ScoreParams,
    WindowSpec,
    count_events,
    fit_beta_prior,
    merge_counts,
    recount_range,
    score_articles,
    scored_pairs,
    top_n,
)

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
USERS = pa.table(
    {"user_id": ["u1", "u2", "u3"], "gender": ["f", "m", "f"], "segment_id": ["s1", "s1", "s2"]}, schema=USER_SCHEMA
)

event = st.tuples(
    st.integers(0, 600),  # seconds after T0
    st.sampled_from(["a1", "a2", "a3"]),
    st.sampled_from(["u1", "u2", "u3", "unknown"]),
    st.sampled_from(["click", "impression", "impression", "bogus"]),
    st.one_of(st.none(), st.integers(0, 400)),  # arrival delay in seconds; None: the producer sent none
)


def events(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "ts": [T0 + dt.timedelta(seconds=r[0]) for r in rows],
            "article_id": [r[1] for r in rows],
            "user_id": [r[2] for r in rows],
            "action": [r[3] for r in rows],
            "received_at": [
                None if len(r) < 5 or r[4] is None else T0 + dt.timedelta(seconds=r[0] + r[4]) for r in rows
            ],
        },
        schema=EVENT_SCHEMA,
    )


def test_counts_per_window_and_segment_with_unknown_users() -> None:
    rows = [
        (5, "a1", "u1", "impression"),
        (50, "a1", "u3", "click"),
        (61, "a1", "u1", "impression"),
        (70, "a2", "unknown", "impression"),
        (71, "a2", "u1", "bogus"),
    ]
    result = count_events(events(rows), USERS)
    assert result.invalid_events == 1 and result.late_events == 0
    assert result.counts.to_pylist() == [
        {"window_start": T0, "gender": "f", "segment_id": "s1", "article_id": "a1", "impressions": 1, "clicks": 0},
        {"window_start": T0, "gender": "f", "segment_id": "s2", "article_id": "a1", "impressions": 0, "clicks": 1},
        {
            "window_start": T0 + dt.timedelta(minutes=1),
            "gender": "f",
            "segment_id": "s1",
            "article_id": "a1",
            "impressions": 1,
            "clicks": 0,
        },
        {
            "window_start": T0 + dt.timedelta(minutes=1),
            "gender": None,
            "segment_id": None,
            "article_id": "a2",
            "impressions": 1,
            "clicks": 0,
        },
    ]


def test_a_user_listed_twice_is_counted_once() -> None:
    twice = pa.concat_tables([USERS, pa.table({"user_id": ["u1"], "gender": ["m"], "segment_id": ["s9"]})])
    result = count_events(events([(5, "a1", "u1", "click"), (6, "a1", "u2", "impression")]), twice)
    assert result.counted_events == 2
    assert {(r["gender"], r["segment_id"]) for r in result.counts.to_pylist()} == {("f", "s1"), ("m", "s1")}


def test_late_events_are_counted_not_dropped_silently() -> None:
    # The 10:00 window closes at 10:01 + 2 min lateness = 10:03: an event of 10:00:05 received at 10:03:05 is late.
    rows = [(5, "a1", "u1", "impression", 180), (300, "a1", "u1", "click", 30), (6, "a1", "u1", "impression", 170)]
    result = count_events(events(rows), USERS, WindowSpec())
    assert (result.late_events, result.counted_events) == (1, 2)
    assert sum(result.counts["clicks"].to_pylist()) == 1 and sum(result.counts["impressions"].to_pylist()) == 1
    # No received_at: the file's arrival time stands in.
    bare = [(5, "a1", "u1", "impression", None), (300, "a1", "u1", "click", None)]
    assert count_events(events(bare), USERS, arrived=T0 + dt.timedelta(minutes=6)).late_events == 1
    assert count_events(events(bare), USERS).late_events == 0


def test_only_windows_in_range_are_counted() -> None:
    rows = [(5, "a1", "u1", "impression", 1), (65, "a1", "u1", "click", 1), (130, "a2", "u2", "click", 1)]
    result = count_events(events(rows), USERS, start=T0 + dt.timedelta(minutes=1), end=T0 + dt.timedelta(minutes=2))
    assert (result.counted_events, result.outside_events, result.late_events) == (1, 2, 0)
    assert result.counts["window_start"].to_pylist() == [T0 + dt.timedelta(minutes=1)]


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(event, max_size=80), cut=st.integers(0, 80), seed=st.integers(0, 1000))
def test_conserved_and_independent_of_order_and_split(rows: list, cut: int, seed: int) -> None:
    arrived = T0 + dt.timedelta(minutes=6)
    start, end = T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=9)
    whole = count_events(events(rows), USERS, arrived=arrived, start=start, end=end)
    valid = sum(1 for r in rows if r[3] != "bogus")
    assert whole.counted_events + whole.late_events + whole.outside_events == valid
    assert whole.invalid_events == len(rows) - valid
    assert whole.counts["impressions"].null_count == 0 and whole.counts["clicks"].null_count == 0

    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    a = count_events(events(shuffled[:cut]), USERS, arrived=arrived, start=start, end=end)
    b = count_events(events(shuffled[cut:]), USERS, arrived=arrived, start=start, end=end)
    assert merge_counts([a.counts, b.counts]).equals(whole.counts)
    assert a.late_events + b.late_events == whole.late_events
    assert a.outside_events + b.outside_events == whole.outside_events
    again = count_events(events(rows), USERS, arrived=arrived, start=start, end=end)
    assert again.counts.equals(whole.counts) and again.late_events == whole.late_events


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(event, min_size=1, max_size=60), minutes=st.integers(0, 400))
def test_scores_are_bounded_deterministic_and_decay_with_age(rows: list, minutes: int) -> None:
    params = ScoreParams()
    counts = count_events(events(rows), USERS).counts
    now = T0 + dt.timedelta(minutes=11)
    first = {a: now - dt.timedelta(minutes=minutes) for a in ("a1", "a2", "a3")}
    older = {a: t - dt.timedelta(minutes=30) for a, t in first.items()}
    scored = score_articles(counts, now, params, first)
    assert scored == score_articles(counts, now, params, first)
    for n in (1, 2):  # cutting the top n in Arrow gives exactly what cutting the full list does
        assert top_n(score_articles(counts, now, params, first, per_audience=n), n) == top_n(scored, n)
    for r in scored:
        assert 0 <= r["score"] < 1 + params.velocity_weight
    if minutes > 180:
        assert scored == []  # three hours old is past news
    by_key = {
        (r["gender"], r["segment_id"], r["article_id"]): r["score"] for r in score_articles(counts, now, params, older)
    }
    for r in scored:
        assert by_key.get((r["gender"], r["segment_id"], r["article_id"]), 0.0) <= r["score"]


def test_top_n_per_segment_and_fitted_prior() -> None:
    rows = [(600, "a1", "u1", "click")] * 3 + [(600, "a1", "u1", "impression")] * 5
    rows += [(600, "a2", "u1", "impression")]
    counts = count_events(events(rows), USERS).counts
    scored = score_articles(counts, T0 + dt.timedelta(minutes=11))
    best = top_n(scored, 1)
    assert [r["article_id"] for r in best[("f", "s1")]] == ["a1"]
    alpha, beta = fit_beta_prior([100, 200, 50, 80], [5, 30, 2, 9])
    assert alpha > 0 and beta > 0 and 0.02 < alpha / (alpha + beta) < 0.2
    with pytest.raises(ValueError, match="alpha and beta must be > 0"):
        ScoreParams(alpha=0)


@settings(max_examples=100, deadline=None)
@given(last=st.one_of(st.none(), st.integers(-600, 600)), end=st.integers(0, 600), cap=st.integers(1, 300))
def test_recount_range_covers_open_and_missed_windows(last: int | None, end: int, cap: int) -> None:
    spec = WindowSpec()
    last_end = None if last is None else T0 + dt.timedelta(minutes=last)
    until = T0 + dt.timedelta(minutes=end, seconds=30)
    r = recount_range(last_end, until, spec, dt.timedelta(minutes=cap))
    assert r.end == T0 + dt.timedelta(minutes=end)  # rounded down to a window boundary
    assert r.start >= r.end - dt.timedelta(minutes=cap) and r.start <= r.end
    if last_end is not None and r.skipped is None:
        # every window that could still take on-time events since the last run is recounted
        assert r.start <= min(last_end, r.end) - spec.lateness - spec.width
    if r.skipped:
        assert r.skipped[1] == r.start and r.skipped[0] < r.start


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 200),  # window (minutes before 12:00)
            st.sampled_from([None, "f", "m"]),
            st.sampled_from([None, "s1", "s2"]),
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(0, 9),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=40,
    ),
    published=st.dictionaries(st.sampled_from(["a", "c", "z"]), st.integers(0, 300), max_size=2),
)
def test_scored_pairs_match_a_plain_python_score(rows: list, published: dict[str, int]) -> None:
    import math

    now = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    at = {(r[0], r[1], r[2], r[3]): r for r in rows}  # one row per group, as stored counts are
    counts = pa.table(
        {
            "window_start": pa.array(
                [now - dt.timedelta(minutes=w) for w, *_ in at.values()], pa.timestamp("us", "UTC")
            ),
            "gender": [r[1] for r in at.values()],
            "segment_id": [r[2] for r in at.values()],
            "article_id": [r[3] for r in at.values()],
            "impressions": [r[4] for r in at.values()],
            "clicks": [r[5] for r in at.values()],
        }
    )
    first_seen = {a: now - dt.timedelta(minutes=m) for a, m in published.items()}
    params = ScoreParams()
    got = scored_pairs(counts, now, params, first_seen).to_pylist()

    recent = [r for r in at.values() if r[0] <= 180]
    pairs: dict[tuple, list[float]] = {}
    earliest: dict[str, int] = {}
    for w, g, s, a, i, c in recent:
        p = pairs.setdefault((g, s, a), [0, 0, 0, 0])
        p[0] += i
        p[1] += c
        p[2] += (i + c) if w == 1 else 0
        p[3] += (i + c) if 2 <= w <= 11 else 0
        earliest[a] = max(earliest.get(a, -1), w)
    expected = []
    for (g, s, a), (i, c, cur, base) in pairs.items():
        age = published.get(a, earliest[a]) * 60.0
        if age > 180 * 60:
            continue
        velocity = (cur + 1) / (base / 10 + 1)
        ctr = (c + 1.0) / (i + 31.0)
        score = ctr * 0.5 ** (age / 3600) * (1 + 0.25 * math.tanh(math.log(velocity)))
        expected.append({"gender": g, "segment_id": s, "article_id": a, "impressions": i, "clicks": c, "score": score})
    expected.sort(
        key=lambda r: (
            r["gender"] is None,
            r["gender"] or "",
            r["segment_id"] is None,
            r["segment_id"] or "",
            -r["score"],
            r["article_id"],
        )
    )
    assert [(r["gender"], r["segment_id"], r["article_id"], r["impressions"], r["clicks"]) for r in got] == [
        (r["gender"], r["segment_id"], r["article_id"], r["impressions"], r["clicks"]) for r in expected
    ]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected])
