"""Redshift's direct mode (a psycopg2 connection): a key's load checked as the statements it sends, in order, in one
transaction. The Data API mode runs for real on the stand-in (tests/io/test_redshift_data_api.py)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest

from config.errors import ReconciliationError
from config.types import parse_type
from tasks.io.warehouse import RedshiftWarehouse
from tasks.transforms.sql import TableSpec
from tasks.transforms.staging import StagedKey, StagedPart

SPEC = TableSpec("analytics", "facts", "campaign_key", (("campaign_key", parse_type("text"), False),))


class RecordingConnection:
    """Stands in for a Redshift connection: records statements, answers counts."""

    def __init__(self, copied: int, counted: int) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.answers = {"pg_last_copy_count": copied, "count(*)": counted}
        self.committed = self.rolled_back = False

    def cursor(self) -> RecordingConnection:
        return self

    def __enter__(self) -> RecordingConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: str, params: Any = None) -> None:
        self.statements.append((sql, params))

    def fetchone(self) -> tuple[int]:
        last = self.statements[-1][0]
        return (next(v for k, v in self.answers.items() if k in last),)

    def commit(self) -> None:
        self.committed = True

    def rollback(self) -> None:
        self.rolled_back = True


def staged(rows: int) -> StagedKey:
    return StagedKey(
        dataset="facts",
        key="MCS2017",
        run_id="r1",
        run_date="2017-03-20",
        bucket="b",
        prefix="p/",
        manifest_key="p/manifest.json",
        compression="zstd",
        columns=("campaign_key",),
        rows_extracted=rows,
        rows_filtered=0,
        rows_staged=rows,
        bytes_staged=10,
        seconds=0.1,
        parts=(StagedPart("p/part-00000.csv.zst", rows, 10),),
    )


def warehouse(conn: RecordingConnection) -> RedshiftWarehouse:
    wh = RedshiftWarehouse("postgresql://loader@cluster:5439/dw", "pw", "arn:aws:iam::1:role/copy", "eu-west-1")

    @contextmanager
    def connect() -> Any:
        yield conn

    wh.connect = connect  # type: ignore[method-assign]
    return wh


def test_lock_delete_copy_count_commit_in_one_transaction() -> None:
    conn = RecordingConnection(copied=5, counted=5)
    assert warehouse(conn).load_key(SPEC, staged(5), store=None) == 5  # type: ignore[arg-type]
    lock, *sql = [s for s, _ in conn.statements]
    assert lock == 'LOCK "analytics"."facts"'  # first: a second load of the key waits for this one to commit
    assert sql[0] == 'DELETE FROM "analytics"."facts" WHERE "campaign_key" = %s' and conn.statements[1][1] == (
        "MCS2017",
    )
    assert sql[1].startswith('COPY "analytics"."facts" ("campaign_key")\nFROM \'s3://b/p/manifest.json\'\n')
    assert "IAM_ROLE 'arn:aws:iam::1:role/copy'" in sql[1] and "MANIFEST" in sql[1] and "REGION 'eu-west-1'" in sql[1]
    assert sql[2] == "SELECT pg_last_copy_count()"
    assert sql[3].startswith("SELECT count(*)")
    assert sql[4].startswith('DELETE FROM "analytics"."keyflow_loads"') and sql[5].startswith("INSERT INTO")
    assert conn.statements[6][1][:5] == ("facts", "MCS2017", "2017-03-20", "r1", 5)  # ledger row, same transaction
    assert conn.committed and not conn.rolled_back


def test_count_mismatch_rolls_back() -> None:
    conn = RecordingConnection(copied=5, counted=4)
    with pytest.raises(ReconciliationError, match="extracted=5 staged=5 loaded=4"):
        warehouse(conn).load_key(SPEC, staged(5), store=None)  # type: ignore[arg-type]
    assert conn.rolled_back and not conn.committed


def test_merge_copies_into_a_session_table_then_merges_by_primary_key() -> None:
    from dataclasses import replace

    spec = replace(
        SPEC,
        columns=(("campaign_key", parse_type("text"), False), ("id", parse_type("bigint"), False)),
        load_mode="merge",
        primary_key=("id",),
    )
    conn = RecordingConnection(copied=5, counted=5)
    assert warehouse(conn).load_key(spec, staged(5), store=None) == 5  # type: ignore[arg-type]
    lock, *sql = [s for s, _ in conn.statements]
    assert lock == 'LOCK "analytics"."facts"'
    assert sql[0] == 'CREATE TEMP TABLE "keyflow_merge_stage" (LIKE "analytics"."facts")'
    assert sql[1].startswith('COPY "keyflow_merge_stage" ("campaign_key", "id")\nFROM \'s3://b/p/manifest.json\'')
    assert sql[2] == "SELECT pg_last_copy_count()"
    assert sql[3].startswith(
        'MERGE INTO "analytics"."facts" USING "keyflow_merge_stage" AS s ON "analytics"."facts"."id"'
    )
    assert sql[4].startswith('SELECT count(*) FROM "analytics"."facts" AS t JOIN "keyflow_merge_stage" AS s ON')
    assert sql[5].startswith('DELETE FROM "analytics"."keyflow_loads"') and conn.committed


class UnitConnection(RecordingConnection):
    """Also answers a shared unit's per-key count (``GROUP BY``)."""

    def __init__(self, copied: int, per_key: dict[str, int]) -> None:
        super().__init__(copied, sum(per_key.values()))
        self.per_key = per_key

    def fetchall(self) -> list[tuple[str, int]]:
        assert "GROUP BY" in self.statements[-1][0]
        return list(self.per_key.items())


