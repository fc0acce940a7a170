"""Redshift through the Data API and IAM credentials, on the Redshift stand-in (boto3 over HTTP, SQL on PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pytest

from config.errors import ConfigError, KeyFailedError, RetryableError
from config.types import parse_type
from tasks.io.objectstore import S3ObjectStore
from tasks.io.redshift import DataApi, IamCredentials, RedshiftDataApiWarehouse, StatementLedger
from tasks.io.stager import PartWriter
from tasks.transforms.sql import TableSpec
from tasks.transforms.staging import KeyCounts, StagedKey, redshift_manifest
from tests.helpers.services import unique

ROLE = "arn:aws:iam::123456789012:role/keyflow-copy"


@pytest.fixture()
def schema(pg: Any) -> Iterator[str]:
    name = unique("rs")
    yield name
    with pg.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture()
def store(aws_endpoint: str) -> S3ObjectStore:
    s = S3ObjectStore(unique("rs").replace("_", "-"), "us-east-1", aws_endpoint)
    s.ensure_bucket()
    return s


def api(standin: Any, **kw: Any) -> DataApi:
    args: dict[str, Any] = {"cluster_id": "analytics", "db_user": "loader"} | kw
    return DataApi("us-east-1", standin.endpoint_url, "test", poll_max_seconds=0.1, **args)


def spec(schema: str) -> TableSpec:
    return TableSpec(
        schema,
        "facts",
        "k",
        (("k", parse_type("text"), False), ("label", parse_type("text"), True), ("n", parse_type("bigint"), True)),
    )


def stage(
    store: S3ObjectStore, key: str, rows: list[tuple[Any, ...]], run_id: str = "r1", fmt: str = "csv", batch: int = 0
) -> StagedKey:
    prefix = f"staging/facts/{run_id}/{key}/"
    schema = pa.schema([("k", pa.string()), ("label", pa.string()), ("n", pa.int64())])
    writer = PartWriter(store, prefix, schema, "zstd", 1, 1000, fmt)
    batch = batch or max(len(rows), 1)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        writer.write(pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in chunk], schema=schema))
    parts = writer.close()
    store.put_bytes(redshift_manifest(store.bucket, parts), prefix + "manifest.json", "application/json")
    return StagedKey(
        dataset="facts",
        key=key,
        run_id=run_id,
        run_date="2017-03-20",
        bucket=store.bucket,
        prefix=prefix,
        manifest_key=prefix + "manifest.json",
        compression="zstd",
        columns=("k", "label", "n"),
        rows_extracted=len(rows),
        rows_filtered=0,
        rows_staged=len(rows),
        bytes_staged=sum(p.bytes for p in parts),
        seconds=0.0,
        parts=tuple(parts),
        format=fmt,
    )


def rows_of(pg: Any, schema: str) -> list[tuple[Any, ...]]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT k, label, n FROM {schema}.facts ORDER BY k, n")
        return [tuple(r) for r in cur.fetchall()]


def test_query_binds_named_parameters_and_returns_typed_values(redshift_standin: Any) -> None:
    rows = api(redshift_standin).query(
        "SELECT CAST(:n AS BIGINT) AS n, :s AS s, NULL AS nothing, 'it''s :not_a_param' AS lit",
        {"n": "42", "s": "a'b"},
    )
    assert rows == [[42, "a'b", None, "it's :not_a_param"]]


def test_a_batch_is_one_transaction_and_names_the_failing_statement(
    pg: Any, redshift_standin: Any, schema: str
) -> None:
    data = api(redshift_standin)
    data.run([f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.t (x int)"])
    sid = data.submit([f"INSERT INTO {schema}.t VALUES (1)", "SELECT 1 / 0", f"INSERT INTO {schema}.t VALUES (2)"])
    outcome = data.wait(sid, "test")
    assert (outcome.status, outcome.failed_index) == ("FAILED", 1)
    assert "division by zero" in outcome.error
    with pg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {schema}.t")
        assert cur.fetchone()[0] == 0  # the first insert was rolled back with the batch
    with pytest.raises(KeyFailedError, match="division by zero"):
        data.raise_for(outcome, "test")


def test_a_cancelled_statement_is_aborted_and_retryable(redshift_standin: Any) -> None:
    data = api(redshift_standin)
    redshift_standin.hold = 1.0
    try:
        sid = data.submit(["SELECT 1", "SELECT 2"])
        time.sleep(0.2)
        data._client.cancel_statement(Id=sid)
        outcome = data.wait(sid, "test")
    finally:
        redshift_standin.hold = 0.0
    assert outcome.status == "ABORTED"
    with pytest.raises(RetryableError, match="was aborted"):
        data.raise_for(outcome, "test")


def test_a_request_the_service_refuses_is_a_config_error(redshift_standin: Any) -> None:
    data = api(redshift_standin, db_user=None)  # a cluster without a secret or a db user
    with pytest.raises(ConfigError, match=r"submit keyflow: ValidationException: SecretArn or DbUser is required"):
        data.submit(["SELECT 1"])


def test_iam_credentials_for_a_cluster_and_a_workgroup(redshift_standin: Any) -> None:
    cluster = IamCredentials("us-east-1", redshift_standin.endpoint_url, "dev", cluster_id="c1", db_user="loader")
    user, password = cluster.get()
    assert user == "IAM:loader" and len(password) == 32
    assert cluster.get() == (user, password)  # cached until shortly before they expire
    serverless = IamCredentials("us-east-1", redshift_standin.endpoint_url, "dev", workgroup="wg-analytics")
    assert serverless.get()[0] == "IAMR:keyflow"
    calls = [c[0] for c in redshift_standin.calls if c[0] in ("GetClusterCredentials", "GetCredentials")]
    assert calls[-2:] == ["GetClusterCredentials", "GetCredentials"]


def warehouse(standin: Any, **kw: Any) -> RedshiftDataApiWarehouse:
    return RedshiftDataApiWarehouse(api(standin, **kw), ROLE, "us-east-1", "staging")


def test_load_key_replaces_the_key_in_one_batch(pg: Any, redshift_standin: Any, schema: str, store: Any) -> None:
    wh = warehouse(redshift_standin, workgroup="wg-analytics", cluster_id=None, db_user=None)
    wh.prepare(spec(schema))
    wh.prepare(spec(schema))  # idempotent
    first = stage(store, "K1", [("K1", "a", 1), ("K1", None, 2), ("K1", "", 3)])
    assert wh.load_key(spec(schema), first, store) == 3
    assert rows_of(pg, schema) == [("K1", "a", 1), ("K1", None, 2), ("K1", "", 3)]
    n_batches = len(redshift_standin.submitted_sql())
    assert wh.load_key(spec(schema), stage(store, "K1", [("K1", "b", 9)], "r2"), store) == 1
    assert len(redshift_standin.submitted_sql()) == n_batches + 1  # one request per key load
    batch = redshift_standin.submitted_sql()[-1]
    assert [s.split()[0] for s in batch] == ["LOCK", "DELETE", "COPY", "SELECT", "SELECT", "DELETE", "INSERT"]
    assert rows_of(pg, schema) == [("K1", "b", 9)]
    assert wh.count_key(spec(schema), "K1") == 1
    assert wh.loaded_keys(schema, "facts", "2017-03-20") == {"K1"}
    assert wh.loaded_keys(schema + "_none", "facts", "2017-03-20") == set()
    assert StatementLedger(store, "staging").pending(first) is None  # outcome recorded, ledger entry gone
    wh.load_key(spec(schema), stage(store, "K2", [("K2", "c", 1)], "r2"), store)
    assert wh.delete_other_keys(spec(schema), ["K2"]) == 1
    assert rows_of(pg, schema) == [("K2", "c", 1)]


def test_a_failed_load_keeps_the_previous_rows(pg: Any, redshift_standin: Any, schema: str, store: Any) -> None:
    wh = warehouse(redshift_standin)
    wh.prepare(spec(schema))
    wh.load_key(spec(schema), stage(store, "K1", [("K1", "old", 1)]), store)
    with pg.cursor() as cur:
        cur.execute(f"ALTER TABLE {schema}.facts ADD CONSTRAINT no_poison CHECK (label <> 'poison')")
    with pytest.raises(KeyFailedError, match=r"^key 'K1': load failed, previous rows kept: new row for relation"):
        wh.load_key(spec(schema), stage(store, "K1", [("K1", "new", 1), ("K1", "poison", 2)], "r2"), store)
    assert rows_of(pg, schema) == [("K1", "old", 1)]


def test_a_count_mismatch_rolls_the_key_back(pg: Any, redshift_standin: Any, schema: str, store: Any) -> None:
    wh = warehouse(redshift_standin)
    wh.prepare(spec(schema))
    wh.load_key(spec(schema), stage(store, "K1", [("K1", "old", 1)]), store)
    with pg.cursor() as cur:  # a real fault: a trigger in the warehouse swallows one row
        cur.execute(
            f"CREATE FUNCTION {schema}.swallow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.n = 2 THEN RETURN NULL; END IF; RETURN NEW; END $$"
        )
        cur.execute(
            f"CREATE TRIGGER swallow BEFORE INSERT ON {schema}.facts FOR EACH ROW EXECUTE FUNCTION {schema}.swallow()"
        )
    with pytest.raises(KeyFailedError, match=r"^key 'K1': reconciliation failed: extracted=2 staged=2"):
        wh.load_key(spec(schema), stage(store, "K1", [("K1", "new", 1), ("K1", "x", 2)], "r2"), store)
    assert rows_of(pg, schema) == [("K1", "old", 1)]


def test_parquet_parts_stream_row_groups_and_load_through_copy_format_as_parquet(
    pg: Any, redshift_standin: Any, schema: str, aws_endpoint: str, kms_key_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import pyarrow.parquet as pq

    store = S3ObjectStore(unique("rs").replace("_", "-"), "us-east-1", aws_endpoint, kms_key_id)
    store.ensure_bucket()
    rows = [("K1", None if i % 3 == 0 else ("" if i % 3 == 1 else f"v{i}"), i) for i in range(1500)]
    gathered = stage(store, "K1", rows, fmt="parquet", batch=400)
    first = pq.ParquetFile(pa.BufferReader(store.get_bytes(gathered.parts[0].key)))
    assert first.metadata.num_row_groups == 1  # small batches are gathered (up to ROW_GROUP_BYTES) into one group
    monkeypatch.setattr("tasks.io.stager.ROW_GROUP_BYTES", 1)  # as batches of that size would be written
    staged = stage(store, "K1", rows, fmt="parquet", batch=400)
    assert [p.key.rsplit("/", 1)[1] for p in staged.parts] == ["part-00000.zstd.parquet", "part-00001.zstd.parquet"]
    first = pq.ParquetFile(pa.BufferReader(store.get_bytes(staged.parts[0].key)))
    assert first.metadata.num_row_groups == 3 and first.metadata.num_rows == 1000  # 400 + 400 + 200, as they came
    manifest = json.loads(store.get_bytes(staged.manifest_key))
    for entry, part in zip(manifest["entries"], staged.parts, strict=True):
        head = store.head(part.key)
        assert entry["meta"]["content_length"] == head["ContentLength"]  # Redshift needs it for Parquet manifests
        assert head["ServerSideEncryption"] == "aws:kms"
    wh = warehouse(redshift_standin)
    wh.prepare(spec(schema))
    assert wh.load_key(spec(schema), staged, store) == 1500
    assert rows_of(pg, schema) == sorted(rows, key=lambda r: r[2])
    copy = redshift_standin.submitted_sql()[-1][2]
    assert copy.endswith("FORMAT AS PARQUET\nMANIFEST") and '("k", "label", "n")' in copy


def test_the_stand_in_lists_statements_and_answers_a_batch_sub_statement(redshift_standin: Any) -> None:
    data = api(redshift_standin)
    sid = data.submit(["SELECT 1 AS a", "SELECT NULL::text AS b, 2.5::float8 AS c, true AS d"], name="keyflow probe")
    assert data.wait(sid, "test").status == "FINISHED"
    client = data._client
    assert client.get_statement_result(Id=f"{sid}:2")["Records"] == [
        [{"isNull": True}, {"doubleValue": 2.5}, {"booleanValue": True}]
    ]
    described = client.describe_statement(Id=sid)
    assert [s["Status"] for s in described["SubStatements"]] == ["FINISHED", "FINISHED"]
    listed = client.list_statements(StatementName="keyflow probe", Status="FINISHED")["Statements"]
    assert [(s["Id"], s["IsBatchStatement"]) for s in listed] == [(sid, True)]


def test_check_through_the_data_api_names_drift_its_mode_does_not_accept(
    redshift_standin: Any, schema: str, store: Any
) -> None:
    from dataclasses import replace

    wh = warehouse(redshift_standin)
    assert wh.check(spec(schema), schema) == []  # nothing there yet: created at the first run
    assert wh.check(None, schema) == []
    wh.prepare(spec(schema))
    grown = replace(spec(schema), columns=(*spec(schema).columns, ("qty", parse_type("integer"), True)))
    assert wh.check(grown, schema) == [
        f"target: the dataset now produces column(s) qty that {schema}.facts lacks (target.on_schema_change: "
        "add_columns adds them, ignore leaves them out)"
    ]
    assert wh.check(replace(grown, on_schema_change="add_columns"), schema) == []


def unit(store: S3ObjectStore, rows: list[tuple[Any, ...]], keys: dict[str, tuple[str, ...]], run_id: str) -> StagedKey:
    """A shared unit of ``keys`` (key → its run dates) staged as one manifest, with each key's counts."""
    staged = stage(store, f"{min(keys)}..{max(keys)} ({len(keys)} keys)", rows, run_id)
    counts = {k: sum(r[0] == k for r in rows) for k in keys}
    members = tuple(KeyCounts(k, n, 0, n, keys[k]) for k, n in counts.items())
    return replace(staged, members=members)


