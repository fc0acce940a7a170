"""Trend counts in PostgreSQL (idempotent upsert) and rankings in DynamoDB (TTL, unprocessed items retried)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest

from tasks.io.trend_store import TrendCounts, TrendServing
from tasks.transforms.trends import COUNT_SCHEMA
from tests.helpers.services import PG_URL

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)


def counts(imps: int) -> pa.Table:
    return pa.table(
        {
            "window_start": [T0, T0],
            "gender": ["f", None],
            "segment_id": ["s1", None],
            "article_id": ["a1", "a1"],
            "impressions": [imps, 1],
            "clicks": [1, 0],
        },
        schema=COUNT_SCHEMA,
    )


def test_rewriting_a_window_is_idempotent_including_unknown_users(pg: Any, names: dict[str, str]) -> None:
    store = TrendCounts(PG_URL, None, names["wh_schema"])
    end = T0 + dt.timedelta(minutes=1)
    try:
        store.ensure()
        store.ensure()
        assert store.replace_windows(T0, end, counts(5)) == 2
        store.replace_windows(T0, end, counts(5))  # the same window again: replaced, not added
        got = store.since(T0).sort_by([("gender", "ascending", "at_end")])
        assert got.to_pylist() == counts(5).to_pylist()
        store.replace_windows(T0, end, counts(9))  # a late correction of the window replaces it
        assert sorted(store.since(T0)["impressions"].to_pylist()) == [1, 9]
        assert store.since(T0 + dt.timedelta(minutes=1)).num_rows == 0
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_rankings_with_ttl_and_unprocessed_items_retried(aws_endpoint: str, names: dict[str, str]) -> None:
    serving = TrendServing(names["keys_table"] + "_top", "us-east-1", aws_endpoint)
    serving.ensure()
    real = serving._ddb.batch_write_item
    calls = []

    def throttled(RequestItems: dict[str, Any]) -> dict[str, Any]:
        # moto never returns UnprocessedItems: hold back half of the first batch, as DynamoDB does under load.
        calls.append(1)
        ((table, reqs),) = RequestItems.items()
        if len(calls) == 1 and len(reqs) > 1:
            real(RequestItems={table: reqs[: len(reqs) // 2]})
            return {"UnprocessedItems": {table: reqs[len(reqs) // 2 :]}}
        return real(RequestItems=RequestItems)

    serving._ddb = type("Ddb", (), {"batch_write_item": staticmethod(throttled), "get_item": serving._ddb.get_item})()
    rankings = {(g, s): [{"article_id": f"a{g}{s}", "score": 0.5}] for g in ("f", "m", None) for s in ("s1", "s2")}
    written = serving.put(rankings, T0, ttl_seconds=600)  # a TTL on the items, not a timing
    assert written == 6
    assert len(calls) == 2
    for (g, s), items in rankings.items():
        assert serving.top(g, s) == items
    assert serving.top("x", "nope") == []
    item = serving._ddb.get_item(TableName=serving.table, Key={"audience": {"S": "f#s1"}})["Item"]
    assert int(item["expires_at"]["N"]) == int(T0.timestamp()) + 600


def test_replacing_windows_is_exact_and_keeps_empty_text_apart_from_null(pg: Any, names: dict[str, str]) -> None:
    store = TrendCounts(PG_URL, None, names["wh_schema"])
    try:
        store.ensure()
        t1 = T0 + dt.timedelta(minutes=1)
        first = pa.table(
            {
                "window_start": [T0, T0, t1],
                "gender": ["", None, "f"],
                "segment_id": ['s,"1"', None, "s1"],
                "article_id": ["a1", "a1", "a2"],
                "impressions": [3, 1, 7],
                "clicks": [1, 0, 2],
            },
            schema=COUNT_SCHEMA,
        )
        assert store.replace_windows(T0, T0 + dt.timedelta(minutes=2), first) == 3
        got = store.since(T0).sort_by([("window_start", "ascending"), ("gender", "ascending", "at_end")])
        assert got.to_pylist() == first.to_pylist()
        # A recount of the first window alone: its rows are replaced, the second window's stay.
        store.replace_windows(T0, t1, first.slice(0, 1))
        assert sorted(store.since(T0)["impressions"].to_pylist()) == [3, 7]
        with pytest.raises(ValueError, match="counts hold windows outside"):
            store.replace_windows(T0, t1, first)
        assert store.last_end("job") is None
        store.advance("job", t1)
        store.advance("job", T0)  # a backfill of older windows never moves the watermark back
        assert store.last_end("job") == t1
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")
