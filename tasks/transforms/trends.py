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

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.transforms.hashing import hash_ids

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
# What an archive scan hands to counting: ``held`` marks the events kept back until their hour's duplicates are settled
# (they are counted later, or never), so the batch need not be copied without them.
SCAN_SCHEMA = COUNT_INPUT_SCHEMA.append(pa.field("held", pa.bool_()))
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
    """Tumbling windows on event time, with allowed lateness.

    ``ignore_lateness``: no event is late, for rebuilding history from a replay whose arrival times say nothing about
    the original stream.
    """

    width: timedelta = timedelta(minutes=1)
    lateness: timedelta = timedelta(minutes=2)
    ignore_lateness: bool = False


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


COUNTED, LATE, INVALID, OUTSIDE, HELD = 0, 1, 2, 3, 4


def _window_us(spec: WindowSpec) -> pc.Expression:
    """Each event's window start in epoch microseconds: integer arithmetic, no time-zone aware flooring.

    Integer division truncates toward zero, so this is the floor for events after 1970 (every real event).
    """
    width = int(spec.width.total_seconds() * 1_000_000)
    ts = pc.field("ts").cast(pa.int64())
    return pc.multiply(pc.divide(ts, pc.scalar(width)), pc.scalar(width))


def _status(spec: WindowSpec, start: datetime | None, end: datetime | None, held: bool = False) -> pc.Expression:
    """Each event's fate as an Arrow expression: counted, late, invalid, outside ``[start, end)``, or held back.

    It reads :data:`KEYED_SCHEMA` columns.
    """
    ts = pc.field("ts")
    known = pc.field("click").is_valid()  # null: an action that is neither click nor impression
    valid = pc.and_kleene(pc.and_kleene(known, ts.is_valid()), pc.field("article_key").is_valid())
    window = _window_us(spec)
    outside = pc.scalar(False)
    if start is not None:
        outside = pc.or_kleene(outside, pc.less(window, pc.scalar(_epoch_us(start))))
    if end is not None:
        outside = pc.or_kleene(outside, pc.greater_equal(window, pc.scalar(_epoch_us(end))))
    if spec.ignore_lateness:
        code = pc.scalar(COUNTED)
    else:
        closes = pc.add(window, pc.scalar(int((spec.width + spec.lateness).total_seconds() * 1_000_000)))
        late = pc.coalesce(pc.greater_equal(pc.field("received_at").cast(pa.int64()), closes), pc.scalar(False))
        code = pc.if_else(late, pc.scalar(LATE), pc.scalar(COUNTED))
    code = pc.if_else(pc.coalesce(outside, pc.scalar(False)), pc.scalar(OUTSIDE), code)
    code = pc.if_else(pc.coalesce(valid, pc.scalar(False)), code, pc.scalar(INVALID))
    if held:
        code = pc.if_else(pc.coalesce(pc.field("held"), pc.scalar(False)), pc.scalar(HELD), code)
    return code


