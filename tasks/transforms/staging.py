"""Staging layout and manifests: where a key's files go and what the warehouse reads back."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote

from config.errors import ReconciliationError
from tasks.transforms.paths import join_under

EXTENSIONS = {"zstd": ".csv.zst", "gzip": ".csv.gz", "none": ".csv"}
PARQUET_EXTENSIONS = {"zstd": ".zstd.parquet", "gzip": ".gz.parquet", "none": ".parquet"}  # codec inside the file

LEASE = "_lease.json"
"""The object a running ETL run keeps fresh under its run prefix: while it is fresh, nothing removes the run."""

RUN_ID = re.compile(r"\d{4}-\d{2}-\d{2}-\d{6}-[0-9A-Za-z]+")
"""What an ETL run id looks like (``2017-03-20-140312-3f2a9c1d``): the only folders ``keyflow cleanup`` removes."""


def key_segment(key: str) -> str:
    """A key as one safe S3 path segment (``/``, ``..`` and control characters percent-encoded)."""
    seg = quote(key, safe="-_.~")
    return seg.replace(".", "%2E") if seg in (".", "..") or seg.startswith("..") else seg


def run_prefix(prefix: str, dataset: str, run_id: str) -> str:
    """``<prefix>/<dataset>/<run_id>/`` — everything one ETL run stages, and its lease."""
    return join_under(prefix, f"{dataset}/{run_id}") + "/"


def key_prefix(prefix: str, dataset: str, run_id: str, key: str) -> str:
    """``<prefix>/<dataset>/<run_id>/<key>/`` — run-scoped, so concurrent or retried runs never collide."""
    return join_under(prefix, f"{dataset}/{run_id}/{key_segment(key)}") + "/"


def unit_prefix(prefix: str, dataset: str, run_id: str, digest: str) -> str:
    """``<prefix>/<dataset>/<run_id>/unit=<digest>/`` — a shared unit's files (no key's segment has a raw ``=``)."""
    return join_under(prefix, f"{dataset}/{run_id}/unit={digest}") + "/"


def part_name(key_prefix_: str, n: int, compression: str, fmt: str = "csv") -> str:
    """The object key of part ``n`` of a staged key, with the format's and compression's extension."""
    extension = PARQUET_EXTENSIONS[compression] if fmt == "parquet" else EXTENSIONS[compression]
    return f"{key_prefix_}part-{n:05d}{extension}"


@dataclass(frozen=True)
class StagedPart:
    """One staged file: its object key, rows and bytes."""

    key: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class KeyCounts:
    """One key's rows in a shared unit: read from the source, dropped by the rules, staged."""

    key: str
    rows_extracted: int
    rows_filtered: int
    rows_staged: int
    dates: tuple[str, ...] = ()  # run dates the load records for the key (a backfill's); empty: the staged run date


@dataclass(frozen=True)
class StagedKey:
    """What staging one key produced; small and picklable, passed from the stage task to the load task."""

    dataset: str
    key: str
    run_id: str
    run_date: str
    bucket: str
    prefix: str
    manifest_key: str
    compression: str
    columns: tuple[str, ...]
    rows_extracted: int
    rows_filtered: int
    rows_staged: int
    bytes_staged: int
    seconds: float
    parts: tuple[StagedPart, ...] = field(default_factory=tuple)
    format: str = "csv"  # csv (compressed whole) or parquet (compressed inside, column by column)
    members: tuple[KeyCounts, ...] = ()  # a unit's keys and their counts (``key`` is then its label)

    @property
    def manifest_url(self) -> str:
        """The ``s3://`` URL of the key's COPY manifest."""
        return f"s3://{self.bucket}/{self.manifest_key}"


def redshift_manifest(bucket: str, parts: list[StagedPart]) -> bytes:
    """A Redshift COPY manifest listing every part as mandatory."""
    entries = [{"url": f"s3://{bucket}/{p.key}", "mandatory": True, "meta": {"content_length": p.bytes}} for p in parts]
    return json.dumps({"entries": entries}, indent=1).encode()


def run_record(staged: StagedKey, run_date: date) -> bytes:
    """The run record of a staged key (rows per part), kept beside the manifest for audits and reruns."""
    body = asdict(staged)
    body["run_date"] = run_date.isoformat()
    return json.dumps(body, indent=1, default=str).encode()


