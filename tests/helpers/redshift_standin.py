"""A Redshift stand-in for the tests: the Redshift Data API over HTTP, with its SQL run on PostgreSQL.

boto3 reaches it through ``endpoint_url`` exactly as it reaches AWS, so botocore validates every request against the
service model; the stand-in answers what keyflow calls:

- ``redshift-data`` (JSON protocol, ``X-Amz-Target: RedshiftData.<Op>``): ``ExecuteStatement``,
  ``BatchExecuteStatement`` (its statements in ONE PostgreSQL transaction), ``DescribeStatement`` (with
  ``SubStatements`` for a batch), ``GetStatementResult``, ``CancelStatement``, ``ListStatements``. A statement runs in
  a thread of its own, so callers really poll: ``SUBMITTED`` → ``STARTED`` → ``FINISHED`` | ``FAILED`` | ``ABORTED``.
  ``hold`` keeps new batches in ``STARTED`` for a while (to kill a client mid-load).
- ``redshift GetClusterCredentials`` (query protocol, XML): ``DbUser`` ``IAM:<db_user>`` (``IAMA:`` with AutoCreate),
  a random password; PostgreSQL's trust authentication accepts it for a role of that name.
- ``redshift-serverless GetCredentials`` (JSON): ``dbUser`` ``IAMR:<serverless_role>``, a random password.

Redshift SQL is translated to PostgreSQL just enough for keyflow's statements: ``:name`` parameters become bound
values, ``DISTSTYLE``/``DISTKEY``/``SORTKEY`` clauses are dropped, ``pg_last_copy_count()`` answers the session's
last COPY, and ``COPY t (cols) FROM 's3://…' [MANIFEST] [FORMAT AS PARQUET | FORMAT AS CSV | CSV] [ZSTD | GZIP]
IAM_ROLE … [IGNOREHEADER n] [EMPTYASNULL] …`` reads the objects from the S3 endpoint (the moto server) and streams
them into PostgreSQL's ``COPY … FROM STDIN``.

What it does NOT emulate: authentication, authorization and the db user a statement runs as (everything runs as
the stand-in's PostgreSQL user); Secrets Manager look-ups of ``SecretArn``; ``ClientToken`` idempotency; sessions
(``SessionId``, ``SessionKeepAliveSeconds``); ``ResultFormat: CSV``; result pagination (one page); statement and
result expiry (24 h in AWS); quotas (``ActiveStatementsExceededException``); Redshift's own SQL beyond the above
(its type coercions, ``VARCHAR`` byte lengths, leader-node functions, ``ACCEPTINVCHARS``, ``MAXERROR``, JSON/Avro
COPY, ``STL_LOAD_ERRORS``); the validity of the IAM role; and Redshift's serializable isolation (PostgreSQL's
default, read committed, runs the statements). ``MERGE`` is PostgreSQL 15's (Redshift's ``REMOVE DUPLICATES`` form
is not emulated); Parquet columns go to the listed ones by position and their count is checked, as AWS documents, but
Redshift's Parquet-to-column type rules are not (PostgreSQL's CSV input casts instead); a CSV quoted ``""`` loads as
an empty string, which is PostgreSQL's rule, not necessarily Redshift's under ``EMPTYASNULL``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard

from tests.helpers.services import PG_DSN, free_port

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_QUOTED = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")")
_COPY = re.compile(
    r"^\s*COPY\s+(?P<table>[\w\".]+)\s*(?:\((?P<cols>[^)]*)\))?\s+FROM\s+'(?P<url>(?:[^']|'')*)'(?P<opts>.*)$",
    re.IGNORECASE | re.DOTALL,
)
# Each option keyflow may send, as a pattern over the options text; anything left over is refused.
_OPTIONS = {
    "iam_role": r"IAM_ROLE\s+'(?:[^']|'')*'",
    "region": r"REGION\s+(?:AS\s+)?'[^']*'",
    "manifest": r"MANIFEST",
    "parquet": r"FORMAT\s+(?:AS\s+)?PARQUET",
    "csv": r"(?:FORMAT\s+(?:AS\s+)?)?CSV(?:\s+QUOTE\s+(?:AS\s+)?'(?:[^']|'')*')?",
    "zstd": r"ZSTD",
    "gzip": r"GZIP",
    "ignoreheader": r"IGNOREHEADER\s+(?:AS\s+)?(\d+)",
    "emptyasnull": r"EMPTYASNULL",
    "blanksasnull": r"BLANKSASNULL",
    "timeformat": r"TIMEFORMAT\s+(?:AS\s+)?'[^']*'",
    "dateformat": r"DATEFORMAT\s+(?:AS\s+)?'[^']*'",
    "encoding": r"ENCODING\s+(?:AS\s+)?UTF8",
    "acceptinvchars": r"ACCEPTINVCHARS(?:\s+(?:AS\s+)?'[^']*')?",
    "compupdate": r"COMPUPDATE\s+(?:ON|OFF|TRUE|FALSE)",
    "statupdate": r"STATUPDATE\s+(?:ON|OFF|TRUE|FALSE)",
    "serializetojson": r"SERIALIZETOJSON",
}


class StandInError(Exception):
    """An API error the stand-in answers with (``__type`` and HTTP status)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Statement:
    """One submitted statement or batch, as DescribeStatement reports it."""

    id: str
    sqls: list[str]
    params: dict[str, str]
    request: dict[str, Any]
    batch: bool
    status: str = "SUBMITTED"
    error: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    sub_status: list[str] = field(default_factory=list)
    sub_error: list[str] = field(default_factory=list)
    results: list[tuple[list[str], list[tuple[Any, ...]]] | None] = field(default_factory=list)
    row_counts: list[int] = field(default_factory=list)
    pid: int = 0
    conn: Any = None


