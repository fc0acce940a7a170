"""Redshift beyond a password connection: IAM temporary credentials, and the Redshift Data API.

- :class:`IamCredentials`: ``redshift GetClusterCredentials`` (provisioned cluster, ``db_user``) or
  ``redshift-serverless GetCredentials`` (workgroup), cached until shortly before they expire — the direct mode's
  psycopg2 connections use them instead of a stored password.
- :class:`DataApi`: statements over HTTPS (``redshift-data``), polled with backoff until done; API and statement
  errors mapped to :class:`RetryableError`, :class:`KeyFailedError` or :class:`ConfigError`.
- :class:`RedshiftDataApiWarehouse`: the :class:`~tasks.io.warehouse.Warehouse` whose key load, or shared unit's
  load, is ONE ``BatchExecuteStatement`` (delete, COPY, the counts checked per key, ledger rows: one transaction).
  Before it waits, the statement id goes to the :class:`StatementLedger`, so a retry or a rerun after a crash first
  asks what became of it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from config.errors import ConfigError, KeyFailedError, KeyflowError, RetryableError
from config.types import ColumnType
from tasks.io.aws import client, translate
from tasks.io.objectstore import ObjectStore
from tasks.io.warehouse import _PG_TARGET_STATE, _drift_problems, _target_problems
from tasks.transforms.drift import type_from_catalog
from tasks.transforms.paths import join_under
from tasks.transforms.sql import (
    COLUMNS_QUERY,
    DATA_API_MAX_SQL_BYTES,
    DATA_API_MAX_STATEMENTS,
    DATA_API_UNIT_KEYS,
    LEDGER_TABLE,
    TableSpec,
    UnitMember,
    merge_stage,
    named_parameters,
    render_add_column,
    render_count_key,
    render_create_ledger,
    render_create_schema,
    render_create_table,
    render_data_api_load,
    render_data_api_unit_load,
    render_delete_other_keys,
    render_ledger_between,
    render_ledger_keys,
    render_redshift_copy,
)
from tasks.transforms.staging import StagedKey, key_segment

DONE = {"FINISHED", "FAILED", "ABORTED"}
RUNNING = {"SUBMITTED", "PICKED", "STARTED"}
# Codes a later call may get past: quotas of concurrent statements and sessions, throttling, server trouble.
DATA_API_TRANSIENT = {
    "ActiveStatementsExceededException",
    "ActiveSessionsExceededException",
    "ActiveWaitingRequestsExceededException",
    "DatabaseConnectionException",
    "InternalServerException",
    "ThrottlingException",
    "QueryTimeoutException",
}
# Codes that say the profile names something that is not there or not allowed.
DATA_API_CONFIG = {"ResourceNotFoundException", "AccessDeniedException", "ValidationException"}
CREDENTIAL_SECONDS = 900  # the shortest lifetime both credential APIs give; fetched again 60 s before it ends


def data_api_error(exc: Exception, what: str) -> KeyflowError | Exception:
    """A Data API client error as keyflow's: transient ones retry, a missing or refused resource is config."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code in DATA_API_TRANSIENT:
            return RetryableError(f"{what}: {code}: {message}")
        if code in DATA_API_CONFIG:
            return ConfigError(f"{what}: {code}: {message}")
    return translate(exc, what)


class IamCredentials:
    """Temporary database credentials from IAM, fetched when needed and reused until a minute before they expire."""

    def __init__(
        self,
        region: str,
        endpoint_url: str | None,
        database: str,
        cluster_id: str | None = None,
        db_user: str | None = None,
        workgroup: str | None = None,
    ) -> None:
        self.region, self.endpoint_url, self.database = region, endpoint_url, database
        self.cluster_id, self.db_user, self.workgroup = cluster_id, db_user, workgroup
        self._lock = threading.Lock()
        self._cached: tuple[str, str, float] | None = None

    def get(self) -> tuple[str, str]:
        """``(user, password)`` valid for at least another minute."""
        with self._lock:
            if self._cached is None or self._cached[2] - time.time() < 60:
                self._cached = self._fetch()
            return self._cached[0], self._cached[1]

    def _fetch(self) -> tuple[str, str, float]:
        try:
            if self.workgroup:
                rs = client("redshift-serverless", self.region, self.endpoint_url)
                out = rs.get_credentials(
                    workgroupName=self.workgroup, dbName=self.database, durationSeconds=CREDENTIAL_SECONDS
                )
                return out["dbUser"], out["dbPassword"], out["expiration"].timestamp()
            rc = client("redshift", self.region, self.endpoint_url)
            out = rc.get_cluster_credentials(
                DbUser=self.db_user,
                DbName=self.database,
                ClusterIdentifier=self.cluster_id,
                DurationSeconds=CREDENTIAL_SECONDS,
                AutoCreate=False,
            )
            return out["DbUser"], out["DbPassword"], out["Expiration"].timestamp()
        except (ClientError, BotoCoreError) as exc:
            where = f"workgroup {self.workgroup}" if self.workgroup else f"cluster {self.cluster_id}"
            raise data_api_error(exc, f"redshift: IAM credentials for {where}") from None