def reconcile(staged: StagedKey, copied: int, loaded: int) -> None:
    """Rows extracted = rows staged (+ rows the rules filtered out) = rows copied = rows the key now has."""
    if staged.rows_extracted != staged.rows_staged + staged.rows_filtered or not (
        staged.rows_staged == copied == loaded
    ):
        raise ReconciliationError(staged.key, staged.rows_extracted, staged.rows_staged, loaded)


def reconcile_unit(staged: StagedKey, copied: int, loaded: Mapping[str, int]) -> None:
    """A shared unit reconciles when the COPY took every staged row and each key has exactly the rows it staged.

    Per key: rows extracted = rows staged + rows the rules filtered out = rows the key now has. ``loaded`` is the
    target's count per key (a key without rows may be absent). The first key that disagrees is named.
    """
    if copied != staged.rows_staged:
        raise ReconciliationError(staged.key, staged.rows_extracted, staged.rows_staged, copied)
    for m in staged.members:
        n = loaded.get(m.key, 0)
        if m.rows_extracted != m.rows_staged + m.rows_filtered or m.rows_staged != n:
            raise ReconciliationError(m.key, m.rows_extracted, m.rows_staged, n)
    if sum(loaded.values()) != copied:  # rows of a key outside the unit (a rule that rewrote the key)
        raise ReconciliationError(staged.key, staged.rows_extracted, staged.rows_staged, sum(loaded.values()))


def lease_record(run_id: str, owner: str, renewed_at: datetime, seconds: float) -> bytes:
    """The body of a run's lease: who holds it and until when (cleanup reads the object's own time, not this)."""
    body = {
        "run_id": run_id,
        "owner": owner,
        "renewed_at": renewed_at.isoformat(),
        "expires_at": (renewed_at + timedelta(seconds=seconds)).isoformat(),
    }
    return json.dumps(body, indent=1).encode()


@dataclass(frozen=True)
class StagedRun:
    """What one ETL run left under ``<prefix>/<dataset>/<run_id>/``, from a listing of the bucket."""

    prefix: str
    dataset: str
    run_id: str
    objects: int
    bytes: int
    newest: datetime
    lease_renewed: datetime | None = None

    def live(self, now: datetime, lease_seconds: float) -> bool:
        """Whether a process still holds the run: its lease was renewed less than ``lease_seconds`` ago."""
        return self.lease_renewed is not None and now - self.lease_renewed < timedelta(seconds=lease_seconds)


def _base(prefix: str) -> str:
    return prefix.strip("/") + "/" if prefix.strip("/") else ""


def run_of(prefix: str, key: str) -> str | None:
    """The run prefix (``<prefix>/<dataset>/<run_id>/``) an object key belongs to, or None when it is no run's."""
    base = _base(prefix)
    if not key.startswith(base):
        return None
    parts = key[len(base) :].split("/")
    if len(parts) < 3 or not parts[0] or not RUN_ID.fullmatch(parts[1]):
        return None
    return f"{base}{parts[0]}/{parts[1]}/"


def staged_runs(prefix: str, objects: Iterable[Mapping[str, Any]]) -> list[StagedRun]:
    """Group a listing (``Key``, ``Size``, ``LastModified``) of the staging prefix into runs, oldest first.

    Only ``<prefix>/<dataset>/<run_id>/…`` with a run id of the ETL's form counts: anything else under the prefix
    (files a person put there, another tool's folders) is never taken for a run.
    """
    base = _base(prefix)
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in objects:
        key = str(obj["Key"])
        if run_of(prefix, key) is None:
            continue
        parts = key[len(base) :].split("/")
        run = runs.setdefault((parts[0], parts[1]), {"objects": 0, "bytes": 0, "newest": None, "lease": None})
        modified: datetime = obj["LastModified"]
        run["objects"] += 1
        run["bytes"] += int(obj.get("Size", 0))
        run["newest"] = modified if run["newest"] is None else max(run["newest"], modified)
        if len(parts) == 3 and parts[2] == LEASE:
            run["lease"] = modified
    return sorted(
        (
            StagedRun(
                prefix=f"{base}{dataset}/{run_id}/",
                dataset=dataset,
                run_id=run_id,
                objects=r["objects"],
                bytes=r["bytes"],
                newest=r["newest"],
                lease_renewed=r["lease"],
            )
            for (dataset, run_id), r in runs.items()
        ),
        key=lambda r: (r.newest, r.prefix),
    )
