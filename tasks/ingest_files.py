"""Tasks of file ingestion: list new landing files, check their rows, upsert the good ones, set the rest aside."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.csv as pacsv
from prefect import get_run_logger, task

from config.errors import KeyFailedError
from config.models import FileSourceConfig
from tasks.io.objectstore import ObjectStore
from tasks.io.rds_writer import AlreadyLoaded, LedgerEntry, RdsWriter
from tasks.resources import Resources
from tasks.retries import BATCH_IO, SETUP_IO
from tasks.transforms.paths import UnsafePathError, join_under
from tasks.transforms.validate import BadFile, check_rows, decode, read_rows


@dataclass(frozen=True)
class FileResult:
    """What happened to one landing file; for a loaded file ``rows_in = rows_loaded + rows_rejected``."""

    file: str
    status: str  # loaded | skipped | quarantined | failed
    rows_in: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    reason: str = ""
    seconds: float = 0.0

    def as_row(self) -> dict[str, Any]:
        """The result as one summary-table row."""
        return asdict(self)


def relative_name(source: FileSourceConfig, key: str) -> str:
    """The object key relative to the source's landing prefix."""
    return key[len(source.landing_prefix) :].lstrip("/")


@task(name="prepare_file_target", **SETUP_IO)
def prepare_file_target(source: FileSourceConfig, resources: Resources) -> None:
    """Create the target table and the file ledger when missing."""
    resources.rds_writer().prepare(source)


@task(name="list_landing_files", **SETUP_IO)
def list_landing_files(source: FileSourceConfig, resources: Resources) -> list[str]:
    """Object keys under the landing prefix whose name matches the source's pattern, oldest name first."""
    store = resources.object_store()
    keys = [
        k
        for k in store.list_keys(source.landing_prefix + "/")
        if not k.endswith("/") and fnmatch.fnmatch(relative_name(source, k), source.pattern)
    ]
    get_run_logger().info(
        "%d file(s) under s3://%s/%s/ match %r", len(keys), store.bucket, source.landing_prefix, source.pattern
    )
    return sorted(keys)


def _rejected_csv(table: Any) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    return buf.getvalue()


def ingest_one(source: FileSourceConfig, key: str, store: ObjectStore, writer: RdsWriter) -> FileResult:
    """Load one landing file: skip it when its content was loaded before, quarantine it when unreadable."""
    started = time.perf_counter()
    name = relative_name(source, key)
    size = int(store.head(key).get("ContentLength", 0))
    if size > source.max_file_bytes:
        data = b""
        problem: str | None = f"file is {size} bytes; at most {source.max_file_bytes}"
    else:
        data = store.get_bytes(key)
        problem = None
    digest = hashlib.sha256(data or key.encode()).hexdigest()
    before = writer.seen(source, digest)
    if before is not None:
        return FileResult(key, "skipped", reason=f"content already {before.status} as {before.file_key}")
    try:
        safe = join_under(source.quarantine_prefix, name)
    except UnsafePathError as exc:
        safe, problem = join_under(source.quarantine_prefix, f"unsafe-name-{digest[:16]}"), f"unsafe file name: {exc}"
    try:
        if problem:
            raise BadFile(problem)
        checked = check_rows(read_rows(decode(name, data, source.csv.encoding), source), source)
    except BadFile as bad:
        if data:
            store.put_bytes(data, safe)
        store.put_bytes(f"{key}: {bad.reason}\n".encode(), safe + ".reason.txt", "text/plain")
        try:
            writer.quarantine(source, LedgerEntry(source.name, digest, key, "quarantined", 0, 0, 0, bad.reason))
        except AlreadyLoaded as same:
            return FileResult(key, "skipped", reason=str(same), seconds=round(time.perf_counter() - started, 3))
        return FileResult(key, "quarantined", reason=bad.reason, seconds=round(time.perf_counter() - started, 3))
    if checked.rejected.num_rows:
        store.put_bytes(
            _rejected_csv(checked.rejected), join_under(source.rejected_prefix, name) + ".rejected.csv", "text/csv"
        )
    entry = LedgerEntry(
        source.name, digest, key, "loaded", checked.rows_in, checked.good.num_rows, checked.rejected.num_rows
    )
    try:
        loaded = writer.load(source, checked.good, entry)
    except AlreadyLoaded as same:  # a copy of this file committed first, in a parallel branch
        return FileResult(key, "skipped", reason=str(same), seconds=round(time.perf_counter() - started, 3))
    if loaded + checked.rejected.num_rows != checked.rows_in:  # pragma: no cover - a broken invariant, never data
        raise KeyFailedError(
            f"{key}: rows in {checked.rows_in} != loaded {loaded} + rejected {checked.rejected.num_rows}"
        )
    return FileResult(
        key,
        "loaded",
        checked.rows_in,
        loaded,
        checked.rejected.num_rows,
        seconds=round(time.perf_counter() - started, 3),
    )


@task(name="ingest_file", **BATCH_IO)
def ingest_file(source: FileSourceConfig, resources: Resources, key: str) -> FileResult:
    """Check one file's rows, upsert the good ones with the file's ledger row, and set the rest aside."""
    result = ingest_one(source, key, resources.object_store(), resources.rds_writer())
    logger = get_run_logger()
    if result.status == "quarantined":
        logger.warning("Quarantined %s: %s", key, result.reason)
    elif result.status == "skipped":
        logger.info("Skipped %s: %s", key, result.reason)
    else:
        logger.info(
            "Loaded %s: %d row(s) in, %d loaded, %d rejected",
            key,
            result.rows_in,
            result.rows_loaded,
            result.rows_rejected,
        )
    return result
