"""Kinesis as an event source: per-shard iterators, checkpoints in DynamoDB advanced only after a batch is stored.

- A shard is read from its checkpoint (``AFTER_SEQUENCE_NUMBER``), or from ``TRIM_HORIZON`` the first time.
- A child shard (after a split or merge) is read only once its parents are finished, so a key's events stay in order.
- A shard is finished when Kinesis ends its iterator (``NextShardIterator`` absent), or, for a closed shard, when
  the checkpoint has reached its ending sequence number (the emulator never ends a closed shard's iterator).
- An expired iterator is fetched again from the checkpoint.
One consumer per (stream, job) at a time: the deployments' concurrency limit of 1 keeps it so.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from config.errors import RetryableError
from tasks.io.aws import DynamoTable, client, translate
from tasks.transforms.events import Message

LEASE_GRACE_SECONDS = 60  # a drain's lease outlives its time limit by this much (a crashed holder frees it then)


class BusyError(RetryableError):
    """Another consumer holds the lease of this job's stream."""


class CheckpointTable(DynamoTable):
    """Per (consumer, shard): the last stored sequence number and whether the shard is finished."""

    key_schema = (("lease", "HASH"),)

    def get(self, consumer: str, shard: str) -> tuple[str | None, bool]:
        """The last stored sequence number of a shard (None before the first) and whether it is finished."""
        try:
            item = self._ddb.get_item(
                TableName=self.table, Key={"lease": {"S": f"{consumer}#{shard}"}}, ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"read checkpoint {consumer}#{shard}") from exc
        if not item:
            return None, False
        return item.get("sequence", {}).get("S"), bool(item.get("finished", {}).get("BOOL", False))

    def acquire(self, consumer: str, owner: str, seconds: float) -> str | None:
        """Take (or renew) the consumer's lease for ``seconds``; None when taken, else the live holder's name.

        One drain per (job, stream) at a time: a second one would read the same shards, and two writers of one
        event could both miss each other in the events table and archive it twice. A lease expires on its own; one
        held by a dead process of this same host is taken over at once.
        """
        holder = self._put_lease(consumer, owner, seconds, None)
        if holder is not None and _dead_here(holder):
            holder = self._put_lease(consumer, owner, seconds, holder)
        return holder

    def _put_lease(self, consumer: str, owner: str, seconds: float, stale: str | None) -> str | None:
        now = time.time()
        condition = "attribute_not_exists(lease) OR #o = :me OR expires_at < :now"
        values: dict[str, Any] = {":me": {"S": owner}, ":now": {"N": f"{now:.3f}"}}
        if stale is not None:
            condition += " OR #o = :stale"
            values[":stale"] = {"S": stale}
        try:
            self._ddb.put_item(
                TableName=self.table,
                Item={
                    "lease": {"S": f"{consumer}#lease"},
                    "owner": {"S": owner},
                    "expires_at": {"N": f"{now + seconds:.3f}"},
                },
                ConditionExpression=condition,
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise translate(exc, f"take the lease of {consumer}") from exc
            item = self._ddb.get_item(
                TableName=self.table, Key={"lease": {"S": f"{consumer}#lease"}}, ConsistentRead=True
            ).get("Item", {})
            return str(item.get("owner", {}).get("S", "another consumer"))
        except BotoCoreError as exc:
            raise translate(exc, f"take the lease of {consumer}") from exc
        return None

    def release(self, consumer: str, owner: str) -> None:
        """Give the lease back (only if it is still ours)."""
        try:
            self._ddb.delete_item(
                TableName=self.table,
                Key={"lease": {"S": f"{consumer}#lease"}},
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": owner}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise translate(exc, f"release the lease of {consumer}") from exc

    def save(self, consumer: str, shard: str, sequence: str | None, finished: bool = False) -> None:
        """Record the last stored sequence number of a shard and whether it is finished."""
        item: dict[str, Any] = {
            "lease": {"S": f"{consumer}#{shard}"},
            "finished": {"BOOL": finished},
            "updated_at": {"S": datetime.now(UTC).isoformat()},
        }
        if sequence is not None:
            item["sequence"] = {"S": sequence}
        try:
            self._ddb.put_item(TableName=self.table, Item=item)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"write checkpoint {consumer}#{shard}") from exc


def check_stream(stream: str, region: str, endpoint_url: str | None = None) -> list[str]:
    """Problems with a Kinesis stream before a drain: it exists and can be read.

    A quick client; a missing stream or a refused grant is a problem, connection trouble raises
    :class:`RetryableError`.
    """
    kinesis = client("kinesis", region, endpoint_url, quick=True)
    try:
        kinesis.describe_stream_summary(StreamName=stream)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return [f"source.stream: Kinesis stream {stream!r} does not exist"]
        raise translate(exc, f"Kinesis stream {stream}") from exc
    except BotoCoreError as exc:
        raise translate(exc, f"Kinesis stream {stream}") from exc
    return []


class KinesisSource:
    """Records of one stream as batches of messages; acknowledging a batch advances its shard's checkpoint."""

    def __init__(
        self,
        stream: str,
        region: str,
        endpoint_url: str | None,
        checkpoints: CheckpointTable,
        consumer: str,
        start: str = "TRIM_HORIZON",
    ) -> None:
        self.stream = stream
        self.checkpoints = checkpoints
        self.consumer = consumer
        self.start = start
        self._k = client("kinesis", region, endpoint_url)
        self._iterators: dict[str, str | None] = {}
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._leased = False
        self._ending: dict[str, str] = {}  # shard -> ending sequence number, for closed shards
        self._ended: set[str] = set()  # shards whose iterator Kinesis ended

    def _shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamName": self.stream}
        try:
            while True:
                page = self._k.list_shards(**kwargs)
                shards += page.get("Shards", [])
                if not page.get("NextToken"):
                    return shards
                kwargs = {"NextToken": page["NextToken"]}
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"list shards of {self.stream}") from exc

    def ready_shards(self) -> list[str]:
        """Shards to read now: not finished, and every parent (still listed) finished."""
        shards = self._shards()
        listed = {s["ShardId"] for s in shards}
        finished = {s["ShardId"] for s in shards if self.checkpoints.get(self.consumer, s["ShardId"])[1]}
        ready = []
        for s in shards:
            sid = s["ShardId"]
            ending = s.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
            if ending:
                self._ending[sid] = ending
            parents = [p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p and p in listed]
            if sid not in finished and all(p in finished for p in parents):
                ready.append(sid)
        return sorted(ready)

    def _iterator(self, shard: str) -> str:
        it = self._iterators.get(shard)
        if it:
            return it
        sequence, _ = self.checkpoints.get(self.consumer, shard)
        kwargs: dict[str, Any] = {"StreamName": self.stream, "ShardId": shard}
        if sequence:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=sequence)
        else:
            kwargs.update(ShardIteratorType=self.start)
        try:
            it = self._k.get_shard_iterator(**kwargs)["ShardIterator"]
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"shard iterator of {self.stream}/{shard}") from exc
        self._iterators[shard] = it
        return str(it)

    def _read(self, shard: str, limit: int) -> list[dict[str, Any]]:
        for _ in range(2):
            try:
                out = self._k.get_records(ShardIterator=self._iterator(shard), Limit=limit)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ExpiredIteratorException":
                    self._iterators.pop(shard, None)  # fetched again from the checkpoint
                    continue
                raise translate(exc, f"read {self.stream}/{shard}") from exc
            except BotoCoreError as exc:
                raise translate(exc, f"read {self.stream}/{shard}") from exc
            self._iterators[shard] = out.get("NextShardIterator")
            if out.get("NextShardIterator") is None:
                self._ended.add(shard)
            return list(out.get("Records", []))
        return []

    def _finish_if_done(self, shard: str) -> None:
        sequence, _ = self.checkpoints.get(self.consumer, shard)
        ending = self._ending.get(shard)
        reached = ending is not None and sequence is not None and int(sequence) >= int(ending)
        if shard in self._ended or reached:
            self.checkpoints.save(self.consumer, shard, sequence, finished=True)

    def batches(self, size: int, max_events: int, max_seconds: float, idle_seconds: float) -> Iterator[list[Message]]:
        """Batches of one shard's records, oldest first, until the limits or every shard has been quiet a while."""
        deadline = time.monotonic() + max_seconds
        quiet_since = time.monotonic()
        taken = 0
        holder = self.checkpoints.acquire(self.consumer, self.owner, max_seconds + LEASE_GRACE_SECONDS)
        if holder is not None:
            raise BusyError(f"stream {self.stream}: job {self.consumer} is being drained by {holder}; try again later")
        self._leased = True
        while taken < max_events and time.monotonic() < deadline:
            shards = self.ready_shards()
            if not shards:
                return
            got_any = False
            for shard in shards:
                records = self._read(shard, min(size, max_events - taken, 10_000))
                if records:
                    got_any = True
                    taken += len(records)
                    yield [_message(shard, r) for r in records]
                else:
                    self._finish_if_done(shard)
                if taken >= max_events or time.monotonic() >= deadline:
                    return
            if got_any:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= idle_seconds:
                return
            else:
                time.sleep(0.2)

    def ack(self, batch: list[Message]) -> None:
        """Advance the shard's checkpoint to the batch's last record (the batch is stored)."""
        if not batch:
            return
        shard = batch[0].tag[0]
        last = max((m.tag[1] for m in batch), key=int)
        self.checkpoints.save(self.consumer, shard, last)

    def dead_letter(self, message: Message, reason: str) -> bool:
        """Kinesis has no dead-letter queue: the caller writes poison records to the rejected archive."""
        return False

    def close(self) -> None:
        """Forget the shard iterators and release the lease when held."""
        self._iterators.clear()
        if self._leased:
            self.checkpoints.release(self.consumer, self.owner)
            self._leased = False


def _dead_here(owner: str) -> bool:
    """Whether a lease owner (``host:pid:nonce``) is a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _message(shard: str, record: dict[str, Any]) -> Message:
    arrived = record.get("ApproximateArrivalTimestamp")
    arrived = arrived.astimezone(UTC) if isinstance(arrived, datetime) else datetime.now(UTC)
    seq = str(record["SequenceNumber"])
    # Kinesis's arrival time is part of the record: a re-read keeps it, so ids derived from it stay stable.
    return Message(record["Data"], arrived, source_id=f"{shard}:{seq}", tag=(shard, seq), sent_at=arrived)
