"""Drain events in this process and die with os._exit at a chosen point, as a killed worker would.

python -m tests.helpers.crash_drain JOB PROFILE before_ack|before_archive
"""

from __future__ import annotations

import os
import sys

from config.loader import load_events, load_profile
from tasks.ingest import drain, sinks_for
from tasks.resources import event_source_for


def main() -> None:
    job_path, profile_path, point = sys.argv[1:4]
    job, profile = load_events(job_path), load_profile(profile_path, environ={})
    sinks = sinks_for(job, profile)
    source = event_source_for(profile, job)
    if point == "before_ack":
        source.ack = lambda batch: os._exit(17)  # type: ignore[method-assign]  # stored, never acknowledged
    elif point == "after_first_ack":
        real_ack = source.ack

        def ack_then_die(batch: list) -> None:
            real_ack(batch)
            source.ack = lambda batch: os._exit(17)  # type: ignore[method-assign]

        source.ack = ack_then_die  # type: ignore[method-assign]
    elif point == "before_archive":
        real = sinks.store.put_bytes
        calls = []

        def put_bytes(data: bytes, key: str, content_type: str = "application/octet-stream") -> None:
            if "/archive/" in f"/{key}" and calls:
                os._exit(17)  # the second archive file: its events are in DynamoDB, the file is not written
            calls.append(key)
            real(data, key, content_type)

        sinks.store.put_bytes = put_bytes  # type: ignore[method-assign]
    drain(job, sinks, source, job.max_events, job.max_seconds)
    os._exit(0)


if __name__ == "__main__":
    main()
