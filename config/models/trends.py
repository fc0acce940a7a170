"""``config/trends/*.yaml``: one trend-scoring job over the event archive, its windows and score parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from config.models.common import Ident, _FileModel, _Model, _relative_key


class ScoringConfig(_Model):
    """The trending score's parameters (README: "How trends are scored")."""

    prior: Literal["fit", "fixed"] = Field(
        "fit", description="fit: Beta prior fitted to the recent per-article CTRs; fixed: alpha and beta below"
    )
    alpha: float = Field(1.0, gt=0, le=1e6, description="Beta prior alpha (prior clicks); the fallback when fitting")
    beta: float = Field(30.0, gt=0, le=1e6, description="Beta prior beta (prior non-clicks)")
    half_life_minutes: float = Field(60.0, gt=0, le=10_080, description="time decay half-life")
    max_age_minutes: float = Field(180.0, gt=0, le=10_080, description="older articles are past news (score 0)")
    velocity_weight: float = Field(0.25, ge=0, le=10, description="weight of velocity (0 switches it off)")
    baseline_windows: int = Field(10, ge=1, le=1440, description="windows before the latest that form the baseline")


class TrendConfig(_FileModel):
    """One trend-scoring job: the event archive it reads, its windows, score parameters and where results go."""

    name: Ident
    description: str = ""
    archive_prefix: str = Field("events/archive", min_length=1, max_length=512, description="S3 prefix of events")
    users_key: str = Field("reference/users.csv", min_length=1, max_length=1024, description="user reference CSV")
    window_seconds: int = Field(60, ge=1, le=3600, description="tumbling window width, dividing an hour")
    lateness_seconds: int = Field(120, ge=0, le=86_400, description="allowed lateness after a window ends")
    max_catch_up_minutes: int = Field(
        180, ge=1, le=10_080, description="after downtime, recount at most this far back (older: `trends backfill`)"
    )
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)  # type: ignore[arg-type]
    top_n: int = Field(20, ge=1, le=1000, description="articles kept per (gender, segment)")
    ttl_minutes: int = Field(30, ge=1, le=10_080, description="serving items expire after this (DynamoDB TTL)")
    counts_schema: Ident = Field("trends", description="warehouse schema of the window counts")
    counts_table: Ident = Field("trend_counts", description="warehouse table of the window counts")
    serving_table: str = Field("keyflow_trending", min_length=3, max_length=255, description="DynamoDB top-N table")
    parallel_files: int = Field(2, ge=1, le=32, description="event files read at once")
    file_processes: bool = Field(
        False,
        description="inflate and read gzip JSON lines files in worker processes, one per file read at once, so that "
        "reading can use more cores than one process's threads get (default: threads of the flow's process, which "
        "on 2 cores are as fast and use less CPU; BENCHMARKS.md)",
    )
    rejected_prefix: str = Field(
        "events/trends-rejected",
        min_length=1,
        max_length=512,
        description="S3 prefix where each archive file's bad lines are written (file, line, reason, text)",
    )
    quarantine_prefix: str = Field(
        "events/trends-quarantine",
        min_length=1,
        max_length=512,
        description="S3 prefix where a file that is not gzip JSON lines or Parquet is copied, with its reason",
    )
    max_invalid_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="a run fails when more than this share of an hour's lines are invalid (0: any, 1: never)",
    )
    compact: bool = Field(True, description="each run compacts the hours closed to late events into Parquet")
    compact_target_mb: int = Field(
        64, ge=1, le=4096, description="compacted files are at least this big, or one file holds the whole hour"
    )

    @field_validator("window_seconds")
    @classmethod
    def _divides_hour(cls, v: int) -> int:
        if 3600 % v:
            raise ValueError(f"{v} does not divide an hour (3600 seconds): windows must tile the hour partitions")
        return v

    @field_validator("archive_prefix", "users_key", "rejected_prefix", "quarantine_prefix")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _relative_key(v)
