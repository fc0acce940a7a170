"""Archive lines to events (pure): line numbers and reasons, ingestion's rules for ids and times, 64-bit ids, and each
id admitted once per hour whatever the batches."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.transforms.event_lines import HourIds, RejectedLine, hash_ids, parse_jsonl
from tasks.transforms.events import Event, Message, parse_event
from tasks.transforms.trends import SCAN_SCHEMA, USER_SCHEMA, WindowSpec, closed_hours, count_stream, late_note

USERS_EMPTY = USER_SCHEMA.empty_table()

T = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)


def line(i: int, **fields: object) -> bytes:
    row: dict[str, object] = {
        "event_id": f"e{i}",
        "ts": (T + dt.timedelta(seconds=i)).isoformat(),
        "article_id": "a1",
        "user_id": "u1",
        "action": "click",
    }
    row.update(fields)
    return json.dumps({k: v for k, v in row.items() if v is not ...}).encode()


def test_bad_lines_are_rejected_with_their_physical_line_number_and_reason() -> None:
    lines = [
        line(1),  # 1
        b"",  # 2: blank lines count as lines, never as events
        line(2, article_id=7, user_id=8),  # 3: numeric ids, as ingestion accepts them
        b'{"event_id":"e3",bad',  # 4
        b"   ",  # 5
        b"not json",  # 6
        line(4) + b"\r",  # 7: CRLF
        line(5, action="swipe"),  # 8
        line(6, event_id=...),  # 9: no id: one derived from the line
        line(7) + line(8),  # 10: two objects on one line
        b"[1]",  # 11
        line(9, ts="yesterday"),  # 12
        line(10, ts=1790000000),  # 13: epoch seconds
        line(11, event_id=True),  # 14
        line(12, user_id=""),  # 15
        line(13, ts="1969-12-31T23:59:59+00:00"),  # 16
        line(14, article_id="x" * 257),  # 17
        line(15, ts="2026-11-27T11:00:00"),  # 18: naive times are UTC, as in ingestion
    ]
    parsed = parse_jsonl(b"\n".join(lines) + b"\n", first_line=101)
    assert parsed.lines == 18
    assert parsed.events["event_id"].to_pylist() == [
        "e1",
        "e2",
        "e4",
        parsed.events["event_id"][3].as_py(),
        "e10",
        "e15",
    ]
    assert parsed.events["event_id"][3].as_py().startswith("kf-")
    assert parsed.events.to_pylist()[1]["article_id"] == "7" and parsed.events.to_pylist()[1]["user_id"] == "8"
    assert parsed.events["ts"][4].as_py() == dt.datetime.fromtimestamp(1790000000, dt.UTC)
    assert parsed.events["ts"][5].as_py() == dt.datetime(2026, 11, 27, 11, tzinfo=dt.UTC)
    assert [(r.line, r.reason) for r in parsed.rejected] == [
        (104, "not JSON: Expecting property name enclosed in double quotes: line 1 column 18 (char 17)"),
        (106, "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (108, "unknown action 'swipe' (known: click, impression)"),
        (110, "not JSON: Extra data: line 1 column 110 (char 109)"),
        (111, "not a JSON object: list"),
        (112, "bad 'ts': not an ISO 8601 time: 'yesterday'"),
        (114, "'event_id' must be a string, got bool"),
        (115, "missing field(s): user_id"),
        (116, "bad 'ts': 1969-12-31T23:59:59+00:00 is before 1970"),
        (117, "'article_id' is longer than 256 characters"),
    ]
    assert parsed.rejected[1] == RejectedLine(106, parsed.rejected[1].reason, "not json")


def test_a_clean_chunk_and_a_chunk_without_its_last_newline() -> None:
    parsed = parse_jsonl(b"\n".join(line(i) for i in range(5)), first_line=1)
    assert parsed.lines == 5 and parsed.events.num_rows == 5 and not parsed.rejected
    # Arrow parses the whole chunk; one bad value is still found on its own line.
    parsed = parse_jsonl(b"\n".join([line(1), line(2, action=None), line(3)]) + b"\n", first_line=7)
    assert [(r.line, r.reason) for r in parsed.rejected] == [(8, "missing field(s): action")]
    assert parsed.events["event_id"].to_pylist() == ["e1", "e3"]


def test_a_line_without_an_id_gets_the_same_id_every_time() -> None:
    one = parse_jsonl(line(6, event_id=...) + b"\n").events["event_id"][0].as_py()
    again = parse_jsonl(b"garbage\n" + line(6, event_id="") + b"\n").events["event_id"][0].as_py()
    other = parse_jsonl(line(7, event_id=...) + b"\n").events["event_id"][0].as_py()
    assert one == again != other


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "event_id": st.one_of(st.text(max_size=5), st.integers(0, 99), st.booleans(), st.none()),
                "article_id": st.one_of(st.sampled_from(["a1", ""]), st.integers(0, 9), st.floats(0, 1)),
                "user_id": st.one_of(st.just("u1"), st.integers(0, 9), st.none(), st.lists(st.integers(), max_size=1)),
                "action": st.sampled_from(["click", "impression", "view", ""]),
            }
        ),
        min_size=1,
        max_size=12,
    )
)
def test_lines_are_accepted_exactly_when_ingestion_accepts_the_same_message(rows: list[dict[str, object]]) -> None:
    arrived = T + dt.timedelta(hours=1)
    bodies = [json.dumps({**r, "ts": T.isoformat()}).encode() for r in rows]
    parsed = parse_jsonl(b"\n".join(bodies) + b"\n")
    rejected = {r.line for r in parsed.rejected}
    for n, body in enumerate(bodies, 1):
        accepted_by_ingestion = isinstance(parse_event(Message(body, arrived, source_id=f"m{n}")), Event)
        assert (n not in rejected) == accepted_by_ingestion, body


def test_ids_hash_by_value_whatever_the_array_layout() -> None:
    ids = pa.array([f"e{i}" for i in range(200_000)] + ["", "é", "e1"])
    h = hash_ids(ids)
    assert h.dtype == np.uint64 and len(np.unique(h[:-1])) == len(h) - 1 and h[-1] == h[1]
    assert (hash_ids(ids.slice(1000, 50)) == h[1000:1050]).all()
    assert (hash_ids(pa.chunked_array([ids.slice(0, 7), ids.slice(7)])) == h).all()
    assert (hash_ids(ids.cast(pa.large_string())) == h).all()


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.integers(0, 300), min_size=1, max_size=400),
    cuts=st.lists(st.integers(1, 60), min_size=1, max_size=20),
    expected=st.sampled_from([0, 10, 100_000]),
)
def test_each_id_is_admitted_once_the_first_copy_read(ids: list[int], cuts: list[int], expected: int) -> None:
    table = pa.table({"event_id": [f"e{i}" for i in ids], "row": list(range(len(ids)))})
    hour = HourIds(expected)
    admitted: list[int] = []
    start, k = 0, 0
    while start < len(ids):
        batch = table.slice(start, cuts[k % len(cuts)])
        held = hour.admit(batch)
        rows = batch["row"].to_pylist()
        admitted += [r for j, r in enumerate(rows) if held is None or not held[j]]
        start, k = start + batch.num_rows, k + 1
    released = hour.release()
    if released is not None:
        admitted += released["row"].to_pylist()
    first = {}
    for row, i in enumerate(ids):
        first.setdefault(i, row)
    assert sorted(admitted) == sorted(first.values())
    assert hour.duplicates == len(ids) - len(first)


def test_many_ids_past_the_expected_count_stay_exact() -> None:
    hour = HourIds(100)
    n = 0
    for start in range(0, 60_000, 7_000):
        batch = pa.table({"event_id": [f"e{i % 50_000}" for i in range(start, start + 7_000)]})
        held = hour.admit(batch)
        n += batch.num_rows - (int(held.sum()) if held is not None else 0)
    released = hour.release()
    assert n + (released.num_rows if released is not None else 0) == 50_000
    assert hour.duplicates == 63_000 - 50_000


def test_held_rows_are_neither_counted_nor_read() -> None:
    rows = pa.table(
        {
            "ts": pa.array([T, T, T], SCAN_SCHEMA.field("ts").type),
            "article_id": ["a1", "a1", "a2"],
            "user_id": ["u1", "u1", "u1"],
            "action": ["click", "impression", "click"],
            "received_at": pa.nulls(3, SCAN_SCHEMA.field("received_at").type),
            "held": [False, True, None],
        },
        schema=SCAN_SCHEMA,
    )
    counts, events = count_stream(pa.RecordBatchReader.from_batches(SCAN_SCHEMA, rows.to_batches()), USERS_EMPTY)
    assert events == 2 and counts.counted_events == 2 and counts.counts["impressions"].to_pylist() == [0, 0]


def test_lateness_can_be_ignored_and_hours_close_after_their_lateness() -> None:
    late = pa.table(
        {
            "ts": pa.array([T], SCAN_SCHEMA.field("ts").type),
            "article_id": ["a1"],
            "user_id": ["u1"],
            "action": ["click"],
            "received_at": pa.array([T + dt.timedelta(days=30)], SCAN_SCHEMA.field("received_at").type),
        }
    )

    def count(spec: WindowSpec) -> tuple[int, int]:
        c, _ = count_stream(pa.RecordBatchReader.from_batches(late.schema, late.to_batches()), USERS_EMPTY, spec)
        return c.counted_events, c.late_events

    assert count(WindowSpec()) == (0, 1)
    assert count(WindowSpec(ignore_lateness=True)) == (1, 0)
    spec = WindowSpec(lateness=dt.timedelta(minutes=2))
    assert closed_hours([T, T + dt.timedelta(hours=1)], T + dt.timedelta(hours=1, minutes=2), spec) == [T]
    assert closed_hours([T], T + dt.timedelta(hours=1, minutes=1), spec) == []
    assert late_note(1, 3, spec.lateness) is None
    assert late_note(1000, 1000, spec.lateness) == (
        "most events were late: 1,000 of 1,000 arrived after their window closed (lateness 120 s); to rebuild "
        "history from a replay, count by event time alone with `keyflow trends backfill --ignore-lateness`"
    )


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                line(1),
                line(2, user_id=7),
                line(3, action="swipe"),
                b"",
                b"  ",
                b"oops",
                line(4) + line(5),
                line(6, event_id=...),
                line(7) + b"\r",
                line(8, ts="2026-11-27T10:00:00"),
            ]
        ),
        min_size=1,
        max_size=15,
    ),
    st.booleans(),
)
def test_the_optimistic_read_gives_what_the_careful_one_gives(lines: list[bytes], trailing_newline: bool) -> None:
    chunk = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    careful, optimistic = parse_jsonl(chunk, 5), parse_jsonl(chunk, 5, optimistic=True)
    assert optimistic.events.equals(careful.events)
    assert optimistic.rejected == careful.rejected and optimistic.lines == careful.lines
    if careful.clean:  # one Arrow call read every line: nothing was blank, odd or refused
        assert careful.events.num_rows + len(careful.rejected) == careful.lines


def test_a_time_that_looks_iso_but_is_no_day_is_rejected_not_raised() -> None:
    parsed = parse_jsonl(line(1) + b"\n" + line(2, ts="2026-02-30T10:00:00Z") + b"\n", first_line=1)
    assert parsed.events["event_id"].to_pylist() == ["e1"]
    assert [(r.line, r.reason) for r in parsed.rejected] == [
        (2, "bad 'ts': not an ISO 8601 time: '2026-02-30T10:00:00Z'")
    ]