def _epoch_us(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000 + t.microsecond


KEYED_SCHEMA = pa.schema(
    [
        ("ts", TS),
        ("received_at", TS),
        ("click", pa.bool_()),
        ("user_key", pa.uint64()),
        ("article_key", pa.uint64()),
        ("held", pa.bool_()),
    ]
)
"""What counting's plan reads: user and article ids as 64-bit keys (:func:`keyed_events`), the action as ``click``
(true for a click, false for an impression, null for any other action), ``held`` as in :data:`SCAN_SCHEMA`.
Integers join and group several times faster than texts, and a flag is tested faster than a text."""


class ArticleNames:
    """The article id behind each 64-bit article key, gathered batch by batch (thread-safe, each key kept once)."""

    _SLOTS = 1 << 18  # a key's last slot: "seen already" at the cost of one lookup, exact (a slot holds a whole key)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: list[np.ndarray] = []
        self._names: list[pa.Array] = []
        self._rows = 0
        self._seen = np.zeros(self._SLOTS, np.uint64)

    def add(self, keys: np.ndarray, names: pa.Array) -> None:
        """Record that ``keys[i]`` stands for ``names[i]``."""
        with self._lock:
            self._add(keys, names)

    def _add(self, keys: np.ndarray, names: pa.Array) -> None:
        self._keys.append(keys)
        self._names.append(names.cast(pa.string()))
        self._rows += len(keys)
        self._seen[keys & np.uint64(self._SLOTS - 1)] = keys
        if self._rows > 1 << 20:  # keep memory to the distinct articles
            self._compact()

    def add_new(self, keys: np.ndarray, names_at: Callable[[np.ndarray], list[str]]) -> None:
        """Record the names of the keys not recorded yet; ``names_at(i)`` names ``keys[i]`` for positions ``i``.

        A key found in its slot is certainly recorded; one that is not (never seen, or its slot was taken since)
        is recorded again, which :meth:`table` keeps once.
        """
        with self._lock:
            new = np.flatnonzero((self._seen[keys & np.uint64(self._SLOTS - 1)] != keys) | (keys == 0))
            if not len(new):
                return
            unique, first = np.unique(keys[new], return_index=True)
            self._add(unique, pa.array(names_at(new[first]), pa.string()))

    def _compact(self) -> None:
        keys = np.concatenate(self._keys)
        names = pa.concat_arrays(self._names)
        _, first = np.unique(keys, return_index=True)
        self._keys, self._names = [keys[first]], [names.take(pa.array(first))]
        self._rows = len(first)

    def table(self) -> pa.Table:
        """``article_key``, ``article_id``: one row per key."""
        with self._lock:
            if not self._keys:
                return pa.table({"article_key": pa.array([], pa.uint64()), "article_id": pa.array([], pa.string())})
            self._compact()
            return pa.table({"article_key": pa.array(self._keys[0]), "article_id": self._names[0]})


def keyed_events(table: pa.Table | pa.RecordBatch, names: ArticleNames) -> pa.Table:
    """Events (with ``user_id`` and ``article_id``, or already keyed) as :data:`KEYED_SCHEMA`.

    Article names go to ``names``. A dictionary-encoded ``article_id`` (as Parquet reads it) is keyed by its
    dictionary alone.
    """
    n = table.num_rows
    if "article_key" in table.column_names:  # keyed already (ingestion's layout read, or held back and released)
        if "held" not in table.column_names:
            table = table.append_column("held", pa.nulls(n, pa.bool_()))
        return pa.Table.from_arrays([table[f.name] for f in KEYED_SCHEMA], schema=KEYED_SCHEMA)
    if "user_key" in table.column_names:
        user_key = table["user_key"]
    else:
        user_key = pa.array(_null_to_zero(hash_ids(table["user_id"]), table["user_id"]))
    articles = table["article_id"]
    if isinstance(articles, pa.ChunkedArray):
        articles = articles.combine_chunks()
    encoded = articles if pa.types.is_dictionary(articles.type) else pc.dictionary_encode(articles)
    dictionary_keys = hash_ids(encoded.dictionary)
    names.add(dictionary_keys, encoded.dictionary)
    article_key = pc.take(pa.array(dictionary_keys), encoded.indices)
    held = table["held"] if "held" in table.column_names else pa.nulls(n, pa.bool_())
    return pa.Table.from_arrays(
        [table["ts"], table["received_at"], click_flags(table["action"]), user_key, article_key, held],
        schema=KEYED_SCHEMA,
    )


_CLICK_OF = pa.array([True, False])  # by the action's place in _ACTIONS


def click_flags(action: pa.Array | pa.ChunkedArray) -> pa.Array:
    """An action column as :data:`KEYED_SCHEMA`'s ``click``: true, false, or null for neither.

    A dictionary-encoded column (as Parquet reads it) is decided on its dictionary alone.
    """
    if isinstance(action, pa.ChunkedArray):
        action = action.combine_chunks()
    if pa.types.is_dictionary(action.type):
        return click_flags(action.dictionary).take(action.indices)
    return _CLICK_OF.take(pc.index_in(action, value_set=_ACTIONS))


def _null_to_zero(keys: np.ndarray, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Key 0 for a null id: no user has it (a user whose id hashes to 0 is dropped from the user table)."""
    if ids.null_count:
        keys[np.asarray(ids.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = 0
    return keys


def count_stream(
    events: pa.RecordBatchReader,
    users: pa.Table,
    spec: WindowSpec = WindowSpec(),
    start: datetime | None = None,
    end: datetime | None = None,
    use_threads: bool = True,
    ordered: bool = False,
    names: ArticleNames | None = None,
) -> tuple[WindowCounts, int]:
    """Count a stream of event batches in one streaming Arrow plan.

    Returns the counts and the number of events read.

    The batches are :data:`COUNT_INPUT_SCHEMA` or :data:`SCAN_SCHEMA` (keyed here, batch by batch), or already
    :data:`KEYED_SCHEMA` with their article names in ``names``. Rows marked ``held`` are neither counted nor read.
    The plan classifies each event (counted, late, invalid, outside), joins the user file once on 64-bit user keys
    (its hash table is built once per stream, not per batch) and counts per (window, fate, action, audience,
    article key). Memory follows the number of groups, not the number of events.
    """
    if "article_key" not in events.schema.names:
        names = ArticleNames()
        events = pa.RecordBatchReader.from_batches(
            KEYED_SCHEMA, (b for t in _batches(events) for b in keyed_events(t, names).to_batches())
        )
    assert names is not None, "keyed events come with their article names"
    status = _status(spec, start, end, held=True).cast(pa.int64())
    # One integer key per (window, fate, action): window start µs × 16 + fate × 2 + is-click.
    packed = pc.add(
        pc.multiply(pc.coalesce(_window_us(spec), pc.scalar(0)), pc.scalar(16)),
        pc.add(pc.multiply(status, pc.scalar(2)), pc.coalesce(pc.field("click"), pc.scalar(False)).cast(pa.int64())),
    )
    # Imported here: pyarrow.acero imports pyarrow.dataset and pandas (half a second, 60 MB), which the line reader
    # processes (tasks.io.line_workers) import this module without needing.
    import pyarrow.acero as acero

    source = acero.Declaration("record_batch_reader_source", acero.RecordBatchReaderSourceNodeOptions(events))
    project = acero.Declaration(
        "project",
        acero.ProjectNodeOptions(
            [packed, pc.field("user_key"), pc.field("article_key")], ["packed", "user_key", "article_key"]
        ),
        inputs=[source],
    )
    people_table, decode = _audience_codes(users)
    people = acero.Declaration("table_source", acero.TableSourceNodeOptions(people_table))
    join = acero.Declaration(
        "hashjoin",
        acero.HashJoinNodeOptions(
            "left outer",
            ["user_key"],
            ["user_key"],
            left_output=["packed", "article_key"],
            right_output=["audience"],
        ),
        inputs=[project, people],
    )
    aggregate = acero.Declaration(
        "aggregate",
        acero.AggregateNodeOptions(
            [([], "hash_count_all", None, "events")], keys=["packed", "audience", "article_key"]
        ),
        inputs=[join],
    )
    out = aggregate.to_table(use_threads=use_threads)
    packed_np = out["packed"].to_numpy()
    code = (packed_np % 16) // 2
    fate = {c: 0 for c in (COUNTED, LATE, INVALID, OUTSIDE)}
    totals = np.bincount(code, weights=out["events"].to_numpy(), minlength=HELD + 1)
    for c in fate:
        fate[c] = int(totals[c])
    counted = code == COUNTED
    click = (packed_np % 2 == 1)[counted]
    n = out["events"].to_numpy()[counted]
    keyed = pa.table(
        {
            "window_start": pa.array(packed_np[counted] // 16),
            "audience": out["audience"].filter(pa.array(counted)),
            "article_key": out["article_key"].filter(pa.array(counted)),
            "impressions": pa.array(np.where(click, 0, n)),
            "clicks": pa.array(np.where(click, n, 0)),
        }
    )
    del out, packed_np, code, counted, click, n  # a million groups each: memory peaks here, so free them now
    # Impressions and clicks of one group were two rows (the action is in the key): one row each.
    keyed = keyed.group_by(["window_start", "audience", "article_key"], use_threads=False).aggregate(
        [("impressions", "sum"), ("clicks", "sum")]
    )
    article_names = names.table()
    at = pc.index_in(keyed["article_key"], value_set=article_names["article_key"])
    counts = (
        decode(
            pa.table(
                {
                    "window_start": keyed["window_start"].cast(pa.int64()).cast(TS),
                    "audience": keyed["audience"],
                    "article_id": pc.take(article_names["article_id"], at),
                    "impressions": keyed["impressions_sum"],
                    "clicks": keyed["clicks_sum"],
                }
            )
        )
        .select(COUNT_SCHEMA.names)
        .cast(COUNT_SCHEMA)
    )
    # Sorting a million groups costs more than a second; only callers that compare results ask for it.
    result = WindowCounts(canonical(counts) if ordered else counts, fate[LATE], fate[INVALID], fate[OUTSIDE])
    return result, sum(fate.values())


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _audience_codes(users: pa.Table) -> tuple[pa.Table, Any]:
    """Users as (user_key, audience code): a 64-bit key joins and one integer groups much faster than texts.

    Returns the table to join and a function that turns ``audience`` back into ``gender`` and ``segment_id``. A
    user listed twice (or two users whose ids hash alike) keeps the first row: joining both would count that user's
    events twice.
    """
    keys = hash_ids(users["user_id"])
    if users.num_rows:
        _, first = np.unique(keys, return_index=True)
        first = np.sort(first[keys[first] != 0])
        if len(first) < users.num_rows:
            users, keys = users.take(pa.array(first)), keys[first]
    g = pc.dictionary_encode(users["gender"]).combine_chunks()
    s = pc.dictionary_encode(users["segment_id"]).combine_chunks()
    width = len(s.dictionary) + 1
    gi = pc.fill_null(g.indices.cast(pa.int32()), -1).to_numpy() + 1
    si = pc.fill_null(s.indices.cast(pa.int32()), -1).to_numpy() + 1
    table = pa.table({"user_key": pa.array(keys, pa.uint64()), "audience": pa.array(gi * width + si, pa.int32())})

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
    table = scored_pairs(counts, now, params, first_seen, spec)
    if per_audience is not None:
        table = best_per_audience(table, per_audience)
    return table.to_pylist()


SCORED_SCHEMA = pa.schema(
    [
        ("gender", pa.string()),
        ("segment_id", pa.string()),
        ("article_id", pa.string()),
        ("impressions", pa.int64()),
        ("clicks", pa.int64()),
        ("ctr", pa.float64()),
        ("age_minutes", pa.float64()),
        ("velocity", pa.float64()),
        ("score", pa.float64()),
    ]
)


def scored_pairs(
    counts: pa.Table,
    now: datetime,
    params: ScoreParams = ScoreParams(),
    first_seen: Mapping[str, datetime] | None = None,
    spec: WindowSpec = WindowSpec(),
) -> pa.Table:
    """Every fresh (gender, segment, article) pair with its score, best first within each audience.

    See :func:`score_articles`.
    """
    width = int(spec.width.total_seconds())
    latest_start = datetime.fromtimestamp(((int(now.timestamp()) - width) // width) * width, tz=now.tzinfo)
    baseline_from = latest_start - spec.width * params.baseline_windows
    recent = counts.filter(pc.greater_equal(counts["window_start"], pa.scalar(now - params.max_age, TS)))
    if recent.num_rows == 0:
        return SCORED_SCHEMA.empty_table()
    # Audiences and articles as integer codes: group sums are bincounts, the order one lexsort.
    gender = pc.dictionary_encode(recent["gender"]).combine_chunks()
    segment = pc.dictionary_encode(recent["segment_id"]).combine_chunks()
    article = pc.dictionary_encode(recent["article_id"]).combine_chunks()
    n_segments, n_articles = len(segment.dictionary) + 1, max(len(article.dictionary), 1)
    audience = (pc.fill_null(gender.indices.cast(pa.int64()), -1).to_numpy() + 1) * n_segments + (
        pc.fill_null(segment.indices.cast(pa.int64()), -1).to_numpy() + 1
    )
    article_code = article.indices.cast(pa.int64()).to_numpy()
    groups = pc.dictionary_encode(pa.array(audience * n_articles + article_code))
    group = groups.indices.to_numpy()
    pair = groups.dictionary.to_numpy()
    n = len(pair)
    ws = recent["window_start"].cast(pa.int64()).to_numpy()
    imps_row = recent["impressions"].to_numpy().astype(np.float64)
    clicks_row = recent["clicks"].to_numpy().astype(np.float64)
    events = imps_row + clicks_row
    latest_us, base_us = _epoch_us(latest_start), _epoch_us(baseline_from)
    imps = np.bincount(group, weights=imps_row, minlength=n)
    clicks = np.bincount(group, weights=clicks_row, minlength=n)
    current = np.bincount(group, weights=np.where(ws == latest_us, events, 0.0), minlength=n)
    baseline = np.bincount(group, weights=np.where((ws >= base_us) & (ws < latest_us), events, 0.0), minlength=n)
    del imps_row, clicks_row, events, group, groups, audience  # one value a row: free them before the pairs
    # Each article's first-seen time: its earliest window here, or its publication time when given.
    earliest = np.full(n_articles, np.iinfo(np.int64).max)
    np.minimum.at(earliest, article_code, ws)
    if first_seen:
        known = pa.array(list(first_seen), pa.string())
        at = pc.fill_null(pc.index_in(article.dictionary, value_set=known), -1).to_numpy()
        published = np.array([_epoch_us(t) for t in first_seen.values()], np.int64)
        earliest = np.where(at >= 0, published[np.maximum(at, 0)], earliest)
    pair_article, pair_audience = pair % n_articles, pair // n_articles
    now_us = int(now.timestamp() * 1_000_000)
    age_s = np.maximum(now_us - earliest[pair_article], 0) / 1e6
    ctr = (clicks + params.alpha) / (imps + params.alpha + params.beta)
    decay = np.power(0.5, age_s / params.half_life.total_seconds())
    velocity = (current + 1.0) / (baseline / params.baseline_windows + 1.0)
    score = ctr * decay * (1 + params.velocity_weight * np.tanh(np.log(velocity)))
    # Order: gender, then segment (ascending, unknown last), score descending, article id ascending.
    genders, segments = gender.dictionary.to_pylist(), segment.dictionary.to_pylist()
    g_of, s_of = pair_audience // n_segments - 1, pair_audience % n_segments - 1
    audiences = np.unique(pair_audience)
    named = sorted(
        audiences.tolist(),
        key=lambda c: (
            (1, "") if c // n_segments == 0 else (0, genders[c // n_segments - 1]),
            (1, "") if c % n_segments == 0 else (0, segments[c % n_segments - 1]),
        ),
    )
    audience_rank = np.zeros(int(audiences.max()) + 1, np.int64)
    audience_rank[named] = np.arange(len(named))
    article_rank = np.empty(n_articles, np.int64)
    article_rank[pc.array_sort_indices(article.dictionary).to_numpy()] = np.arange(len(article.dictionary))
    fresh = np.flatnonzero(age_s <= params.max_age.total_seconds())
    order = fresh[np.lexsort((article_rank[pair_article[fresh]], -score[fresh], audience_rank[pair_audience[fresh]]))]

    def text(dictionary: pa.Array, codes: np.ndarray) -> pa.Array:
        return pc.take(dictionary.cast(pa.string()), pa.array(codes, mask=codes < 0))

    return pa.table(
        {
            "gender": text(gender.dictionary, g_of[order]),
            "segment_id": text(segment.dictionary, s_of[order]),
            "article_id": pc.take(article.dictionary.cast(pa.string()), pa.array(pair_article[order])),
            "impressions": pa.array(imps[order].astype(np.int64)),
            "clicks": pa.array(clicks[order].astype(np.int64)),
            "ctr": pa.array(ctr[order]),
            "age_minutes": pa.array(age_s[order] / 60),
            "velocity": pa.array(velocity[order]),
            "score": pa.array(score[order]),
        },
        schema=SCORED_SCHEMA,
    )


def best_per_audience(ordered: pa.Table, n: int) -> pa.Table:
    """The first ``n`` rows of each (gender, segment) run of a :func:`scored_pairs` table."""
    if not ordered.num_rows:
        return ordered
    # Rank within each audience run of the sorted table: position minus the run's first position.
    audience = pc.binary_join_element_wise(
        pc.fill_null(ordered["gender"], "\x00"), pc.fill_null(ordered["segment_id"], "\x00"), "\x1f"
    )
    codes = pc.dictionary_encode(audience).combine_chunks().indices.to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    first = np.maximum.accumulate(np.isin(np.arange(len(codes)), starts) * np.arange(len(codes)))
    return ordered.filter(pa.array(np.arange(len(codes)) - first < n))


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


def closed_hours(hours: Sequence[datetime], now: datetime, spec: WindowSpec) -> list[datetime]:
    """The hours of ``hours`` no event can still be on time in at ``now``: their last window has closed."""
    return [h for h in hours if h + timedelta(hours=1) + spec.lateness <= now]


def over_invalid_share(invalid: int, lines: int, max_share: float) -> bool:
    """Whether ``invalid`` of ``lines`` is more than ``max_share`` (an hour without lines never is)."""
    return lines > 0 and invalid / lines > max_share


def late_note(late: int, events: int, lateness: timedelta) -> str | None:
    """A plain sentence when most events of a run were late (a replay of history looks like that), else None."""
    if not late or late * 2 <= events:
        return None
    return (
        f"most events were late: {late:,} of {events:,} arrived after their window closed "
        f"(lateness {int(lateness.total_seconds())} s); to rebuild history from a replay, count by event time alone "
        "with `keyflow trends backfill --ignore-lateness`"
    )
