"""Tasks of event ingestion: drain a broker queue into the DynamoDB events table and the S3 archive, exactly once.

Per batch: parse and check every message; poison messages go to the dead-letter queue with their reason; events
of unknown or retired articles go to the rejected archive with theirs; the rest are stored, and only then is the
batch acknowledged. A crash anywhere before the acknowledgement makes the broker deliver the batch again, and the
second pass stores nothing twice:

1. the events table is asked which ids are already stored and in which archive file;
2. an event whose archive file exists is a duplicate (the crash came after its write) and is skipped (a file that
   compaction replaced exists through its hour's manifest);
3. the others are written to the events table naming a fresh archive file, then that file is written.

A crash between 3's two writes leaves items naming a file that does not exist; the redelivery sees that and
writes them again, into a new file. So every event ends in exactly one archive file and one item.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task

from config.models import EventsConfig, Profile
from tasks.io.archive import archived_file_exists, event_file_key, write_event_file
from tasks.io.broker import EventSource
from tasks.io.event_store import ArticleDirectory, EventTable
from tasks.io.objectstore import ObjectStore
from tasks.resources import Resources, resources_for
from tasks.retries import DRAIN_IO
from tasks.transforms.events import (
    Event,
    Message,
    Rejected,
    by_hour,
    check_reference,
    first_of_each,
    jsonl,
    parse_event,
)


@dataclass
class DrainSummary:
    """What a drain did; ``received = stored + duplicates + rejected + dead_lettered``."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    batches: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    unknown_only_batches: int = 0  # batches whose every event named an article the reference table lacks
    warnings: list[str] = field(default_factory=list)

    def add(self, other: DrainSummary) -> None:
        """Add another drain's counts and files to this one."""
        counts = ("received", "stored", "duplicates", "rejected", "dead_lettered", "batches", "unknown_only_batches")
        for name in counts:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.files += other.files

    def as_row(self) -> dict[str, Any]:
        """The summary as one table row: the number of files instead of their names, the warnings as one text."""
        row = asdict(self)
        row["files"] = len(self.files)
        row["warnings"] = "; ".join(self.warnings)
        return row


class EventSinks:
    """The events table, the article lookup and the archive bucket of one ingestion."""

    def __init__(self, job: EventsConfig, table: EventTable, articles: ArticleDirectory, store: ObjectStore) -> None:
        self.job = job
        self.table = table
        self.articles = articles
        self.store = store
        self._archive_exists: dict[str, bool] = {}

    def _exists(self, key: str) -> bool:
        # The file itself, or (once trend scoring compacted its hour) the compacted file the hour's manifest says
        # now holds its events.
        if key not in self._archive_exists:
            self._archive_exists[key] = archived_file_exists(self.store, self.job.archive_prefix, key)
        return self._archive_exists[key]

    def store_batch(self, messages: list[Message], source: EventSource) -> DrainSummary:
        """Store one batch; after it returns, the batch may be acknowledged."""
        out = DrainSummary(received=len(messages), batches=1)
        parsed = [(m, parse_event(m)) for m in messages]
        poison: list[Rejected] = []
        for m, r in parsed:
            if isinstance(r, Rejected):
                if not source.dead_letter(m, r.reason):
                    poison.append(r)  # no dead-letter queue (Kinesis): the rejected archive keeps it
                out.dead_lettered += 1
        events = [r for _, r in parsed if isinstance(r, Event)]
        unique = first_of_each(events)
        out.duplicates += len(events) - len(unique)
        live = self.articles.live({e.article_id for e in unique})
        good, bad = check_reference(unique, live)
        stored_in = self.table.archived_in(e.event_id for e in good)
        fresh = [e for e in good if not (e.event_id in stored_in and self._exists(stored_in[e.event_id]))]
        out.duplicates += len(good) - len(fresh)
        batch_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        for hour, group in sorted(by_hour(fresh).items()):
            key = event_file_key(self.job.archive_prefix, hour, batch_id)
            self.table.put(group, key)  # items first: a crash now leaves them naming a file that is not there
            write_event_file(self.store, self.job.archive_prefix, hour, batch_id, jsonl(e.as_json() for e in group))
            self._archive_exists[key] = True
            out.files.append(key)
        out.stored += len(fresh)
        if unique and len(bad) == len(unique) and all(e.article_id not in live for e, _ in bad):
            out.unknown_only_batches = 1
        if bad or poison:
            rejected = [Rejected(Message(b"", e.received_at), reason, e).as_json() for e, reason in bad]
            rejected += [p.as_json() for p in poison]
            first = bad[0][0].received_at if bad else poison[0].message.received_at
            hour = first.replace(minute=0, second=0, microsecond=0)
            write_event_file(self.store, self.job.rejected_prefix, hour, batch_id, jsonl(rejected))
            out.rejected += len(bad)
        return out


def drain(
    job: EventsConfig, sinks: EventSinks, source: EventSource, max_events: int, max_seconds: float
) -> DrainSummary:
    """Store and acknowledge batches until the limits or a quiet queue; the summary of everything done.

    The summary warns (once) when the article reference table is empty, or else when every event of a batch named
    an article the table does not know: such events are rejected, not lost, but a drain that rejects everything
    is almost always a table that was never filled, and must not pass for a quiet success.
    """
    started = time.perf_counter()
    total = DrainSummary()
    table = job.reference.table
    if sinks.articles.is_empty():
        total.warnings.append(
            f"the article table {table} is empty: every event is rejected as an unknown article until it is filled"
        )
    for batch in source.batches(job.batch_size, max_events, max_seconds, job.idle_seconds):
        summary = sinks.store_batch(batch, source)
        source.ack(batch)
        total.add(summary)
    if total.unknown_only_batches and not total.warnings:
        total.warnings.append(
            f"every event of {total.unknown_only_batches} batch(es) named an article the table {table} does not "
            "know: is it filled and up to date?"
        )
    total.seconds = round(time.perf_counter() - started, 3)
    return total


def open_sinks(job: EventsConfig, resources: Resources) -> EventSinks:
    """The sinks of an ingestion, their tables created when missing."""
    table = resources.event_table(job)
    table.ensure()
    articles = resources.articles(job)
    articles.ensure()
    return EventSinks(job, table, articles, resources.object_store())


def sinks_for(job: EventsConfig, profile: Profile) -> EventSinks:
    """The sinks of an ingestion from a bare profile (scripts and tests; the flow passes its run's resources)."""
    return open_sinks(job, resources_for(profile))


@task(name="drain_events", **DRAIN_IO)
def drain_events(job: EventsConfig, resources: Resources, max_events: int, max_seconds: float) -> DrainSummary:
    """Drain up to ``max_events`` messages or ``max_seconds`` from the broker into DynamoDB and the archive."""
    logger = get_run_logger()
    sinks = open_sinks(job, resources)
    source = resources.open_event_source(job)
    try:
        summary = drain(job, sinks, source, max_events, max_seconds)
    finally:
        source.close()
    logger.info(
        "Drained %d message(s) from %s in %.1f s: %d stored, %d duplicate(s), %d rejected, %d dead-lettered",
        summary.received,
        job.source.stream if job.source.kind == "kinesis" else job.source.queue,
        summary.seconds,
        summary.stored,
        summary.duplicates,
        summary.rejected,
        summary.dead_lettered,
    )
    for warning in summary.warnings:
        logger.warning("%s", warning)
    return summary
