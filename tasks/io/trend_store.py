"""Where trend counts and rankings live: window counts in PostgreSQL (idempotent upsert), top-N in DynamoDB."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from botocore.exceptions import BotoCoreError, ClientError

from config.errors import RetryableError
from tasks.io.aws import DynamoTable, translate
from tasks.io.databases import describe_dsn, pg_connect, pg_dsn, pg_error
from tasks.transforms.sql import qualified
from tasks.transforms.trends import COUNT_SCHEMA


class TrendCounts:
    """Window counts in a PostgreSQL table, and each job's watermark (the end of its last counted range).

    Writing a range replaces that range's rows in one transaction, so re-running windows gives identical rows.
    """

    def __init__(self, url: str, password: str | None, schema: str, table: str = "trend_counts") -> None:
        self._dsn = pg_dsn(url, password, "keyflow-trends")
        self.schema = schema
        self.target = qualified(schema, table, "postgres")
        self.runs = qualified(schema, "keyflow_trend_runs", "postgres")

    def _connect(self) -> Any:
        return pg_connect(self._dsn, "trend counts database")

    def _run(self, work: Any) -> Any:
        """``work(cursor)`` in one transaction; connection trouble is a :class:`RetryableError`."""
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                return work(cur)
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:  # InterfaceError: dropped mid-work
            raise pg_error(exc, "trend counts database", where=describe_dsn(self._dsn)) from None
        finally:
            conn.close()

    def check(self) -> list[str]:
        """Problems before a run, one line each: the database reached, the schema there or creatable.

        Connection trouble raises :class:`RetryableError`, a wrong password or database :class:`ConfigError`.
        """

        def work(cur: Any) -> tuple[Any, ...]:
            cur.execute(
                "SELECT current_user, has_database_privilege(current_database(), 'CREATE'), "
                "(SELECT has_schema_privilege(nspname, 'CREATE') FROM pg_namespace WHERE nspname = %s)",
                (self.schema,),
            )
            return tuple(cur.fetchone())

        try:
            user, create_schema, in_schema = self._run(work)
        except psycopg2.Error as exc:
            raise pg_error(exc, "trend counts database", where=describe_dsn(self._dsn)) from None
        if in_schema is None and not create_schema:
            return [f"counts_schema: schema {self.schema!r} does not exist and {user} may not create it"]
        if in_schema is False:
            return [f"counts_schema: {user} may not create tables in schema {self.schema!r}"]
        return []

    def ensure(self) -> None:
        """Create the schema, the counts table and the watermark table when missing."""

        def work(cur: Any) -> None:
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            cur.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.target} (
                  window_start TIMESTAMPTZ NOT NULL, gender TEXT, segment_id TEXT, article_id TEXT NOT NULL,
                  impressions BIGINT NOT NULL, clicks BIGINT NOT NULL,
                  UNIQUE NULLS NOT DISTINCT (window_start, gender, segment_id, article_id))"""
            )
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self.runs} (job TEXT PRIMARY KEY, last_end TIMESTAMPTZ NOT NULL, "
                "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )

        self._run(work)

    def replace_windows(self, start: datetime, end: datetime, counts: pa.Table) -> int:
        """Replace the counts of every window in ``[start, end)`` by ``counts``, atomically; returns rows written."""
        data = counts.select(COUNT_SCHEMA.names).cast(COUNT_SCHEMA)
        outside = pc.or_(pc.less(data["window_start"], start), pc.greater_equal(data["window_start"], end))
        if data.num_rows and pc.any(outside).as_py():
            raise ValueError(f"counts hold windows outside [{start.isoformat()}, {end.isoformat()})")
        buf = io.BytesIO()
        pacsv.write_csv(data, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))

        def work(cur: Any) -> None:
            cur.execute(f"DELETE FROM {self.target} WHERE window_start >= %s AND window_start < %s", (start, end))  # noqa: S608
            buf.seek(0)
            cur.copy_expert(
                f"COPY {self.target} ({', '.join(COUNT_SCHEMA.names)}) FROM STDIN WITH (FORMAT csv)",
                buf,
            )

        self._run(work)
        return data.num_rows

    def since(self, start: datetime, end: datetime | None = None) -> pa.Table:
        """Counts of the windows starting in ``[start, end)`` (no upper bound when ``end`` is None)."""

        def work(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(
                f"SELECT window_start, gender, segment_id, article_id, impressions, clicks FROM {self.target} "  # noqa: S608
                "WHERE window_start >= %s AND (%s::timestamptz IS NULL OR window_start < %s)",
                (start, end, end),
            )
            return list(cur.fetchall())

        rows = self._run(work)
        cols: list[Any] = list(zip(*rows, strict=True)) if rows else [() for _ in COUNT_SCHEMA]
        return pa.table({f.name: pa.array(list(c), f.type) for f, c in zip(COUNT_SCHEMA, cols, strict=True)})

    @contextmanager
    def lock(self, name: str) -> Iterator[bool]:
        """Hold PostgreSQL's advisory lock ``name`` for the block; yields False when another session holds it.

        The lock belongs to this block's own connection: a process that dies releases it with its connection.
        """
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,))
                got = bool(cur.fetchone()[0])
            conn.commit()
            yield got
        except psycopg2.OperationalError as exc:
            raise pg_error(exc, "warehouse") from None
        finally:
            conn.close()

    def last_end(self, job: str) -> datetime | None:
        """The end of the last range the job counted, or None before its first run."""

        def work(cur: Any) -> datetime | None:
            cur.execute(f"SELECT last_end FROM {self.runs} WHERE job = %s", (job,))  # noqa: S608
            row = cur.fetchone()
            return row[0] if row else None

        return self._run(work)

    def advance(self, job: str, end: datetime) -> None:
        """Move the job's watermark forward to ``end`` (never back: a backfill of old dates leaves it)."""
        self._run(
            lambda cur: cur.execute(
                f"INSERT INTO {self.runs} (job, last_end) VALUES (%s, %s) ON CONFLICT (job) DO UPDATE "  # noqa: S608
                "SET last_end = GREATEST(EXCLUDED.last_end, keyflow_trend_runs.last_end), updated_at = now()",
                (job, end),
            )
        )


