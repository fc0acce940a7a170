"""Staging layout and manifests: where a key's files go and what the warehouse reads back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date
from urllib.parse import quote

from config.errors import ReconciliationError
from tasks.transforms.paths import join_under

EXTENSIONS = {"zstd": ".csv.zst", "gzip": ".csv.gz", "none": ".csv"}
PARQUET_EXTENSIONS = {"zstd": ".zstd.parquet", "gzip": ".gz.parquet", "none": ".parquet"}  # codec inside the file


def key_segment(key: str) -> str:
    """A key as one safe S3 path segment (``/``, ``..`` and control characters percent-encoded)."""
    seg = quote(key, safe="-_.~")
    return seg.replace(".", "%2E") if seg in (".", "..") or seg.startswith("..") else seg


def key_prefix(prefix: str, dataset: str, run_id: str, key: str) -> str:
    """``<prefix>/<dataset>/<run_id>/<key>/`` — run-scoped, so concurrent or retried runs never collide."""
    return join_under(prefix, f"{dataset}/{run_id}/{key_segment(key)}") + "/"


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
