"""Activity events: parse, identify and check one message, and shape a batch for the sinks. Pure.

An event is ``{"event_id", "ts", "article_id", "user_id", "action"}`` with ``action`` in click|impression. The
original three-field form (``article_id``, ``user_id``, ``action``) is accepted: the event time is then the arrival
time, and the id is derived from the message's identity at the source (broker message id or stream sequence number)
or, without one, from its bytes and arrival time, so a redelivered message keeps its id.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ACTIONS = ("click", "impression")
MAX_MESSAGE_BYTES = 64 * 1024
_TEXT_FIELDS = ("event_id", "article_id", "user_id")


@dataclass(frozen=True)
class Message:
    """One message as a source hands it over: its bytes, arrival time and identity at the source."""

    body: bytes
    received_at: datetime
    source_id: str | None = None  # AMQP message_id, Kinesis shard + sequence number
    tag: Any = None  # what the source needs to acknowledge it (delivery tag, sequence number)
    sent_at: datetime | None = None  # the producer's own timestamp, when it sets one (kept on redelivery)


@dataclass(frozen=True)
class Event:
    """A well-formed event."""

    event_id: str
    ts: datetime
    article_id: str
    user_id: str
    action: str
    received_at: datetime

    def as_json(self) -> dict[str, str]:
        """The event as a JSON-ready dict, timestamps in ISO 8601."""
        return {
            "event_id": self.event_id,
            "ts": self.ts.isoformat(),
            "article_id": self.article_id,
            "user_id": self.user_id,
            "action": self.action,
            "received_at": self.received_at.isoformat(),
        }


@dataclass(frozen=True)
class Rejected:
    """A message that is not a usable event, with the reason a person can act on."""

    message: Message
    reason: str
    event: Event | None = None

    def as_json(self) -> dict[str, Any]:
        """The rejection as a JSON-ready dict: reason, time, the event when parsed, else the raw body."""
        body = self.message.body[:MAX_MESSAGE_BYTES].decode("utf-8", errors="replace")
        out: dict[str, Any] = {"reason": self.reason, "received_at": self.message.received_at.isoformat()}
        if self.message.source_id:
            out["source_id"] = self.message.source_id
        out["event"] = self.event.as_json() if self.event else None
        out["body"] = None if self.event else body
        return out


def derive_id(message: Message) -> str:
    """A deterministic id for an event its producer sent without one."""
    h = hashlib.sha256()
    if message.source_id:
        h.update(b"source:" + message.source_id.encode())
    else:
        # Only what survives a redelivery: the bytes and the producer's timestamp (never our clock).
        h.update(b"body:" + message.body + b"@" + (message.sent_at.isoformat().encode() if message.sent_at else b""))
    return "kf-" + h.hexdigest()[:32]


def _parse_ts(value: Any) -> datetime:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("'ts' must be an ISO 8601 time or epoch seconds")
    if isinstance(value, str):
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        ts = datetime.fromtimestamp(float(value), tz=UTC)
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    if ts.year < 1970:  # windows are epoch arithmetic; no activity event predates the epoch
        raise ValueError(f"{ts.isoformat()} is before 1970")
    return ts


def parse_event(message: Message) -> Event | Rejected:
    """Turn one message into an :class:`Event`, or a :class:`Rejected` that says what is wrong with it."""
    if len(message.body) > MAX_MESSAGE_BYTES:
        return Rejected(message, f"message is {len(message.body)} bytes; at most {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(message.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejected(message, f"not JSON: {exc}")
    if not isinstance(data, dict):
        return Rejected(message, f"not a JSON object: {type(data).__name__}")
    missing = [f for f in ("article_id", "user_id", "action") if f not in data or data[f] in (None, "")]
    if missing:
        return Rejected(message, f"missing field(s): {', '.join(missing)}")
    for name in _TEXT_FIELDS:
        value = data.get(name)
        if value is not None and not isinstance(value, str | int) or isinstance(value, bool):
            return Rejected(message, f"{name!r} must be a string, got {type(value).__name__}")
        if value is not None and len(str(value)) > 256:
            return Rejected(message, f"{name!r} is longer than 256 characters")
    if data["action"] not in ACTIONS:
        return Rejected(message, f"unknown action {data['action']!r} (known: {', '.join(ACTIONS)})")
    try:
        ts = _parse_ts(data["ts"]) if data.get("ts") is not None else message.received_at
    except (ValueError, OverflowError, OSError) as exc:
        return Rejected(message, f"bad 'ts': {exc}")
    event_id = str(data["event_id"]) if data.get("event_id") not in (None, "") else derive_id(message)
    return Event(event_id, ts, str(data["article_id"]), str(data["user_id"]), data["action"], message.received_at)


def check_reference(events: Iterable[Event], live: Mapping[str, bool]) -> tuple[list[Event], list[tuple[Event, str]]]:
    """Split events into those whose article exists and is live, and the rest with their reason."""
    good: list[Event] = []
    bad: list[tuple[Event, str]] = []
    for e in events:
        state = live.get(e.article_id)
        if state is None:
            bad.append((e, f"unknown article {e.article_id!r}"))
        elif not state:
            bad.append((e, f"article {e.article_id!r} is not live"))
        else:
            good.append(e)
    return good, bad


def first_of_each(events: Iterable[Event]) -> list[Event]:
    """One event per id (the first seen): a producer's retry must not become a second event."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e)
    return out


def jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """JSON lines, one object per line."""
    return b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in rows)


def by_hour(events: Iterable[Event]) -> dict[datetime, list[Event]]:
    """Events grouped by the hour of their event time (the archive's partitions)."""
    out: dict[datetime, list[Event]] = {}
    for e in events:
        out.setdefault(e.ts.replace(minute=0, second=0, microsecond=0), []).append(e)
    return out


@dataclass
class TTLCache:
    """A thread-safe cache with a time to live and least-recently-used eviction.

    ``clock`` is injectable so tests can move time; values may be any object, including False (a known "no").
    """

    ttl_seconds: float = 600.0
    max_entries: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _data: OrderedDict[str, tuple[float, Any]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    hits: int = 0
    misses: int = 0

    def get_many(self, keys: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
        """Cached values of ``keys`` that are still fresh, and the keys to look up."""
        found: dict[str, Any] = {}
        missing: list[str] = []
        now = self.clock()
        with self._lock:
            for k in dict.fromkeys(keys):
                entry = self._data.get(k)
                if entry is not None and entry[0] > now:
                    self._data.move_to_end(k)
                    found[k] = entry[1]
                    self.hits += 1
                else:
                    if entry is not None:
                        del self._data[k]
                    missing.append(k)
                    self.misses += 1
        return found, missing

    def put_many(self, values: Mapping[str, Any]) -> None:
        """Cache ``values`` until the TTL, evicting the least recently used beyond ``max_entries``."""
        expires = self.clock() + self.ttl_seconds
        with self._lock:
            for k, v in values.items():
                self._data[k] = (expires, v)
                self._data.move_to_end(k)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