def _outside_quotes(sql: str) -> Iterator[tuple[bool, str]]:
    """``(is_quoted, text)`` pieces of a statement: string literals and quoted identifiers apart from the rest."""
    for i, piece in enumerate(_QUOTED.split(sql)):
        yield i % 2 == 1, piece


def to_postgres(sql: str, params: dict[str, str], last_copy: int) -> tuple[str, dict[str, str]]:
    """Translate one keyflow Redshift statement to PostgreSQL with psycopg2 ``%(name)s`` parameters."""
    if re.match(r"\s*CREATE\s+TABLE", sql, re.IGNORECASE):  # table attributes PostgreSQL has no use for
        sql = re.sub(r"\bDISTSTYLE\s+\w+", "", sql, flags=re.IGNORECASE)
        sql = re.sub(r"\bDISTKEY\s*\([^)]*\)", "", sql, flags=re.IGNORECASE)
        sql = re.sub(r"\b(?:COMPOUND\s+|INTERLEAVED\s+)?SORTKEY\s*\([^)]*\)", "", sql, flags=re.IGNORECASE)
    out = []
    for quoted, piece in _outside_quotes(sql):
        piece = piece.replace("%", "%%")
        if not quoted:
            piece = _PARAM.sub(lambda m: f"%({m.group(1)})s" if m.group(1) in params else m.group(0), piece)
            piece = re.sub(r"pg_last_copy_count\(\)", str(last_copy), piece, flags=re.IGNORECASE)
            piece = re.sub(r"\bGETDATE\(\)", "now()", piece, flags=re.IGNORECASE)
        out.append(piece)
    return "".join(out), params