class TrendServing(DynamoTable):
    """Top-N articles per (gender, segment) in a DynamoDB table, each item with a TTL attribute."""

    key_schema = (("audience", "HASH"),)

    def ensure(self) -> bool:
        """Create the serving table (SSE with KMS) and switch on its TTL attribute, when missing."""
        if not super().ensure():
            return False
        try:
            self._ddb.update_time_to_live(
                TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
            )
        except ClientError as exc:
            raise translate(exc, f"enable TTL on {self.table}") from exc
        return True

    @staticmethod
    def audience(gender: str | None, segment: str | None) -> str:
        """The item's audience key: ``gender#segment``, ``-`` for any."""
        return f"{gender or '-'}#{segment or '-'}"

    def put(self, rankings: Mapping[tuple[Any, Any], Sequence[dict[str, Any]]], now: datetime, ttl_seconds: int) -> int:
        """Write every audience's ranking (one item each), retrying unprocessed items with jittered backoff."""
        expires = int(now.timestamp()) + ttl_seconds
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        "audience": {"S": self.audience(g, s)},
                        "computed_at": {"S": now.isoformat()},
                        "expires_at": {"N": str(expires)},
                        "articles": {"S": json.dumps(list(items), default=str)},
                    }
                }
            }
            for (g, s), items in rankings.items()
        ]
        for i in range(0, len(requests), 25):
            pending = {self.table: requests[i : i + 25]}
            for attempt in range(8):
                try:
                    out = self._ddb.batch_write_item(RequestItems=pending)
                except (ClientError, BotoCoreError) as exc:
                    raise translate(exc, f"write rankings to {self.table}") from exc
                pending = out.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))
            else:
                raise RetryableError(f"write rankings to {self.table}: items still unprocessed after 8 tries")
        return len(requests)

    def top(self, gender: str | None, segment: str | None) -> list[dict[str, Any]] | None:
        """The stored ranking of one audience (empty when none).

        None when no ranking was ever published (the table is not there yet).
        """
        try:
            item = self._ddb.get_item(
                TableName=self.table, Key={"audience": {"S": self.audience(gender, segment)}}, ConsistentRead=True
            ).get("Item")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise translate(exc, f"read rankings from {self.table}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"read rankings from {self.table}") from exc
        return json.loads(item["articles"]["S"]) if item else []