def staged_unit(counts: dict[str, int]) -> StagedKey:
    from dataclasses import replace

    from tasks.transforms.staging import KeyCounts

    members = tuple(KeyCounts(k, n, 0, n) for k, n in counts.items())
    return replace(staged(sum(counts.values())), key="A..C (3 keys)", members=members)


def test_a_shared_unit_is_one_transaction_deleting_copying_and_counting_every_key() -> None:
    conn = UnitConnection(copied=5, per_key={"A": 2, "C": 3})
    loaded = warehouse(conn).load_unit(SPEC, staged_unit({"A": 2, "B": 0, "C": 3}), store=None)  # type: ignore[arg-type]
    assert loaded == {"A": 2, "B": 0, "C": 3}
    sql = [s for s, _ in conn.statements]
    assert sql[0] == 'DELETE FROM "analytics"."facts" WHERE "campaign_key" IN (%s, %s, %s)'
    assert conn.statements[0][1] == ["A", "B", "C"]
    assert sql[1].startswith('COPY "analytics"."facts" ("campaign_key")\nFROM \'s3://b/p/manifest.json\'\n')
    assert sql[2] == "SELECT pg_last_copy_count()"
    assert sql[3] == (
        'SELECT "campaign_key", count(*) FROM "analytics"."facts" WHERE "campaign_key" IN (%s, %s, %s) '
        'GROUP BY "campaign_key"'
    )
    assert sql[4] == (
        'DELETE FROM "analytics"."keyflow_loads" WHERE dataset = %s AND run_date = %s AND key IN (%s, %s, %s)'
    )
    assert sql[5].startswith('INSERT INTO "analytics"."keyflow_loads"') and len(sql) == 6
    ledger = conn.statements[5][1]
    assert [ledger[i : i + 5] for i in range(0, len(ledger), 6)] == [
        ["facts", "A", "2017-03-20", "r1", 2],
        ["facts", "B", "2017-03-20", "r1", 0],
        ["facts", "C", "2017-03-20", "r1", 3],
    ]
    assert conn.committed and not conn.rolled_back


def test_a_shared_unit_whose_key_count_differs_rolls_back_whole() -> None:
    conn = UnitConnection(copied=5, per_key={"A": 1, "C": 4})
    with pytest.raises(ReconciliationError, match="key 'A': reconciliation failed: extracted=2 staged=2 loaded=1"):
        warehouse(conn).load_unit(SPEC, staged_unit({"A": 2, "C": 3}), store=None)  # type: ignore[arg-type]
    assert conn.rolled_back and not conn.committed
    assert not any("keyflow_loads" in s for s, _ in conn.statements)  # no ledger row for any key of the unit
