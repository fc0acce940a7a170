"""Ingestion's line layout read without a JSON parser (pure): whatever the lines, the events, keys, id hashes and
rejections are exactly the general reader's; ingestion's own output is read by the layout alone."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.transforms.event_layout import SKELETON, KeyedLines, keyed_lines, read_layout
from tasks.transforms.events import Event, jsonl
from tasks.transforms.trends import ArticleNames

T = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
ARRIVED = T + dt.timedelta(hours=1)


def layout_line(
    event_id: str = "e1",
    ts: str = "2026-11-27T10:00:05+00:00",
    article_id: str = "a1",
    user_id: str = "u1",
    action: str = "click",
    received_at: str = "2026-11-27T10:00:06.250000+00:00",
) -> bytes:
    """A line as ingestion writes one (values are put in as they are: they may break the layout on purpose)."""
    values = (event_id, ts, article_id, user_id, action, received_at)
    return b"".join(s + v.encode() for s, v in zip(SKELETON, values, strict=True)) + b'"}'


def both(chunk: bytes, first_line: int = 1) -> tuple[KeyedLines, KeyedLines, ArticleNames, ArticleNames]:
    """The chunk read with the layout and by the general reader alone."""
    fast_names, slow_names = ArticleNames(), ArticleNames()
    fast = keyed_lines(chunk, first_line, fast_names, ARRIVED)
    slow = keyed_lines(chunk, first_line, slow_names, ARRIVED, layout=False)
    return fast, slow, fast_names, slow_names


def assert_same(chunk: bytes, first_line: int = 1) -> KeyedLines:
    fast, slow, fast_names, slow_names = both(chunk, first_line)
    assert fast.lines == slow.lines
    assert fast.rejected == slow.rejected
    assert fast.events.equals(slow.events), (fast.events.to_pylist(), slow.events.to_pylist())
    assert (fast.hashes == slow.hashes).all()
    assert fast_names.table().sort_by("article_key").equals(slow_names.table().sort_by("article_key"))
    return fast


def test_ingestions_own_lines_are_read_by_the_layout_alone() -> None:
    # Times over several hours and days (a month's end too), one without a fraction (isoformat leaves it out).
    events = [
        Event(f"id-{i}", T + dt.timedelta(minutes=97 * i, microseconds=i * 7), f"a{i % 3}", f"u{i}", action, T)
        for i, action in enumerate(["click", "impression"] * 50)
    ]
    chunk = jsonl(e.as_json() for e in events)
    fast = assert_same(chunk)
    assert fast.in_layout == 100 and fast.events.num_rows == 100 and not fast.rejected
    assert fast.events["ts"].to_pylist() == [e.ts for e in events]
    assert fast.events["click"].to_pylist() == [e.action == "click" for e in events]
    read = read_layout(chunk)
    assert len(read.rest) == 0 and (read.line == np.arange(100)).all()


def test_lines_the_layout_cannot_settle_go_to_the_general_reader_in_line_order() -> None:
    lines = [
        layout_line("e1"),
        b"",  # blank
        layout_line("e2", user_id="7").replace(b'"7"', b"7"),  # a numeric id
        layout_line("e3", ts="2026-11-27T11:00:00+01:00"),  # another zone: general reader
        layout_line("e4", action="swipe"),  # rejected by the layout, for its action
        layout_line("e5", ts="2026-02-30T10:00:00Z"),  # no such day
        layout_line("e1"),  # a duplicate line: read again (the hour's filter drops it)
        layout_line("e6", article_id='a"1').replace(b'a"1', b'a\\"1'),  # an escape
        layout_line("e7", user_id="ü"),  # not ASCII
        layout_line("e8") + b"\r",  # CRLF
        b'{"event_id":"e9","ts":"2026-11-27T10:00:05Z"',  # cut short
        layout_line("", action="impression"),  # no id: one derived from the line
        layout_line("e10", ts="1969-12-31T23:59:59Z"),
        layout_line("e11", received_at="2026-11-27T10:00:06.25Z"),  # a fraction of two digits
        layout_line("x" * 60),  # an id longer than the layout reads
        layout_line("e12", action="swipe", ts="bad"),  # the action is the first reason
    ]
    fast = assert_same(b"\n".join(lines), first_line=11)
    assert fast.lines == 16 and 0 < fast.in_layout < 16
    assert [(r.line, r.reason.split(":")[0]) for r in fast.rejected] == [
        (15, "unknown action 'swipe' (known"),
        (16, "bad 'ts'"),
        (21, "not JSON"),
        (23, "bad 'ts'"),
        (26, "unknown action 'swipe' (known"),
    ]


def test_a_chunk_of_nothing_but_other_lines_and_an_empty_chunk() -> None:
    chunk = b"\n".join(json.dumps({"event_id": f"e{i}", "ts": T.isoformat(), "article_id": "a", "user_id": "u",
                                   "action": "click"}).encode() for i in range(5))  # fmt: skip
    fast = assert_same(chunk)
    assert fast.in_layout == 0 and fast.events.num_rows == 5
    empty = assert_same(b"")
    assert empty.lines == 0 and empty.events.num_rows == 0


_TEXT = st.text(alphabet=st.sampled_from('ab7_-:." \\\\é\t'), max_size=6)
_GOOD_TIME = st.one_of(
    st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)).map(
        lambda t: t.isoformat()
    ),
    st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
        lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond % 2 else "%Y-%m-%dT%H:%M:%SZ")
    ),
)
_ODD_TIME = st.one_of(  # near misses: no such day, hour or minute, before 1970, other forms
    st.from_regex(
        r"\A(19[67][0-9]|20[0-9][0-9])-(0[0-9]|1[0-3])-([0-3][0-9])T([0-2][0-9]):([0-6][0-9]):([0-6][0-9])"
        r"(\.[0-9]{1,7})?(Z|[+-]0[01]:?00)?\Z"
    ),
    _TEXT,
)
_GOOD_ID = st.from_regex(r"\A[a-z0-9_-]{1,12}\Z")
_ODD_ID = st.one_of(_TEXT, st.text(max_size=60), st.just(""), st.just("x" * 49), st.just("x" * 48))


def _mostly(good: st.SearchStrategy[str], odd: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Five in six draws good: a line is wholly good about a third of the time, and odd in one field often."""
    return st.tuples(st.integers(0, 5), good, odd).map(lambda t: t[2] if t[0] == 0 else t[1])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(  # the fields of layout_line, which the test calls: nothing runs inside the strategy
                _mostly(_GOOD_ID, _ODD_ID),
                _mostly(_GOOD_TIME, _ODD_TIME),
                _mostly(_GOOD_ID, _ODD_ID),
                _mostly(_GOOD_ID, _ODD_ID),
                _mostly(st.sampled_from(["click", "impression"]), st.sampled_from(["swipe", "", "Click", "clic"])),
                _mostly(_GOOD_TIME, _ODD_TIME),
            ),
            st.sampled_from([b"", b" ", b"not json", b"{}", b"[1]", layout_line()[:30], layout_line() + b"\r"]),
        ),
        max_size=25,
    ),
    st.integers(1, 1000),
    st.booleans(),
)
def test_the_layout_reads_every_line_as_the_general_reader_does(
    drawn: list[bytes | tuple[str, ...]], first_line: int, trailing_newline: bool
) -> None:
    lines = [layout_line(*d) if isinstance(d, tuple) else d for d in drawn]
    assert_same(b"\n".join(lines) + (b"\n" if trailing_newline and lines else b""), first_line)


def test_keys_are_the_hashes_every_other_reader_uses() -> None:
    from tasks.transforms.hashing import hash_ids

    chunk = b"\n".join(layout_line(f"event-{i}", article_id=f"article-{i % 7}", user_id=f"user-{i}") for i in range(50))
    fast, _, names, _ = both(chunk)
    assert fast.in_layout == 50
    assert (fast.hashes == hash_ids(pa.array([f"event-{i}" for i in range(50)]))).all()
    assert (fast.events["user_key"].to_numpy() == hash_ids(pa.array([f"user-{i}" for i in range(50)]))).all()
    table = names.table()
    assert sorted(table["article_id"].to_pylist()) == [f"article-{i}" for i in range(7)]
    assert (table["article_key"].to_numpy() == hash_ids(table["article_id"])).all()
