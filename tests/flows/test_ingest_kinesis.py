"""Event ingestion from Kinesis (moto server): checkpoints advance only after a batch is stored, a restart
resumes from them, parent shards are read to the end before their children, an expired iterator is renewed."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tasks.ingest import drain, sinks_for
from tasks.io.aws import client
from tasks.resources import event_source_for
from tests.helpers.events import archived, crash_drain, event, ingestion

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def setup(tmp_path: Path, names: dict[str, str], make_profile: Any, aws_endpoint: str) -> Any:
    stream = names["keys_table"] + "-stream"
    source = {"kind": "kinesis", "stream": stream, "checkpoint_table": names["keys_table"] + "_cp"}
    job_path, profile_path, job, profile, sinks = ingestion(tmp_path, names, make_profile(), source, batch_size=40)
    sinks.articles.put({"a1": True})
    kinesis = client("kinesis", "us-east-1", aws_endpoint)
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream)
    return job_path, profile_path, job, profile, sinks, kinesis, stream


def put(kinesis: Any, stream: str, bodies: list[bytes]) -> None:
    for i, body in enumerate(bodies):
        kinesis.put_record(StreamName=stream, Data=body, PartitionKey=f"user-{i % 5}")


def drain_all(job: Any, profile: Any, sinks: Any = None, source: Any = None) -> Any:
    source = source or event_source_for(profile, job)
    try:
        return drain(job, sinks or sinks_for(job, profile), source, 10_000, 60)
    finally:
        source.close()


def test_stream_resumes_from_checkpoints_and_poison_is_archived(setup: Any) -> None:
    job_path, profile_path, job, profile, sinks, kinesis, stream = setup
    put(kinesis, stream, [event(i) for i in range(150)] + [b"not json", json.dumps({"article_id": "a1"}).encode()])
    first = drain_all(job, profile)
    assert (first.received, first.stored, first.dead_lettered) == (152, 150, 2)
    ids = archived(profile, job)
    assert len(ids) == 150 and set(ids.values()) == {1}
    assert drain_all(job, profile).received == 0  # everything before the checkpoints is done
    put(kinesis, stream, [event(i) for i in range(150, 170)])
    assert drain_all(job, profile).stored == 20
    assert len(archived(profile, job)) == 170


def test_a_crash_after_storing_resumes_without_loss_or_doubles(setup: Any) -> None:
    job_path, profile_path, job, profile, sinks, kinesis, stream = setup
    put(kinesis, stream, [event(i) for i in range(200)])
    crash_drain(job_path, profile_path, "after_first_ack")
    partial = archived(profile, job)
    assert 40 < len(partial) < 200  # one batch acknowledged, a second stored but not checkpointed
    again = drain_all(job, profile)
    assert again.duplicates == 40  # the stored-but-unacknowledged batch is read again and skipped
    ids = archived(profile, job)
    assert len(ids) == 200 and set(ids.values()) == {1}
    assert sorted(sinks.table.scan_ids()) == sorted(ids)


def test_parents_before_children_and_expired_iterators(setup: Any) -> None:
    job_path, profile_path, job, profile, sinks, kinesis, stream = setup
    put(kinesis, stream, [event(i) for i in range(60)])
    parent = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent, NewStartingHashKey=str(2**126))
    put(kinesis, stream, [event(i) for i in range(60, 90)])
    children = {s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"] if s.get("ParentShardId")}
    assert children

    source = event_source_for(profile, job)
    before = source.ready_shards()
    assert parent in before and not children & set(before)  # children wait for their parent to finish
    real_read = source._k.get_records
    expired = collections.Counter[str]()

    def get_records(**kw: Any) -> Any:
        # moto's iterators never expire: refuse the first two calls as Kinesis does after five minutes.
        if expired["n"] < 2:
            expired["n"] += 1
            raise ClientError({"Error": {"Code": "ExpiredIteratorException", "Message": "expired"}}, "GetRecords")
        return real_read(**kw)

    source._k = type(
        "K",
        (),
        {
            **{n: getattr(source._k, n) for n in ("list_shards", "get_shard_iterator")},
            "get_records": staticmethod(get_records),
        },
    )()
    summary = drain_all(job, profile, sinks, source)
    assert expired["n"] == 2
    assert summary.stored == 90
    assert len(archived(profile, job)) == 90
    # The closed parent was read to its end (moto keeps appending to a split parent, and never ends its
    # iterator, so the end is its ending sequence number); only then do the children become readable.
    assert source.checkpoints.get(job.name, parent)[1] is True
    assert children <= set(source.ready_shards()) and parent not in source.ready_shards()


def test_one_drain_per_stream_at_a_time(setup: Any) -> None:
    from tasks.io.stream import BusyError

    job_path, profile_path, job, profile, sinks, kinesis, stream = setup
    put(kinesis, stream, [event(i) for i in range(50)])
    first = event_source_for(profile, job)
    batches = first.batches(10, 1_000, 30, 1)
    next(batches)  # the first drain holds the lease while it reads
    second = event_source_for(profile, job)
    with pytest.raises(BusyError, match=f"is being drained by {first.owner}"):
        drain(job, sinks, second, 1_000, 5)
    batches.close()
    first.close()  # gives the lease back
    third = event_source_for(profile, job)
    try:
        assert drain(job, sinks, third, 1_000, 30).received == 50  # nothing was acknowledged by the first
    finally:
        third.close()
    assert len(archived(profile, job)) == 50