class RedshiftStandIn:
    """The stand-in server: ``with RedshiftStandIn(s3_endpoint) as rs: rs.endpoint_url``."""

    def __init__(self, s3_endpoint: str, dsn: str = PG_DSN, serverless_role: str = "keyflow") -> None:
        self.s3_endpoint = s3_endpoint
        self.dsn = dsn
        self.serverless_role = serverless_role
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.statements: dict[str, Statement] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []  # every API call, in order: what tests assert on
        self.hold = 0.0  # seconds a new batch stays STARTED before it runs (read when the batch starts)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- server

    def __enter__(self) -> RedshiftStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                try:
                    if target:
                        prefix, _, op = target.partition(".")
                        status, payload, ctype = 200, standin.json_call(prefix, op, json.loads(body or b"{}")), None
                        data = json.dumps(payload).encode()
                    else:
                        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                        status, data, ctype = 200, standin.query_call(form), "text/xml"
                except StandInError as exc:
                    status, ctype = exc.status, None
                    data = json.dumps({"__type": exc.code, "message": exc.message}).encode()
                    if not target:
                        ctype = "text/xml"
                        data = (
                            f"<ErrorResponse><Error><Type>Sender</Type><Code>{exc.code}</Code>"
                            f"<Message>{exc.message}</Message></Error><RequestId>1</RequestId></ErrorResponse>"
                        ).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for st in list(self.statements.values()):
            if st.conn is not None:
                with contextlib.suppress(Exception):
                    st.conn.cancel()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no statement is SUBMITTED or STARTED (a test's cleanup)."""
        deadline = time.time() + timeout
        while any(s.status in ("SUBMITTED", "STARTED") for s in list(self.statements.values())):
            if time.time() > deadline:
                raise TimeoutError("stand-in statements still running")
            time.sleep(0.05)

    def submitted_sql(self) -> list[list[str]]:
        """The SQL of every statement or batch submitted, in order."""
        return [
            c[1].get("Sqls") or [c[1]["Sql"]]
            for c in self.calls
            if c[0] in ("ExecuteStatement", "BatchExecuteStatement")
        ]

    # --- redshift GetClusterCredentials (query protocol)

    def query_call(self, form: dict[str, str]) -> bytes:
        """Answer a query-protocol call (``Action=GetClusterCredentials``)."""
        action = form.get("Action", "")
        self.calls.append((action, form))
        if action != "GetClusterCredentials":
            raise StandInError("InvalidAction", f"the stand-in does not answer {action}")
        duration = int(form.get("DurationSeconds", "900"))
        if not 900 <= duration <= 3600:
            raise StandInError("InvalidParameterValue", "Token duration must be between 900 and 3600 seconds")
        prefix = "IAMA:" if form.get("AutoCreate", "false") == "true" else "IAM:"
        expiration = (datetime.now(UTC) + timedelta(seconds=duration)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            "<GetClusterCredentialsResponse><GetClusterCredentialsResult>"
            f"<DbUser>{prefix}{form['DbUser']}</DbUser><DbPassword>{secrets.token_hex(16)}</DbPassword>"
            f"<Expiration>{expiration}</Expiration>"
            "</GetClusterCredentialsResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>"
            "</GetClusterCredentialsResponse>"
        ).encode()

    # --- JSON protocol

    def json_call(self, prefix: str, op: str, req: dict[str, Any]) -> dict[str, Any]:
        """Answer a JSON-protocol call (``RedshiftData.*`` or ``RedshiftServerless.GetCredentials``)."""
        self.calls.append((op, req))
        if prefix == "RedshiftServerless" and op == "GetCredentials":
            now = time.time()
            return {
                "dbUser": f"IAMR:{self.serverless_role}",
                "dbPassword": secrets.token_hex(16),
                "expiration": now + int(req.get("durationSeconds", 900)),
                "nextRefreshTime": now + 600,
            }
        if prefix != "RedshiftData":
            raise StandInError("UnknownOperationException", f"{prefix}.{op}")
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise StandInError("UnknownOperationException", f"the stand-in does not answer {op}")
        return handler(req)  # type: ignore[no-any-return]

    def _where(self, req: dict[str, Any]) -> None:
        if bool(req.get("ClusterIdentifier")) == bool(req.get("WorkgroupName")):
            raise StandInError("ValidationException", "Either ClusterIdentifier or WorkgroupName must be specified")
        if req.get("ClusterIdentifier") and not (req.get("SecretArn") or req.get("DbUser")):
            raise StandInError("ValidationException", "SecretArn or DbUser is required with a ClusterIdentifier")
        if not req.get("Database"):
            raise StandInError("ValidationException", "Database is required")

    def _submit(self, req: dict[str, Any], sqls: list[str], batch: bool) -> dict[str, Any]:
        self._where(req)
        if any(len(sql.encode()) > 100_000 for sql in sqls):  # the Data API's limit on one statement's text
            raise StandInError("ValidationException", "Cannot process query string larger than 100kB")
        params = {p["name"]: p["value"] for p in req.get("Parameters", [])}
        st = Statement(id=str(uuid.uuid4()), sqls=sqls, params=params, request=req, batch=batch)
        st.sub_status = ["SUBMITTED"] * len(sqls)
        st.sub_error = [""] * len(sqls)
        st.results = [None] * len(sqls)
        st.row_counts = [0] * len(sqls)
        with self._lock:
            self.statements[st.id] = st
        threading.Thread(target=self._run, args=(st,), daemon=True).start()
        out = {"Id": st.id, "CreatedAt": st.created, "Database": req["Database"]}
        for k in ("ClusterIdentifier", "WorkgroupName", "DbUser", "SecretArn"):
            if req.get(k):
                out[k] = req[k]
        return out

    def _op_ExecuteStatement(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._submit(req, [req["Sql"]], batch=False)

    def _op_BatchExecuteStatement(self, req: dict[str, Any]) -> dict[str, Any]:
        if len(req["Sqls"]) > 40:
            raise StandInError("ValidationException", "at most 40 SQL statements in a batch")
        return self._submit(req, list(req["Sqls"]), batch=True)

    def _get(self, sid: str) -> tuple[Statement, int | None]:
        base, _, sub = sid.partition(":")
        st = self.statements.get(base)
        if st is None or (sub and not (sub.isdigit() and 1 <= int(sub) <= len(st.sqls))):
            raise StandInError("ResourceNotFoundException", f"Query does not exist: {sid}")
        return st, int(sub) - 1 if sub else None

    def _op_DescribeStatement(self, req: dict[str, Any]) -> dict[str, Any]:
        st, sub = self._get(req["Id"])
        base = {
            k: st.request[k] for k in ("ClusterIdentifier", "WorkgroupName", "DbUser", "SecretArn") if st.request.get(k)
        }
        if sub is not None:
            return {
                "Id": req["Id"],
                "Status": st.sub_status[sub],
                "Error": st.sub_error[sub],
                "QueryString": st.sqls[sub],
                "HasResultSet": st.results[sub] is not None,
                "ResultRows": st.row_counts[sub],
                "CreatedAt": st.created,
                "UpdatedAt": st.updated,
                "Database": st.request["Database"],
                **base,
            }
        out: dict[str, Any] = {
            "Id": st.id,
            "Status": st.status,
            "Error": st.error,
            "CreatedAt": st.created,
            "UpdatedAt": st.updated,
            "Duration": int((st.updated - st.created) * 1e9),
            "RedshiftPid": st.pid,
            "Database": st.request["Database"],
            "HasResultSet": any(r is not None for r in st.results) if not st.batch else False,
            "ResultRows": sum(st.row_counts) if not st.batch else -1,
            **base,
        }
        if st.batch:
            out["SubStatements"] = [
                {
                    "Id": f"{st.id}:{i + 1}",
                    "Status": st.sub_status[i],
                    "Error": st.sub_error[i],
                    "QueryString": sql,
                    "HasResultSet": st.results[i] is not None,
                    "ResultRows": st.row_counts[i],
                    "CreatedAt": st.created,
                    "UpdatedAt": st.updated,
                }
                for i, sql in enumerate(st.sqls)
            ]
        else:
            out["QueryString"] = st.sqls[0]
        return out

    def _op_GetStatementResult(self, req: dict[str, Any]) -> dict[str, Any]:
        st, sub = self._get(req["Id"])
        if st.batch and sub is None:
            raise StandInError("ValidationException", "a batch has no result: ask for one sub-statement (<id>:<n>)")
        i = sub or 0
        if (st.sub_status[i] if st.batch else st.status) != "FINISHED":
            raise StandInError("ResourceNotFoundException", "Query does not have result. Please check query status.")
        result = st.results[i]
        if result is None:
            raise StandInError("ResourceNotFoundException", "Query does not have result.")
        names, rows = result
        return {
            "Records": [[_field(v) for v in row] for row in rows],
            "ColumnMetadata": [{"name": n, "label": n} for n in names],
            "TotalNumRows": len(rows),
        }

    def _op_CancelStatement(self, req: dict[str, Any]) -> dict[str, Any]:
        st, _ = self._get(req["Id"])
        if st.status not in ("SUBMITTED", "STARTED"):
            raise StandInError("ValidationException", f"Could not cancel a query that is already in {st.status} state")
        st.status = "ABORTED"
        if st.conn is not None:
            st.conn.cancel()
        return {"Status": True}

    def _op_ListStatements(self, req: dict[str, Any]) -> dict[str, Any]:
        want = req.get("Status", "ALL")
        rows = [
            s
            for s in self.statements.values()
            if (want == "ALL" or s.status == want)
            and (not req.get("StatementName") or s.request.get("StatementName", "").startswith(req["StatementName"]))
        ]
        return {
            "Statements": [
                {
                    "Id": s.id,
                    "Status": s.status,
                    "IsBatchStatement": s.batch,
                    "CreatedAt": s.created,
                    "UpdatedAt": s.updated,
                    **({"QueryStrings": s.sqls} if s.batch else {"QueryString": s.sqls[0]}),
                    **({"StatementName": s.request["StatementName"]} if s.request.get("StatementName") else {}),
                }
                for s in sorted(rows, key=lambda s: -s.created)[: int(req.get("MaxResults", 100))]
            ]
        }

    # --- running statements on PostgreSQL

    def _run(self, st: Statement) -> None:
        if st.status == "ABORTED":
            return
        st.status = "STARTED"
        st.updated = time.time()
        try:
            conn = psycopg2.connect(self.dsn)
        except psycopg2.Error as exc:
            st.status, st.error = "FAILED", f"ERROR: {exc}".splitlines()[0]
            return
        st.conn = conn
        st.pid = conn.get_backend_pid()
        current = 0
        try:
            hold = self.hold if st.batch else 0.0
            deadline = time.time() + hold
            while time.time() < deadline and st.status != "ABORTED":
                time.sleep(0.05)
            if st.status == "ABORTED":
                raise psycopg2.extensions.QueryCanceledError("canceling statement due to user request")
            last_copy = 0
            with conn.cursor() as cur:
                for i, sql in enumerate(st.sqls):
                    current = i
                    st.sub_status[i] = "STARTED"
                    copy = _COPY.match(sql)
                    if copy:
                        last_copy = self._copy(cur, copy)
                        st.row_counts[i] = last_copy
                    else:
                        text, params = to_postgres(sql, st.params, last_copy)
                        cur.execute(text, params)
                        if cur.description is not None:
                            rows = cur.fetchall()
                            st.results[i] = ([d[0] for d in cur.description], [tuple(r) for r in rows])
                            st.row_counts[i] = len(rows)
                        else:
                            st.row_counts[i] = max(cur.rowcount, 0)
                    st.sub_status[i] = "FINISHED"
                    if st.status == "ABORTED":
                        raise psycopg2.extensions.QueryCanceledError("canceling statement due to user request")
            conn.commit()
            st.status = "FINISHED"
        except Exception as exc:
            conn.rollback()
            message = "ERROR: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            aborted = st.status == "ABORTED" or isinstance(exc, psycopg2.extensions.QueryCanceledError)
            st.sub_status[current] = "ABORTED" if aborted else "FAILED"
            st.sub_error[current] = message
            for i in range(len(st.sqls)):
                if st.sub_status[i] in ("SUBMITTED", "STARTED"):
                    st.sub_status[i] = "ABORTED"
                elif st.sub_status[i] == "FINISHED":
                    st.sub_status[i] = "ABORTED"  # rolled back with the batch
            st.sub_status[current] = "ABORTED" if aborted else "FAILED"
            st.status, st.error = ("ABORTED", message) if aborted else ("FAILED", message)
        finally:
            st.updated = time.time()
            st.conn = None
            conn.close()

    def _copy(self, cur: Any, m: re.Match[str]) -> int:
        """A Redshift COPY from S3, run as PostgreSQL ``COPY … FROM STDIN`` of the objects it names."""
        opts_text = m.group("opts")
        opts: dict[str, re.Match[str]] = {}
        rest = opts_text
        for name, pattern in _OPTIONS.items():
            found = re.search(r"(?:^|\s)" + pattern + r"(?=\s|;|$)", rest, re.IGNORECASE | re.DOTALL)
            if found:
                opts[name] = found
                rest = rest[: found.start()] + " " + rest[found.end() :]
        if rest.strip(" \n\t;"):
            raise ValueError(f"COPY option the stand-in does not emulate: {rest.strip()!r}")
        if "iam_role" not in opts:
            raise ValueError("COPY needs credentials: IAM_ROLE")
        url = m.group("url").replace("''", "'")
        bucket, _, key = url.removeprefix("s3://").partition("/")
        s3 = self._s3()
        if "manifest" in opts:
            manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            objects = []
            for entry in manifest["entries"]:
                b, _, k = entry["url"].removeprefix("s3://").partition("/")
                if "parquet" in opts and "content_length" not in entry.get("meta", {}):
                    raise ValueError("a manifest for Parquet COPY needs meta.content_length on every entry")
                objects.append((b, k, entry.get("mandatory", False)))
        else:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            objects = [(bucket, o["Key"], True) for page in pages for o in page.get("Contents", [])]
        table, cols = m.group("table"), m.group("cols")
        col_list = f" ({cols})" if cols else ""
        names = [c.strip().strip('"') for c in cols.split(",")] if cols else None
        header = int(opts["ignoreheader"].group(1)) if "ignoreheader" in opts else 0
        total = 0
        for b, k, mandatory in objects:
            try:
                raw = s3.get_object(Bucket=b, Key=k)["Body"].read()
            except Exception as exc:
                if mandatory:
                    raise ValueError(f"S3ServiceException: the specified key does not exist: s3://{b}/{k}") from exc
                continue
            if "parquet" in opts:
                data = _parquet_as_csv(raw, names)
                sql = f"COPY {table}{col_list} FROM STDIN WITH (FORMAT csv, HEADER true)"
            else:
                if "zstd" in opts:
                    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
                elif "gzip" in opts:
                    raw = gzip.decompress(raw)
                if header > 1:
                    raise ValueError("IGNOREHEADER above 1 is not emulated")
                # Redshift CSV: an empty unquoted field is NULL for non-text columns, and for text with EMPTYASNULL;
                # a quoted empty field ("") stays ''. PostgreSQL's CSV COPY makes exactly that distinction.
                if "emptyasnull" not in opts:
                    raise ValueError("COPY of CSV without EMPTYASNULL is not emulated (text NULLs would load as '')")
                sql = f"COPY {table}{col_list} FROM STDIN WITH (FORMAT csv, HEADER {'true' if header else 'false'})"
                data = raw
            cur.copy_expert(sql, io.BytesIO(data), size=1 << 20)
            total += cur.rowcount
        return total

    def _s3(self) -> Any:
        from tasks.io.aws import client

        return client("s3", "us-east-1", self.s3_endpoint)


def _parquet_as_csv(raw: bytes, names: list[str] | None) -> bytes:
    """A Parquet object as the CSV PostgreSQL's COPY reads (NULL empty and unquoted, '' as ``""``).

    As Redshift does, the file's columns go to the listed (or the table's) columns by position, and their numbers
    must match.
    """
    table = pq.read_table(pa.BufferReader(raw))
    if names is not None:
        if table.num_columns != len(names):
            raise ValueError(
                f"Spectrum Scan Error: the Parquet file has {table.num_columns} columns, COPY names {len(names)}"
            )
        table = table.rename_columns(names)
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=True, quoting_style="needed"))
    return sink.getvalue()


def _field(value: Any) -> dict[str, Any]:
    """One value as a Data API ``Field``."""
    if value is None:
        return {"isNull": True}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"longValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}
