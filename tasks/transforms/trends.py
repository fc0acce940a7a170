"""Trend scoring core: tumbling event-time windows, counts per (gender, segment, article), trending scores. Pure.

Counting is associative: the counts of a set of events equal the merged counts of any split of it, in any order, so
files and batches can be processed independently and re-running a window gives identical rows.

Score of an article for a (gender, segment), over the windows of the last ``max_age``::

    ctr      = (clicks + alpha) / (impressions + alpha + beta)          # CTR smoothed by a Beta(alpha, beta) prior
    decay    = 0.5 ** (age / half_life), 0 past max_age                  # age since the article was first seen
    velocity = (latest window's events + 1) / (mean of the previous baseline windows + 1)
    score    = ctr * decay * (1 + velocity_weight * tanh(ln velocity))  # in [0, 1 + velocity_weight)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc

TS = pa.timestamp("us", tz="UTC")
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", TS),
        ("article_id", pa.string()),
        ("user_id", pa.string()),
        ("action", pa.string()),
        ("received_at", TS),
    ]
)
# What counting reads: the event id is not needed to count, and not parsing it saves a tenth of the work.
COUNT_INPUT_SCHEMA = pa.schema([f for f in EVENT_SCHEMA if f.name != "event_id"])
USER_SCHEMA = pa.schema([("user_id", pa.string()), ("gender", pa.string()), ("segment_id", pa.string())])
_ACTIONS = pa.array(["click", "impression"])
GROUP = ["window_start", "gender", "segment_id", "article_id"]
COUNT_SCHEMA = pa.schema(
    [
        ("window_start", TS),
        ("gender", pa.string()),
        ("segment_id", pa.string()),
        ("article_id", pa.string()),
        ("impressions", pa.int64()),
        ("clicks", pa.int64()),
    ]
)


def conform_events(table: pa.Table, schema: pa.Schema = EVENT_SCHEMA) -> pa.Table:
    """Events in ``schema``'s column order and types; optional columns missing from a file are null."""
    cols = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling windows on event time, with allowed lateness."""

    width: timedelta = timedelta(minutes=1)
    lateness: timedelta = timedelta(minutes=2)


@dataclass(frozen=True)
class WindowCounts:
    """Counts of one batch of events, plus the events that could not be counted."""

    counts: pa.Table
    late_events: int
    invalid_events: int
    outside_events: int = 0

    @property
    def counted_events(self) -> int:
        """Impressions plus clicks counted in the batch."""
        return int(pc.sum(self.counts["impressions"]).as_py() or 0) + int(pc.sum(self.counts["clicks"]).as_py() or 0)


def window_starts(ts: pa.Array | pa.ChunkedArray, width: timedelta) -> pa.Array | pa.ChunkedArray:
    """The start of each event's tumbling window."""
    return pc.floor_temporal(ts, multiple=int(width.total_seconds()), unit="second")


COUNTED, LATE, INVALID, OUTSIDE = 0, 1, 2, 3


def _window_us(spec: WindowSpec) -> pc.Expression:
    """Each event's window start in epoch microseconds: integer arithmetic, no time-zone aware flooring.

    Integer division truncates toward zero, so this is the floor for events after 1970 (every real event).
    """
    width = int(spec.width.total_seconds() * 1_000_000)
    ts = pc.field("ts").cast(pa.int64())
    return pc.multiply(pc.divide(ts, pc.scalar(width)), pc.scalar(width))


