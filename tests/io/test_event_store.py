"""The events table and the article lookup on the moto server: unprocessed keys retried, an outage is retryable."""

from __future__ import annotations

from typing import Any

import pytest

from config.errors import RetryableError
from tasks.io.event_store import ArticleDirectory
from tasks.transforms.events import TTLCache
from tests.helpers.services import free_port


def test_lookup_retries_unprocessed_keys_and_caches_answers(aws_endpoint: str, names: dict[str, str]) -> None:
    articles = ArticleDirectory(names["keys_table"] + "_a", "us-east-1", aws_endpoint, TTLCache())
    articles.ensure()
    articles.put({f"a{i}": i % 2 == 0 for i in range(150)})
    real = articles._ddb.batch_get_item
    calls = []

    def partial(RequestItems: dict[str, Any]) -> dict[str, Any]:
        # moto never leaves keys unprocessed: hold back the last ten of the first call, as DynamoDB may.
        calls.append(1)
        ((table, req),) = RequestItems.items()
        if len(calls) == 1:
            out = real(RequestItems={table: {**req, "Keys": req["Keys"][:-10]}})
            out["UnprocessedKeys"] = {table: {**req, "Keys": req["Keys"][-10:]}}
            return out
        return real(RequestItems=RequestItems)

    articles._ddb = type("Ddb", (), {"batch_get_item": staticmethod(partial)})()
    wanted = [f"a{i}" for i in range(150)] + ["missing"]
    live = articles.live(wanted)
    assert live == {f"a{i}": i % 2 == 0 for i in range(150)}  # "missing" is unknown, not live and not retired
    assert len(calls) == 3  # 100 keys, the 10 left over, then the last 51
    articles.live(wanted)
    assert len(calls) == 3  # every answer, "unknown" included, came from the cache


def test_a_lookup_outage_is_retryable_never_invalid() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    articles = ArticleDirectory("keyflow_articles", "us-east-1", endpoint, TTLCache())
    with pytest.raises(RetryableError, match="read keyflow_articles: "):
        articles.live(["a1"])
    assert len(articles.cache) == 0  # nothing was remembered as unknown
