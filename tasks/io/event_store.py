"""DynamoDB sides of event ingestion: the events table (idempotent by event id) and the article reference table.

Both batch their calls (BatchGetItem of 100 keys, BatchWriteItem of 25 items) and retry what DynamoDB leaves
unprocessed with jittered exponential backoff; throttling that outlasts the retries is a :class:`RetryableError`,
never a lost or "invalid" event.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from config.errors import RetryableError
from tasks.io.aws import DynamoTable, translate
from tasks.transforms.events import Event, TTLCache

MAX_TRIES = 10


def _backoff(attempt: int) -> None:
    time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))


def _call(fn: Callable[..., Any], what: str, **kwargs: Any) -> Any:
    for attempt in range(MAX_TRIES):
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            err = translate(exc, what)
            # Throttling gets more tries here; connection trouble was already retried by botocore.
            if isinstance(exc, ClientError) and isinstance(err, RetryableError) and attempt < MAX_TRIES - 1:
                _backoff(attempt)
                continue
            raise err from exc
    raise RetryableError(f"{what}: still failing after {MAX_TRIES} tries")  # pragma: no cover


def batch_get(ddb: Any, table: str, key: str, ids: Iterable[str], attributes: list[str]) -> dict[str, dict[str, Any]]:
    """Items by ``key`` for ``ids`` (absent ids are absent), unprocessed keys retried."""
    out: dict[str, dict[str, Any]] = {}
    wanted = list(dict.fromkeys(ids))
    names = {f"#a{i}": a for i, a in enumerate([key, *attributes])}
    for i in range(0, len(wanted), 100):
        pending: dict[str, Any] = {
            table: {
                "Keys": [{key: {"S": k}} for k in wanted[i : i + 100]],
                "ProjectionExpression": ", ".join(names),
                "ExpressionAttributeNames": names,
                "ConsistentRead": True,
            }
        }
        for attempt in range(MAX_TRIES):
            resp = _call(ddb.batch_get_item, f"read {table}", RequestItems=pending)
            for item in resp.get("Responses", {}).get(table, []):
                out[item[key]["S"]] = item
            pending = resp.get("UnprocessedKeys") or {}
            if not pending:
                break
            _backoff(attempt)
        else:
            raise RetryableError(f"read {table}: keys still unprocessed after {MAX_TRIES} tries")
    return out


def batch_put(ddb: Any, table: str, items: list[dict[str, Any]], parallel: int = 4) -> int:
    """Write items 25 at a time, ``parallel`` requests in flight; returns how many.

    Unprocessed items are retried with jittered backoff. Raises when any chunk cannot be written (the caller does not
    acknowledge).
    """

    def one(chunk: list[dict[str, Any]]) -> None:
        pending: dict[str, Any] = {table: [{"PutRequest": {"Item": it}} for it in chunk]}
        for attempt in range(MAX_TRIES):
            resp = _call(ddb.batch_write_item, f"write {table}", RequestItems=pending)
            pending = resp.get("UnprocessedItems") or {}
            if not pending:
                return
            _backoff(attempt)
        raise RetryableError(f"write {table}: items still unprocessed after {MAX_TRIES} tries")

    chunks = [items[i : i + 25] for i in range(0, len(items), 25)]
    if len(chunks) <= 1 or parallel <= 1:
        for chunk in chunks:
            one(chunk)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(one, chunks))  # list(): re-raise the first failure
    return len(items)


class EventTable(DynamoTable):
    """The events table: one item per event id; each item names the archive file that holds the event."""

    key_schema = (("event_id", "HASH"),)

    def archived_in(self, ids: Iterable[str]) -> dict[str, str]:
        """For the ids already stored: the archive object each was written to."""
        items = batch_get(self._ddb, self.table, "event_id", ids, ["archive_key"])
        return {k: v.get("archive_key", {}).get("S", "") for k, v in items.items()}

    def put(self, events: list[Event], archive_key: str) -> int:
        """Store events (an event id stored twice stays one item)."""
        items = [
            {
                "event_id": {"S": e.event_id},
                "ts": {"S": e.ts.isoformat()},
                "article_id": {"S": e.article_id},
                "user_id": {"S": e.user_id},
                "action": {"S": e.action},
                "received_at": {"S": e.received_at.isoformat()},
                "archive_key": {"S": archive_key},
            }
            for e in events
        ]
        return batch_put(self._ddb, self.table, items)

    def scan_ids(self) -> list[str]:
        """Every stored event id (tests and benchmarks read the sink back with it)."""
        ids: list[str] = []
        for page in self._ddb.get_paginator("scan").paginate(TableName=self.table, ProjectionExpression="event_id"):
            ids += [it["event_id"]["S"] for it in page.get("Items", [])]
        return ids


class ArticleDirectory(DynamoTable):
    """Which articles exist and are live, from a DynamoDB table, behind a TTL + LRU cache shared by threads."""

    key_schema = (("article_id", "HASH"),)

    def __init__(
        self, table: str, region: str, endpoint_url: str | None, cache: TTLCache, kms_key_id: str | None = None
    ) -> None:
        super().__init__(table, region, endpoint_url, kms_key_id)
        self.cache = cache

    def live(self, article_ids: Iterable[str]) -> dict[str, bool]:
        """``article_id → live`` for the known ones; unknown ids are absent. A lookup outage raises, and retries."""
        found, missing = self.cache.get_many(article_ids)
        if missing:
            items = batch_get(self._ddb, self.table, "article_id", missing, ["live"])
            fetched = {k: bool(v.get("live", {}).get("BOOL", False)) for k, v in items.items()}
            # "Unknown" is cached too (as None), so a flood of one bad id does not hammer the table.
            self.cache.put_many({k: fetched.get(k) for k in missing})
            found.update(fetched)
        return {k: v for k, v in found.items() if v is not None}

    def is_empty(self) -> bool:
        """Whether the table holds no article at all (one Scan of one item: every event would be unknown)."""
        resp = _call(
            self._ddb.scan, f"read {self.table}", TableName=self.table, Limit=1, ProjectionExpression="article_id"
        )
        return not resp.get("Items")

    def put(self, articles: Mapping[str, bool]) -> None:
        """Add or update articles (tests, demos and the benchmark seed the table with it)."""
        batch_put(self._ddb, self.table, [{"article_id": {"S": k}, "live": {"BOOL": v}} for k, v in articles.items()])