def _status(spec: WindowSpec, start: datetime | None, end: datetime | None) -> pc.Expression:
    """Each event's fate as an Arrow expression: counted, late, invalid or outside ``[start, end)``."""
    ts, action = pc.field("ts"), pc.field("action")
    known = pc.or_kleene(pc.equal(action, pc.scalar("click")), pc.equal(action, pc.scalar("impression")))
    valid = pc.and_kleene(pc.and_kleene(known, ts.is_valid()), pc.field("article_id").is_valid())
    window = _window_us(spec)
    outside = pc.scalar(False)
    if start is not None:
        outside = pc.or_kleene(outside, pc.less(window, pc.scalar(_epoch_us(start))))
    if end is not None:
        outside = pc.or_kleene(outside, pc.greater_equal(window, pc.scalar(_epoch_us(end))))
    closes = pc.add(window, pc.scalar(int((spec.width + spec.lateness).total_seconds() * 1_000_000)))
    late = pc.coalesce(pc.greater_equal(pc.field("received_at").cast(pa.int64()), closes), pc.scalar(False))
    code = pc.if_else(late, pc.scalar(LATE), pc.scalar(COUNTED))
    code = pc.if_else(pc.coalesce(outside, pc.scalar(False)), pc.scalar(OUTSIDE), code)
    return pc.if_else(pc.coalesce(valid, pc.scalar(False)), code, pc.scalar(INVALID))


