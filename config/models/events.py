"""``config/events/*.yaml``: one event ingestion from a broker queue or stream into DynamoDB and an S3 archive."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from config.models.common import Ident, SecretRef, _FileModel, _Model, _relative_key


class RabbitMQSourceConfig(_Model):
    """A RabbitMQ (or Amazon MQ for RabbitMQ) queue: messages are acknowledged only after their batch is stored."""

    kind: Literal["rabbitmq"]
    url: str = Field("amqp://guest@127.0.0.1:5672/%2F", description="AMQP URL without password")
    password: SecretRef | None = Field(None, description="defaults to $KEYFLOW_BROKER_PASSWORD, else 'guest'")
    queue: str = Field(min_length=1, max_length=255)
    dead_letter_queue: str = Field(min_length=1, max_length=255, description="poison messages go here with a reason")
    prefetch: int = Field(1000, ge=1, le=65_535, description="unacknowledged messages held at once")

    @field_validator("url")
    @classmethod
    def _no_password(cls, v: str) -> str:
        if re.match(r"^amqps?://[^/@:]*:[^/@]+@", v):
            raise ValueError("a password in a URL would live in YAML; remove it and set 'password'")
        return v


class KinesisSourceConfig(_Model):
    """A Kinesis stream: shards read in order, checkpoints in DynamoDB advanced only after a batch is stored."""

    kind: Literal["kinesis"]
    stream: str = Field(min_length=1, max_length=128)
    checkpoint_table: str = Field("keyflow_checkpoints", min_length=3, max_length=255)
    start: Literal["TRIM_HORIZON", "LATEST"] = Field(
        "TRIM_HORIZON", description="where a shard without a checkpoint is read from"
    )


class ReferenceConfig(_Model):
    """Where events are checked: a DynamoDB table of articles (``article_id``, ``live``), cached in process."""

    table: str = Field("keyflow_articles", min_length=3, max_length=255)
    cache_ttl_seconds: int = Field(600, ge=0, le=86_400, description="how long a lookup is trusted")
    cache_max_entries: int = Field(100_000, ge=0, le=10_000_000)


class EventsConfig(_FileModel):
    """One event ingestion: a broker queue into a DynamoDB events table and an hour-partitioned S3 archive."""

    name: Ident
    description: str = ""
    source: RabbitMQSourceConfig | KinesisSourceConfig = Field(discriminator="kind")
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)  # type: ignore[arg-type]
    events_table: str = Field("keyflow_events", min_length=3, max_length=255, description="DynamoDB, key event_id")
    archive_prefix: str = Field("events/archive", min_length=1, max_length=512, description="trend scoring reads it")
    rejected_prefix: str = Field("events/rejected", min_length=1, max_length=512)
    batch_size: int = Field(500, ge=1, le=10_000, description="messages stored and acknowledged together")
    max_events: int = Field(100_000, ge=1, le=100_000_000, description="a drain stops after this many messages")
    max_seconds: float = Field(240, gt=0, le=86_400, description="a drain stops after this long")
    idle_seconds: float = Field(2.0, gt=0, le=600, description="a drain stops when the queue is quiet this long")

    @field_validator("archive_prefix", "rejected_prefix")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _relative_key(v)