def ledger_rows(pg: Any, schema: str) -> list[tuple[Any, ...]]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT key, run_date::text, run_id, rows_loaded FROM {schema}.keyflow_loads ORDER BY 1, 2")
        return [tuple(r) for r in cur.fetchall()]


def test_load_unit_replaces_every_key_in_one_batch_and_a_retry_after_a_crash_waits_for_it(
    pg: Any, redshift_standin: Any, schema: str, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = warehouse(redshift_standin)
    wh.prepare(spec(schema))
    wh.load_key(spec(schema), stage(store, "K3", [("K3", "old", 1)]), store)
    rows = [("K1", "a", 1), ("K1", "b", 2), ("K2", "it's", 3), ("K4", None, 4)]
    staged = unit(store, rows, {"K1": (), "K2": (), "K3": (), "K4": ("2017-03-01", "2017-03-02")}, "r2")
    real_wait = DataApi.wait
    monkeypatch.setattr(DataApi, "wait", lambda self, sid, what: (_ for _ in ()).throw(SystemExit("killed")))
    redshift_standin.hold = 1.0
    try:
        with pytest.raises(SystemExit):
            wh.load_unit(spec(schema), staged, store)  # submitted and recorded, then the worker dies
    finally:
        redshift_standin.hold = 0.0
    monkeypatch.setattr(DataApi, "wait", real_wait)
    submitted = len(redshift_standin.submitted_sql())
    assert StatementLedger(store, "staging").pending(staged) is not None

    assert wh.load_unit(spec(schema), staged, store) == {"K1": 2, "K2": 1, "K3": 0, "K4": 1}

    assert len(redshift_standin.submitted_sql()) == submitted  # waited for, never submitted again
    assert StatementLedger(store, "staging").pending(staged) is None
    assert rows_of(pg, schema) == [("K1", "a", 1), ("K1", "b", 2), ("K2", "it's", 3), ("K4", None, 4)]
    assert ledger_rows(pg, schema) == [
        ("K1", "2017-03-20", "r2", 2),
        ("K2", "2017-03-20", "r2", 1),
        ("K3", "2017-03-20", "r2", 0),  # no rows today: its old rows replaced by none, and recorded
        ("K4", "2017-03-01", "r2", 1),  # a backfill's key: a ledger row for each of its dates
        ("K4", "2017-03-02", "r2", 1),
    ]
    batch = redshift_standin.submitted_sql()[-1]
    assert [s.split()[0] for s in batch] == ["LOCK", "DELETE", "COPY", "SELECT", "SELECT", "DELETE", "INSERT"]


def test_a_unit_whose_count_disagrees_rolls_back_whole(pg: Any, redshift_standin: Any, schema: str, store: Any) -> None:
    wh = warehouse(redshift_standin)
    wh.prepare(spec(schema))
    wh.load_unit(spec(schema), unit(store, [("K1", "old", 1), ("K2", "old", 2)], {"K1": (), "K2": ()}, "r1"), store)
    with pg.cursor() as cur:  # a real fault: a trigger in the warehouse swallows one of K2's rows
        cur.execute(
            f"CREATE FUNCTION {schema}.swallow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.n = 4 THEN RETURN NULL; END IF; RETURN NEW; END $$"
        )
        cur.execute(
            f"CREATE TRIGGER swallow BEFORE INSERT ON {schema}.facts FOR EACH ROW EXECUTE FUNCTION {schema}.swallow()"
        )
    new = unit(store, [("K1", "new", 1), ("K2", "new", 3), ("K2", "new", 4)], {"K1": (), "K2": ()}, "r2")
    with pytest.raises(KeyFailedError, match=r"^unit K1\.\.K2 \(2 keys\): load: reconciliation failed"):
        wh.load_unit(spec(schema), new, store)
    assert rows_of(pg, schema) == [("K1", "old", 1), ("K2", "old", 2)]  # both keys, the good one too
    assert {r[2] for r in ledger_rows(pg, schema)} == {"r1"}
    assert StatementLedger(store, "staging").pending(new) is None


def test_a_unit_too_large_for_one_data_api_statement_submits_nothing(
    redshift_standin: Any, schema: str, store: Any
) -> None:
    wh = warehouse(redshift_standin)
    keys = {f"K{i:05d}": () for i in range(6000)}
    staged = unit(store, [], keys, "r1")
    submitted = len(redshift_standin.submitted_sql())
    with pytest.raises(KeyFailedError, match=r"over the Data API's 100000 bytes; nothing was submitted$"):
        wh.load_unit(spec(schema), staged, store)
    assert len(redshift_standin.submitted_sql()) == submitted


def test_a_merge_unit_upserts_every_key_in_one_batch(pg: Any, redshift_standin: Any, schema: str, store: Any) -> None:
    merging = replace(spec(schema), load_mode="merge", primary_key=("k", "n"))
    wh = warehouse(redshift_standin)
    wh.prepare(merging)
    first = [("K1", "a", 1), ("K1", "b", 2), ("K2", "c", 1)]
    assert wh.load_unit(merging, unit(store, first, {"K1": (), "K2": ()}, "r1"), store) == {"K1": 2, "K2": 1}
    later = [("K1", "B", 2), ("K2", "C", 1), ("K2", "d", 5)]
    assert wh.load_unit(merging, unit(store, later, {"K1": (), "K2": ()}, "r2"), store) == {"K1": 1, "K2": 2}
    # Upserted by primary key: K1's row 1, no longer extracted, is kept.
    assert rows_of(pg, schema) == [("K1", "a", 1), ("K1", "B", 2), ("K2", "C", 1), ("K2", "d", 5)]
    assert [r[2:] for r in ledger_rows(pg, schema)] == [("r2", 1), ("r2", 2)]