@dataclass(frozen=True)
class Outcome:
    """What became of a statement: its final status, error, and which sub-statement failed (a batch)."""

    id: str
    status: str
    error: str = ""
    failed_index: int | None = None
    result_rows: int = 0


class DataApi:
    """Statements through the Redshift Data API on one cluster or workgroup, polled until done."""

    def __init__(
        self,
        region: str,
        endpoint_url: str | None,
        database: str,
        cluster_id: str | None = None,
        workgroup: str | None = None,
        db_user: str | None = None,
        secret_arn: str | None = None,
        poll_max_seconds: float = 5.0,
        timeout_seconds: float = 3600.0,
    ) -> None:
        self._client = client("redshift-data", region, endpoint_url)
        self.where = f"workgroup {workgroup}" if workgroup else f"cluster {cluster_id}"
        target: dict[str, str] = {"Database": database}
        for name, value in (
            ("ClusterIdentifier", cluster_id),
            ("WorkgroupName", workgroup),
            ("DbUser", db_user),
            ("SecretArn", secret_arn),
        ):
            if value:
                target[name] = value
        self._target = target
        self.poll_max_seconds = poll_max_seconds
        self.timeout_seconds = timeout_seconds

    def submit(self, sqls: Sequence[str], params: dict[str, str] | None = None, name: str = "keyflow") -> str:
        """Submit one statement, or several as one transaction (``BatchExecuteStatement``); returns its id."""
        args: dict[str, Any] = {**self._target, "StatementName": name[:500]}
        if params:
            args["Parameters"] = [{"name": k, "value": v} for k, v in params.items()]
        try:
            if len(sqls) == 1:
                return str(self._client.execute_statement(Sql=sqls[0], **args)["Id"])
            return str(self._client.batch_execute_statement(Sqls=list(sqls), **args)["Id"])
        except (ClientError, BotoCoreError) as exc:
            raise data_api_error(exc, f"redshift data api ({self.where}): submit {name}") from None

    def describe(self, statement_id: str) -> Outcome | None:
        """The statement's status now (None when the Data API no longer knows it: results live 24 hours)."""
        try:
            out = self._client.describe_statement(Id=statement_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise data_api_error(exc, f"redshift data api: describe statement {statement_id}") from None
        except BotoCoreError as exc:
            raise data_api_error(exc, f"redshift data api: describe statement {statement_id}") from None
        failed = None
        for i, sub in enumerate(out.get("SubStatements") or []):
            if sub.get("Status") == "FAILED":
                failed = i
        return Outcome(statement_id, out["Status"], out.get("Error") or "", failed, int(out.get("ResultRows") or 0))

    def wait(self, statement_id: str, what: str) -> Outcome:
        """Poll with backoff (50 ms doubling up to ``poll_max_seconds``) until the statement is done.

        Past ``timeout_seconds`` the statement is left running and a :class:`RetryableError` is raised: the retry
        asks the ledger about the same statement instead of submitting another.
        """
        pause, deadline = 0.05, time.monotonic() + self.timeout_seconds
        while True:
            outcome = self.describe(statement_id)
            if outcome is None:
                raise RetryableError(f"{what}: statement {statement_id} is unknown to the Data API")
            if outcome.status in DONE:
                return outcome
            if time.monotonic() > deadline:
                raise RetryableError(
                    f"{what}: statement {statement_id} still {outcome.status} after "
                    f"{self.timeout_seconds:.0f}s; a retry waits for it again"
                )
            time.sleep(pause)
            pause = min(pause * 2, self.poll_max_seconds)

    def run(self, sqls: Sequence[str], params: dict[str, str] | None = None, name: str = "keyflow") -> Outcome:
        """Submit and wait; a failed or aborted statement raises (:meth:`raise_for`)."""
        statement_id = self.submit(sqls, params, name)
        outcome = self.wait(statement_id, f"redshift data api ({self.where}): {name}")
        self.raise_for(outcome, f"redshift data api ({self.where}): {name}")
        return outcome

    @staticmethod
    def raise_for(outcome: Outcome, what: str) -> None:
        """Raise for a statement that did not finish: aborted retries, failed fails (with Redshift's error)."""
        if outcome.status == "ABORTED":
            raise RetryableError(f"{what}: statement {outcome.id} was aborted")
        if outcome.status == "FAILED":
            raise KeyFailedError(f"{what}: {outcome.error.removeprefix('ERROR: ').strip()}")

    def query(self, sql: str, params: dict[str, str] | None = None, name: str = "keyflow query") -> list[list[Any]]:
        """Run one SELECT and return its rows (each value as the Data API types it; NULL as None)."""
        outcome = self.run([sql], params, name)
        rows: list[list[Any]] = []
        token: str | None = None
        try:
            while True:
                page = self._client.get_statement_result(Id=outcome.id, **({"NextToken": token} if token else {}))
                rows += [[_value(f) for f in record] for record in page["Records"]]
                token = page.get("NextToken")
                if not token:
                    return rows
        except (ClientError, BotoCoreError) as exc:
            raise data_api_error(exc, f"redshift data api ({self.where}): result of {name}") from None


def _value(field: dict[str, Any]) -> Any:
    if field.get("isNull"):
        return None
    for name in ("stringValue", "longValue", "doubleValue", "booleanValue"):
        if name in field:
            return field[name]
    return None


class StatementLedger:
    """Where a key's submitted load is remembered until its outcome is known: one small S3 object per key and date.

    ``<prefix>/_loads/<dataset>/<run_date>/<key>/statement.json`` in the staging bucket (SSE as every staged object).
    S3 because the bucket is already there, strongly consistent and encrypted, and writing it costs no Redshift
    commit (Redshift serialises commits cluster-wide; a ledger table would add two per key). The row the key's batch
    writes to ``keyflow_loads`` stays the record of a finished load.
    """

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def _dir(self, staged: StagedKey) -> str:
        return join_under(self.prefix, f"_loads/{staged.dataset}/{staged.run_date}/{key_segment(staged.key)}") + "/"

    def pending(self, staged: StagedKey) -> dict[str, Any] | None:
        """The load submitted for this key and date whose outcome was not yet recorded, if any."""
        key = self._dir(staged) + "statement.json"
        if not self.store.exists(key):
            return None
        pending: dict[str, Any] = json.loads(self.store.get_bytes(key))
        return pending

    def record(self, staged: StagedKey, statement_id: str, keys: dict[str, int] | None = None) -> None:
        """Remember a submitted load before waiting on it (a unit's: with its keys and their rows)."""
        body: dict[str, Any] = {
            "statement_id": statement_id,
            "run_id": staged.run_id,
            "rows": staged.rows_staged,
            "submitted_at": datetime.now(UTC).isoformat(),
        }
        if keys is not None:
            body["keys"] = keys
        self.store.put_bytes(json.dumps(body).encode(), self._dir(staged) + "statement.json", "application/json")

    def clear(self, staged: StagedKey) -> None:
        """Forget the key's load once its outcome is recorded (in the warehouse, or as the key's error)."""
        self.store.delete_prefix(self._dir(staged))


class RedshiftDataApiWarehouse:
    """Redshift through the Data API: a key's or unit's load is one ``BatchExecuteStatement``, crash-safe."""

    dialect = "redshift"
    loads_units = True  # a unit is one batch: its keys deleted, copied, each reconciled, its ledger rows written
    max_unit_keys = DATA_API_UNIT_KEYS  # a batch's SQL text stays under the Data API's 100 KB a statement

    def __init__(self, api: DataApi, iam_role: str, region: str | None, ledger_prefix: str) -> None:
        self.api = api
        self.iam_role = iam_role
        self.region = region
        self.ledger_prefix = ledger_prefix

    def copy_sql(self, spec: TableSpec, staged: StagedKey) -> str:
        """The COPY statement that loads a staged key through its manifest."""
        return render_redshift_copy(
            spec, staged.manifest_url, self.iam_role, staged.compression, self.region, staged.format
        )

    def columns(self, spec: TableSpec) -> list[tuple[str, ColumnType | None]]:
        """The target table's columns and types as they stand (none when it does not exist)."""
        rows = self.api.query(
            named_parameters(COLUMNS_QUERY),
            {"p1": spec.schema, "p2": spec.table},
            name=f"keyflow columns of {spec.schema}.{spec.table}",
        )
        return [(str(r[0]), type_from_catalog(str(r[1]), r[2], r[3])) for r in rows]

    def prepare(self, spec: TableSpec, add_columns: Sequence[tuple[str, ColumnType, bool]] = ()) -> None:
        """Create schema, table and ledger when missing; add ``add_columns`` (schema drift, planned before)."""
        ddls = [
            render_create_schema(spec, self.dialect),
            render_create_table(spec, self.dialect),
            *(render_add_column(spec, name, ctype, self.dialect) for name, ctype, _ in add_columns),
            render_create_ledger(spec.schema, self.dialect),
        ]
        for ddl in ddls:  # one at a time: a concurrent creator's object is as good as ours
            try:
                self.api.run([ddl], name=f"keyflow prepare {spec.schema}.{spec.table}")
            except KeyFailedError as exc:
                if "already exists" not in str(exc):
                    raise

    def check(self, spec: TableSpec | None, schema: str) -> list[str]:
        """Problems with the target before a run, one line each.

        Privileges as the direct mode checks them, and an existing table's columns against ``spec`` and its
        ``on_schema_change``.
        """
        table = spec.table if spec else None
        sql = (
            _PG_TARGET_STATE.replace("%(schema)s", ":schema")
            .replace("%(ledger)s", ":ledger")
            .replace("%(table)s", ":table" if table else "NULL")
        )
        params = {"schema": schema, "ledger": LEDGER_TABLE} | ({"table": table} if table else {})
        try:
            (state,) = self.api.query(sql, params, name="keyflow check target")
            existing = self.columns(spec) if spec and state[3] is not None else []
        except KeyFailedError as exc:
            raise ConfigError(f"check the warehouse target: {exc}") from None
        return _target_problems(state, schema, table) + (_drift_problems(spec, existing) if spec else [])

    def load_key(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> int:
        """Replace one key's rows in ONE batch (one transaction); a load already submitted is asked about first."""
        from tasks.transforms.staging import reconcile

        reconcile(staged, staged.rows_staged, staged.rows_staged)  # extracted = staged + filtered, before any SQL
        what = f"key {staged.key!r}: load"
        ledger = StatementLedger(store, self.ledger_prefix)
        pending = ledger.pending(staged)
        if pending is not None:
            outcome = self.api.describe(pending["statement_id"])
            if outcome is not None and outcome.status in RUNNING:
                outcome = self.api.wait(outcome.id, what)
            if outcome is not None and outcome.status == "FINISHED":
                ledger.clear(staged)  # its batch wrote the key's rows and ledger row: not submitted again
                return int(pending["rows"])
            # failed, aborted or forgotten by the Data API (results live 24 hours): submitted again below
        params = {
            "key": staged.key,
            "rows": str(staged.rows_staged),
            "dataset": staged.dataset,
            "run_date": staged.run_date,
            "run_id": staged.run_id,
            "loaded_at": datetime.now(UTC).isoformat(),
        }
        into = merge_stage(spec) if spec.load_mode == "merge" else spec
        sqls, checks = render_data_api_load(spec, self.copy_sql(into, staged))
        statement_id = self.api.submit(sqls, params, name=f"keyflow load {staged.dataset} {staged.key}")
        ledger.record(staged, statement_id)
        outcome = self.api.wait(statement_id, what)
        if outcome.status == "FAILED":
            ledger.clear(staged)
            if outcome.failed_index in checks:
                raise KeyFailedError(
                    f"key {staged.key!r}: reconciliation failed: extracted={staged.rows_extracted} "
                    f"staged={staged.rows_staged}, but the warehouse counted otherwise after COPY; the load was "
                    "rolled back and the key's previous rows are intact"
                )
            raise KeyFailedError(
                f"key {staged.key!r}: load failed, previous rows kept: {outcome.error.removeprefix('ERROR: ').strip()}"
            )
        self.api.raise_for(outcome, what)  # aborted: retried, and the ledger resubmits
        ledger.clear(staged)
        return staged.rows_staged

    def loaded_between(self, schema: str, dataset: str, first: str, last: str) -> set[tuple[str, str]]:
        """``(key, run_date)`` of every load from ``first`` to ``last`` (none before the ledger table exists)."""
        try:
            rows = self.api.query(
                named_parameters(render_ledger_between(schema, self.dialect)),
                {"p1": dataset, "p2": first, "p3": last},
            )
        except KeyFailedError as exc:
            if "does not exist" in str(exc):
                return set()
            raise
        return {(str(r[0]), str(r[1])[:10]) for r in rows}

    def load_unit(self, spec: TableSpec, staged: StagedKey, store: ObjectStore) -> dict[str, int]:
        """Replace every key of a shared unit in ONE batch (one transaction), each key reconciled; rows per key.

        Crash-safe as :meth:`load_key`: the batch's id goes to the statement ledger (under the unit's label) before
        the wait, so a retry or rerun of the same unit waits for it instead of loading twice. A failed batch rolled
        back whole: the caller retries its keys one by one.
        """
        from tasks.transforms.staging import reconcile

        reconcile(staged, staged.rows_staged, staged.rows_staged)  # extracted = staged + filtered, before any SQL
        rows = {m.key: m.rows_staged for m in staged.members}
        what = f"unit {staged.key}: load"
        ledger = StatementLedger(store, self.ledger_prefix)
        pending = ledger.pending(staged)
        if pending is not None and pending.get("keys") == rows:
            outcome = self.api.describe(pending["statement_id"])
            if outcome is not None and outcome.status in RUNNING:
                outcome = self.api.wait(outcome.id, what)
            if outcome is not None and outcome.status == "FINISHED":
                ledger.clear(staged)  # its batch wrote the keys' rows and ledger rows: not submitted again
                return rows
            # failed, aborted or forgotten by the Data API (results live 24 hours): submitted again below
        members = [UnitMember(m.key, m.rows_staged, m.dates or (staged.run_date,)) for m in staged.members]
        into = merge_stage(spec) if spec.load_mode == "merge" else spec
        sqls, params, checks = render_data_api_unit_load(spec, self.copy_sql(into, staged), members)
        largest = max(len(sql.encode()) for sql in sqls)
        assert len(sqls) <= DATA_API_MAX_STATEMENTS  # at most 8, whatever the unit's size
        if largest > DATA_API_MAX_SQL_BYTES:
            raise KeyFailedError(
                f"{what}: a statement of {largest} bytes is over the Data API's {DATA_API_MAX_SQL_BYTES} bytes; "
                "nothing was submitted"
            )
        params |= {"dataset": staged.dataset, "run_id": staged.run_id, "loaded_at": datetime.now(UTC).isoformat()}
        statement_id = self.api.submit(sqls, params, name=f"keyflow load {staged.dataset} unit {staged.key}")
        ledger.record(staged, statement_id, rows)
        outcome = self.api.wait(statement_id, what)
        if outcome.status == "FAILED":
            ledger.clear(staged)
            if outcome.failed_index in checks:
                raise KeyFailedError(
                    f"{what}: reconciliation failed: a key's rows in the warehouse after COPY differ from the "
                    f"{staged.rows_staged} staged for its {len(rows)} keys; the unit was rolled back and every "
                    "key's previous rows are intact"
                )
            raise KeyFailedError(f"{what} failed, previous rows kept: {outcome.error.removeprefix('ERROR: ').strip()}")
        self.api.raise_for(outcome, what)  # aborted: retried, and the ledger resubmits
        ledger.clear(staged)
        return rows

    def delete_other_keys(self, spec: TableSpec, keep: Sequence[str]) -> int:
        """Delete the rows of every key not in ``keep``; returns how many."""
        sql = named_parameters(render_delete_other_keys(spec, len(keep), self.dialect))
        params = {f"p{i + 1}": k for i, k in enumerate(keep)}
        outcome = self.api.run([sql], params, name=f"keyflow remove inactive keys {spec.schema}.{spec.table}")
        return max(outcome.result_rows, 0)

    def count_key(self, spec: TableSpec, key: str) -> int:
        """The number of rows of one key in the target table."""
        rows = self.api.query(named_parameters(render_count_key(spec, self.dialect)), {"p1": key})
        return int(rows[0][0])

    def loaded_keys(self, schema: str, dataset: str, run_date: str) -> set[str]:
        """Keys whose load for ``run_date`` committed and reconciled (none before the ledger table exists)."""
        try:
            rows = self.api.query(
                named_parameters(render_ledger_keys(schema, self.dialect)), {"p1": dataset, "p2": run_date}
            )
        except KeyFailedError as exc:
            if "does not exist" in str(exc):
                return set()
            raise
        return {str(r[0]) for r in rows}