def _epoch_us(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000 + t.microsecond


def count_stream(
    events: pa.RecordBatchReader,
    users: pa.Table,
    spec: WindowSpec = WindowSpec(),
    start: datetime | None = None,
    end: datetime | None = None,
    use_threads: bool = True,
    ordered: bool = False,
) -> tuple[WindowCounts, int]:
    """Count a stream of event batches (:data:`COUNT_INPUT_SCHEMA`) in one streaming Arrow plan.

    Returns the counts and the number of events read.

    The plan classifies each event (counted, late, invalid, outside), joins the user file once (its hash table is
    built once per stream, not per batch) and aggregates per (window, gender, segment, article, fate). Memory
    follows the number of groups, not the number of events.
    """
    status = _status(spec, start, end).cast(pa.int8())
    window = _window_us(spec)
    source = acero.Declaration("record_batch_reader_source", acero.RecordBatchReaderSourceNodeOptions(events))
    # Every event keeps its (window, user, article) and a fate code; nulling the keys of the events that are not
    # counted would copy every string column for rows that are nearly always counted anyway.
    project = acero.Declaration(
        "project",
        acero.ProjectNodeOptions(
            [
                status,
                window,
                pc.field("user_id"),
                pc.field("article_id"),
                pc.equal(pc.field("action"), pc.scalar("impression")).cast(pa.int64()),
                pc.equal(pc.field("action"), pc.scalar("click")).cast(pa.int64()),
            ],
            ["status", "window_start", "user_id", "article_id", "impression", "click"],
        ),
        inputs=[source],
    )
    people_table, decode = _audience_codes(users)
    people = acero.Declaration("table_source", acero.TableSourceNodeOptions(people_table))
    join = acero.Declaration(
        "hashjoin",
        acero.HashJoinNodeOptions(
            "left outer",
            ["user_id"],
            ["user_id"],
            left_output=["status", "window_start", "article_id", "impression", "click"],
            right_output=["audience"],
        ),
        inputs=[project, people],
    )
    aggregate = acero.Declaration(
        "aggregate",
        acero.AggregateNodeOptions(
            [
                ("impression", "hash_sum", None, "impressions"),
                ("click", "hash_sum", None, "clicks"),
                ([], "hash_count_all", None, "events"),
            ],
            keys=["status", "window_start", "audience", "article_id"],
        ),
        inputs=[join],
    )
    out = decode(aggregate.to_table(use_threads=use_threads))
    out = out.set_column(out.schema.get_field_index("window_start"), "window_start", out["window_start"].cast(TS))
    fate = {code: 0 for code in (COUNTED, LATE, INVALID, OUTSIDE)}
    by_status = out.group_by(["status"], use_threads=False).aggregate([("events", "sum")])
    for code, n in zip(by_status["status"].to_pylist(), by_status["events_sum"].to_pylist(), strict=True):
        fate[code] = n
    counts = out.filter(pc.equal(out["status"], COUNTED)).select(COUNT_SCHEMA.names).cast(COUNT_SCHEMA)
    # Sorting a million groups costs more than a second; only callers that compare results ask for it.
    result = WindowCounts(canonical(counts) if ordered else counts, fate[LATE], fate[INVALID], fate[OUTSIDE])
    return result, sum(fate.values())


def _audience_codes(users: pa.Table) -> tuple[pa.Table, Any]:
    """Users as (user_id, audience code): grouping on one integer is much cheaper than on two strings.

    Returns the table to join and a function that turns ``audience`` back into ``gender`` and ``segment_id``. A
    user listed twice keeps the first row: joining both would count that user's events twice.
    """
    if users.num_rows and pc.count_distinct(users["user_id"], mode="all").as_py() < users.num_rows:
        numbered = users.select(["user_id"]).append_column("_i", pa.array(np.arange(users.num_rows), pa.int64()))
        first = numbered.group_by(["user_id"], use_threads=False).aggregate([("_i", "min")])["_i_min"]
        users = users.take(pc.sort_indices(first))
    g = pc.dictionary_encode(users["gender"]).combine_chunks()
    s = pc.dictionary_encode(users["segment_id"]).combine_chunks()
    width = len(s.dictionary) + 1
    gi = pc.fill_null(g.indices.cast(pa.int32()), -1).to_numpy() + 1
    si = pc.fill_null(s.indices.cast(pa.int32()), -1).to_numpy() + 1
    table = pa.table({"user_id": users["user_id"], "audience": pa.array(gi * width + si, pa.int32())})

    def decode(out: pa.Table) -> pa.Table:
        code = pc.fill_null(out["audience"], 0).to_numpy(zero_copy_only=False)
        gender = pa.array(code // width - 1).cast(pa.int32())
        segment = pa.array(code % width - 1).cast(pa.int32())
        none = pa.scalar(None, pa.int32())
        gender_idx = pc.if_else(pc.less(gender, 0), none, gender)
        segment_idx = pc.if_else(pc.less(segment, 0), none, segment)
        out = out.append_column("gender", pc.take(g.dictionary.cast(pa.string()), gender_idx))
        return out.append_column("segment_id", pc.take(s.dictionary.cast(pa.string()), segment_idx))

    return table, decode


def count_events(
    events: pa.Table,
    users: pa.Table,
    spec: WindowSpec = WindowSpec(),
    arrived: datetime | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> WindowCounts:
    """Count impressions and clicks per window and (gender, segment, article).

    Unknown users keep null gender/segment (left join).

    An event is late when it arrived (``received_at``; ``arrived`` for events without one, e.g. the file's
    upload time) at or after its window's end plus the allowed lateness: it is counted in ``late_events``, never in
    the counts, so a window's counts depend only on its events, not on when keyflow ran. With ``start``/``end``,
    only windows in ``[start, end)`` are counted; other events are ``outside_events``.
    """
    table = with_arrival(conform_events(events), arrived).select(COUNT_INPUT_SCHEMA.names)
    reader = pa.RecordBatchReader.from_batches(COUNT_INPUT_SCHEMA, table.to_batches())
    return count_stream(reader, users, spec, start, end, use_threads=False, ordered=True)[0]


def with_arrival(events: pa.Table, arrived: datetime | None) -> pa.Table:
    """Events whose producer sent no ``received_at`` take ``arrived`` (e.g. their file's upload time)."""
    if arrived is None or events["received_at"].null_count == 0:
        return events
    filled = pc.fill_null(events["received_at"], pa.scalar(arrived, TS))
    return events.set_column(events.schema.get_field_index("received_at"), "received_at", filled)


def merge_counts(tables: Sequence[pa.Table]) -> pa.Table:
    """Sum counts of the same (window, gender, segment, article) across batches or files."""
    if not tables:
        return COUNT_SCHEMA.empty_table()
    merged = pa.concat_tables([t.select(COUNT_SCHEMA.names).cast(COUNT_SCHEMA) for t in tables])
    grouped = merged.group_by(GROUP, use_threads=False).aggregate([("impressions", "sum"), ("clicks", "sum")])
    return canonical(grouped.rename_columns([*GROUP, "impressions", "clicks"]).select(COUNT_SCHEMA.names))


def canonical(counts: pa.Table) -> pa.Table:
    """Rows in one deterministic order (nulls last), so equal counts compare equal."""
    return counts.sort_by([(c, "ascending", "at_end") for c in GROUP])


@dataclass(frozen=True)
class ScoreParams:
    """Parameters of the trending score (see the module docstring)."""

    alpha: float = 1.0
    beta: float = 30.0
    half_life: timedelta = timedelta(minutes=60)
    max_age: timedelta = timedelta(hours=3)
    velocity_weight: float = 0.25
    baseline_windows: int = 10

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError("alpha and beta must be > 0")
        if self.half_life <= timedelta(0) or self.max_age <= timedelta(0):
            raise ValueError("half_life and max_age must be positive")
        if not 0 <= self.velocity_weight <= 10 or self.baseline_windows < 1:
            raise ValueError("velocity_weight must be in [0, 10] and baseline_windows >= 1")


def fit_beta_prior(
    impressions: Sequence[int],
    clicks: Sequence[int],
    floor: float = 0.1,
    fallback: tuple[float, float] = (1.0, 30.0),
) -> tuple[float, float]:
    """Method-of-moments Beta(alpha, beta) from per-article CTRs (articles with impressions only).

    ``fallback`` when the CTRs cannot support a fit (fewer than two articles, no spread, or more spread than a Beta
    allows).
    """
    imps = np.asarray(impressions, dtype=np.float64)
    clk = np.asarray(clicks, dtype=np.float64)
    seen = imps > 0
    ctrs = np.minimum(clk[seen] / imps[seen], 1.0)
    if len(ctrs) < 2:
        return fallback
    m = float(ctrs.mean())
    v = float(ctrs.var(ddof=1))
    if not 0 < m < 1 or v <= 0 or v >= m * (1 - m):
        return fallback
    k = m * (1 - m) / v - 1
    return max(m * k, floor), max((1 - m) * k, floor)


def score_articles(
    counts: pa.Table,
    now: datetime,
    params: ScoreParams = ScoreParams(),
    first_seen: Mapping[str, datetime] | None = None,
    spec: WindowSpec = WindowSpec(),
    per_audience: int | None = None,
) -> list[dict[str, Any]]:
    """One scored row per (gender, segment, article) seen within ``max_age``; older articles are past news.

    ``first_seen`` gives each article's publication (or first-seen) time; without it, the article's earliest window
    in ``counts`` stands in. With ``per_audience``, only the best that many per (gender, segment) are returned (cut
    in Arrow, before any Python object is made). Vectorised: group-bys and arithmetic run in Arrow and NumPy.
    """
    width = int(spec.width.total_seconds())
    latest_start = datetime.fromtimestamp(((int(now.timestamp()) - width) // width) * width, tz=now.tzinfo)
    baseline_from = latest_start - spec.width * params.baseline_windows
    recent = counts.filter(pc.greater_equal(counts["window_start"], pa.scalar(now - params.max_age, TS)))
    if recent.num_rows == 0:
        return []
    ws = recent["window_start"]
    events = pc.add(recent["impressions"], recent["clicks"])
    is_current = pc.equal(ws, pa.scalar(latest_start, TS))
    is_base = pc.and_(pc.greater_equal(ws, pa.scalar(baseline_from, TS)), pc.less(ws, pa.scalar(latest_start, TS)))
    zero = pa.scalar(0, pa.int64())
    work = recent.append_column("current", pc.if_else(is_current, events, zero)).append_column(
        "baseline", pc.if_else(is_base, events, zero)
    )
    keys = ["gender", "segment_id", "article_id"]
    g = work.group_by(keys, use_threads=False).aggregate(
        [("impressions", "sum"), ("clicks", "sum"), ("current", "sum"), ("baseline", "sum")]
    )
    earliest = recent.group_by(["article_id"], use_threads=False).aggregate([("window_start", "min")])
    if first_seen:
        known = pa.table(
            {
                "article_id": pa.array(list(first_seen), pa.string()),
                "published": pa.array(list(first_seen.values()), TS),
            }
        )
        earliest = earliest.join(known, "article_id", join_type="left outer", use_threads=False)
        earliest = earliest.set_column(
            1, "window_start_min", pc.coalesce(earliest["published"], earliest["window_start_min"])
        )
    # The article's first-seen time for every group, looked up without a Python loop.
    at = pc.index_in(g["article_id"], value_set=earliest["article_id"])
    first = pc.take(earliest["window_start_min"], at)
    now_us = int(now.timestamp() * 1_000_000)
    first_us = first.cast(pa.int64()).to_numpy(zero_copy_only=False)
    age_s = np.maximum(now_us - first_us, 0) / 1e6
    imps = g["impressions_sum"].to_numpy().astype(np.float64)
    clicks = g["clicks_sum"].to_numpy().astype(np.float64)
    ctr = (clicks + params.alpha) / (imps + params.alpha + params.beta)
    decay = np.power(0.5, age_s / params.half_life.total_seconds())
    velocity = (g["current_sum"].to_numpy() + 1.0) / (g["baseline_sum"].to_numpy() / params.baseline_windows + 1.0)
    score = ctr * decay * (1 + params.velocity_weight * np.tanh(np.log(velocity)))
    fresh = age_s <= params.max_age.total_seconds()
    table = pa.table(
        {
            "gender": g["gender"],
            "segment_id": g["segment_id"],
            "article_id": g["article_id"],
            "impressions": g["impressions_sum"],
            "clicks": g["clicks_sum"],
            "ctr": ctr,
            "age_minutes": age_s / 60,
            "velocity": velocity,
            "score": score,
        }
    ).filter(pa.array(fresh))
    ordered = table.sort_by(
        [
            ("gender", "ascending", "at_end"),
            ("segment_id", "ascending", "at_end"),
            ("score", "descending"),
            ("article_id", "ascending"),
        ]
    )
    if per_audience is not None and ordered.num_rows:
        # Rank within each audience run of the sorted table: position minus the run's first position.
        audience = pc.binary_join_element_wise(
            pc.fill_null(ordered["gender"], "\x00"), pc.fill_null(ordered["segment_id"], "\x00"), "\x1f"
        )
        codes = pc.dictionary_encode(audience).combine_chunks().indices.to_numpy()
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        first = np.maximum.accumulate(np.isin(np.arange(len(codes)), starts) * np.arange(len(codes)))
        ordered = ordered.filter(pa.array(np.arange(len(codes)) - first < per_audience))
    return ordered.to_pylist()


def top_n(scored: list[dict[str, Any]], n: int) -> dict[tuple[Any, Any], list[dict[str, Any]]]:
    """The ``n`` best articles per (gender, segment), best first (ties broken by article id)."""
    out: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in scored:
        bucket = out.setdefault((r["gender"], r["segment_id"]), [])
        if len(bucket) < n:
            bucket.append(r)
    return out


def floor_time(t: datetime, width: timedelta) -> datetime:
    """``t`` rounded down to a window boundary (windows are aligned to the epoch, in UTC)."""
    w = int(width.total_seconds())
    return datetime.fromtimestamp((int(t.timestamp()) // w) * w, tz=UTC)


@dataclass(frozen=True)
class RecountRange:
    """The windows one run counts: ``[start, end)``; ``skipped`` is set when catch-up was capped."""

    start: datetime
    end: datetime
    skipped: tuple[datetime, datetime] | None = None


def recount_range(last_end: datetime | None, end: datetime, spec: WindowSpec, max_catch_up: timedelta) -> RecountRange:
    """Which windows a run ending at ``end`` recounts.

    Windows still open to late events (those ending within ``lateness`` before the last run) are counted again, and
    every window since the last run (catch-up after downtime), but never further back than ``max_catch_up``.
    """
    end = floor_time(end, spec.width)
    floor = floor_time(end - max_catch_up, spec.width)
    if last_end is None:
        return RecountRange(floor, end)
    start = floor_time(min(last_end, end) - spec.lateness - spec.width, spec.width)
    if start < floor:
        return RecountRange(floor, end, (start, floor))
    return RecountRange(start, end)
