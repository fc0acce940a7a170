"""RabbitMQ (Amazon MQ for RabbitMQ) as an event source: manual acknowledgement, a dead-letter queue with reasons.

Messages are taken with ``basic_get``-free consuming (``consume`` with a prefetch window) and acknowledged only
when the caller says their batch is stored; a consumer that dies leaves them unacknowledged, and the broker
delivers them again.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions

from config.errors import ConfigError, KeyflowError, RetryableError
from tasks.io.net import dns_is_down
from tasks.transforms.events import Message

# pika logs every failed connection at ERROR with a traceback, then raises: keyflow turns what it raises into one
# line (broker_error), so pika's own account would only print the traceback a second time.
logging.getLogger("pika").setLevel(logging.CRITICAL)


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


def broker_error(exc: BaseException, what: str) -> KeyflowError:
    """A pika (or socket) error as keyflow's.

    A refused login or virtual host, a refused permission or a host name that does not resolve is a
    :class:`ConfigError` at once; other connection trouble retries.
    """
    if isinstance(exc, socket.gaierror) and not dns_is_down(exc):
        return ConfigError(f"{what}: the host name does not resolve ({exc.strerror or exc})")
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return ConfigError(f"{what}: ACCESS_REFUSED: the broker refused the user name or password")
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return ConfigError(f"{what}: the virtual host does not exist or the user may not use it")
    closed = pika.exceptions.ConnectionClosedByBroker, pika.exceptions.ChannelClosedByBroker
    if isinstance(exc, closed) and exc.args and exc.args[0] in (403, 404, 406, 530):
        # ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, NOT_ALLOWED: the broker will say the same next time
        return ConfigError(f"{what}: {exc.args[1]}")
    return RetryableError(f"{what}: {exc!r}")


class RabbitMQSource:
    """One connection and channel to a durable queue, with a durable dead-letter queue beside it."""

    def __init__(self, url: str, password: str | None, queue: str, dead_letter_queue: str, prefetch: int) -> None:
        self.queue = queue
        self.dead_letter_queue = dead_letter_queue
        params, self.where = connection_parameters(url, password)
        conn: Any = None
        try:
            conn = self._conn = pika.BlockingConnection(params)
            self._ch = self._conn.channel()
            self._ch.confirm_delivery()  # a dead-lettered message is on the broker before its original is acked
            for name in (queue, dead_letter_queue):
                self._ch.queue_declare(queue=name, durable=True)
            self._ch.basic_qos(prefetch_count=prefetch)
        except (pika.exceptions.AMQPError, OSError) as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            raise broker_error(exc, f"connect to broker queue {queue!r} ({self.where})") from None

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
            raise broker_error(exc, f"read from broker queue {self.queue!r}") from None
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
            raise broker_error(exc, f"acknowledge on {self.queue!r}") from None

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
            raise broker_error(exc, f"dead-letter to {self.dead_letter_queue!r}") from None
        return True

    def close(self) -> None:
        """Close the connection, ignoring a broker that is already gone."""
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._conn.close()


def connection_parameters(url: str, password: str | None) -> tuple[pika.URLParameters, str]:
    """The connection parameters for ``url`` with ``password``, and the broker's name for messages.

    ``guest`` without a password gets RabbitMQ's guest password; the name is ``user@host:port/vhost``, never the
    password.
    """
    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    if password is None and user == "guest":
        password = "guest"  # RabbitMQ's loopback-only default account
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password or '', safe='')}@{host}:{parts.port or 5672}"
    params = pika.URLParameters(urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")))
    params.heartbeat = 60
    params.blocked_connection_timeout = 60
    return params, f"{user}@{host}:{parts.port or 5672}{parts.path or '/'}"


def check_queues(url: str, password: str | None, queues: list[str]) -> list[str]:
    """Problems reaching the broker and its queues, one line each (none: the drain can start).

    Each queue is declared passively: one that does not exist yet is fine (the drain declares it durable), a
    refused login, virtual host or permission is not. Raises :class:`RetryableError` when the broker is down.
    """
    params, where = connection_parameters(url, password)
    params.connection_attempts, params.socket_timeout = 1, 5
    try:
        conn = pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        error = broker_error(exc, f"broker {where}")
        if isinstance(error, RetryableError):
            raise error from None
        return [str(error)]
    problems: list[str] = []
    try:
        for name in queues:
            ch = conn.channel()
            try:
                ch.queue_declare(queue=name, passive=True)
                ch.close()
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:  # a queue not there yet is declared by the drain
                    problems.append(str(broker_error(exc, f"queue {name!r} on {where}")))
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise broker_error(exc, f"broker {where}") from None
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            conn.close()
    return problems


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
