"""RabbitMQ (Amazon MQ for RabbitMQ) as an event source: manual acknowledgement, a dead-letter queue with reasons.

Messages are taken with ``basic_get``-free consuming (``consume`` with a prefetch window) and acknowledged only
when the caller says their batch is stored; a consumer that dies leaves them unacknowledged, and the broker
delivers them again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions

from config.errors import RetryableError
from tasks.transforms.events import Message


class EventSource(Protocol):
    """Where events come from: batches of messages, acknowledged after they are stored."""

    def batches(self, size: int, max_events: int, max_seconds: float, idle_seconds: float) -> Iterator[list[Message]]:
        """Yield batches of up to ``size`` messages until a limit on events, time or idleness is reached."""

    def ack(self, batch: list[Message]) -> None:
        """Acknowledge a stored batch so that the broker drops it."""

    def dead_letter(self, message: Message, reason: str) -> bool:
        """Move one message to the dead-letter queue with ``reason``; whether it was moved."""

    def close(self) -> None:
        """Close the connection."""


class RabbitMQSource:
    """One connection and channel to a durable queue, with a durable dead-letter queue beside it."""

    def __init__(self, url: str, password: str | None, queue: str, dead_letter_queue: str, prefetch: int) -> None:
        parts = urlsplit(url)
        user = unquote(parts.username or "guest")
        if password is None and user == "guest":
            password = "guest"  # RabbitMQ's loopback-only default account
        host = parts.hostname or "127.0.0.1"
        netloc = f"{quote(user, safe='')}:{quote(password or '', safe='')}@{host}:{parts.port or 5672}"
        params = pika.URLParameters(urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")))
        params.heartbeat = 60
        params.blocked_connection_timeout = 60
        self.queue = queue
        self.dead_letter_queue = dead_letter_queue
        try:
            self._conn = pika.BlockingConnection(params)
            self._ch = self._conn.channel()
            self._ch.confirm_delivery()  # a dead-lettered message is on the broker before its original is acked
            for name in (queue, dead_letter_queue):
                self._ch.queue_declare(queue=name, durable=True)
            self._ch.basic_qos(prefetch_count=prefetch)
        except pika.exceptions.AMQPError as exc:
            raise RetryableError(f"connect to broker queue {queue!r}: {exc!r}") from None

    def batches(self, size: int, max_events: int, max_seconds: float, idle_seconds: float) -> Iterator[list[Message]]:
        """Batches of up to ``size`` messages until ``max_events``, ``max_seconds`` or ``idle_seconds`` of quiet."""
        deadline = time.monotonic() + max_seconds
        taken = 0
        batch: list[Message] = []
        try:
            for method, props, body in self._ch.consume(self.queue, auto_ack=False, inactivity_timeout=idle_seconds):
                if method is not None:
                    batch.append(_message(method, props, body))
                    taken += 1
                quiet = method is None
                if batch and (len(batch) >= size or quiet or taken >= max_events or time.monotonic() >= deadline):
                    yield batch
                    batch = []
                if quiet or taken >= max_events or time.monotonic() >= deadline:
                    break
        except pika.exceptions.AMQPError as exc:
            raise RetryableError(f"read from broker queue {self.queue!r}: {exc!r}") from None
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._ch.cancel()  # unacknowledged messages beyond the last ack go back to the queue

    def ack(self, batch: list[Message]) -> None:
        """Acknowledge every message of a stored batch (one frame: the last tag, ``multiple``)."""
        if not batch:
            return
        try:
            self._ch.basic_ack(delivery_tag=max(m.tag for m in batch), multiple=True)
        except pika.exceptions.AMQPError as exc:
            raise RetryableError(f"acknowledge on {self.queue!r}: {exc!r}") from None

    def dead_letter(self, message: Message, reason: str) -> bool:
        """Put a poison message on the dead-letter queue with its reason (confirmed by the broker)."""
        try:
            self._ch.basic_publish(
                exchange="",
                routing_key=self.dead_letter_queue,
                body=message.body,
                properties=pika.BasicProperties(
                    delivery_mode=2,
                    headers={"x-keyflow-reason": reason[:1000], "x-keyflow-queue": self.queue},
                    message_id=message.source_id,
                ),
                mandatory=True,
            )
        except pika.exceptions.AMQPError as exc:
            raise RetryableError(f"dead-letter to {self.dead_letter_queue!r}: {exc!r}") from None
        return True

    def close(self) -> None:
        """Close the connection, ignoring a broker that is already gone."""
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._conn.close()


def _message(method: Any, props: Any, body: bytes) -> Message:
    stamp = getattr(props, "timestamp", None)
    # The producer's timestamp property survives redelivery; our clock does not (it only stands in when absent).
    sent = datetime.fromtimestamp(stamp, tz=UTC) if isinstance(stamp, int) and stamp > 0 else None
    return Message(
        body=body,
        received_at=sent or datetime.now(UTC),
        source_id=getattr(props, "message_id", None),
        tag=method.delivery_tag,
        sent_at=sent,
    )
