"""`keyflow setup`: create, idempotently, the AWS resources a profile and its jobs name.

The staging bucket (default encryption, public access blocked, a lifecycle rule that expires abandoned staged
objects and aborts incomplete uploads), the key table, and the article and trend serving tables of the events and
trends jobs, all DynamoDB tables with SSE. Each resource or bucket property is read first and created only when
missing, so a second run reports everything as already there; a dry run creates nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.errors import ConfigError
from config.loader import config_dir, display_path, load_events, load_trends, read_yaml
from config.models import EventsConfig, Profile, TrendConfig
from tasks.io.aws import DynamoTable
from tasks.io.objectstore import PUBLIC_ACCESS_FLAGS, S3ObjectStore
from tasks.resources import Resources, key_store_for, object_store_for, trend_serving_for

STAGED_EXPIRY_DAYS = 7
"""Staged objects older than this are abandoned (a run stages and loads within hours): the bucket expires them."""

INCOMPLETE_UPLOAD_DAYS = 1
"""A multipart upload not completed within this many days was killed: its parts are dropped."""

CREATED, EXISTS, WOULD_CREATE, DIFFERS = "created", "exists", "would create", "differs"


@dataclass(frozen=True)
class SetupStep:
    """One resource or bucket property and what setup did about it (created, exists, would create, differs)."""

    status: str
    what: str
    detail: str = ""

    @property
    def line(self) -> str:
        """The step as one line: ``created      bucket s3://x: …``."""
        return f"{self.status:<12} {self.what}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class SetupJobs:
    """The events and trends jobs whose tables setup creates."""

    events: tuple[EventsConfig, ...] = ()
    trends: tuple[TrendConfig, ...] = ()


def lifecycle_rule_id(prefix: str) -> str:
    """The id of keyflow's lifecycle rule for a staging prefix (S3 allows 255 characters)."""
    return ("keyflow-staged-" + re.sub(r"[^A-Za-z0-9_.-]", "-", prefix.strip("/")))[:255]


def lifecycle_rule(prefix: str, expire_days: int = STAGED_EXPIRY_DAYS) -> dict[str, object]:
    """The lifecycle rule setup adds: staged objects under ``prefix`` expire, incomplete uploads are aborted."""
    return {
        "ID": lifecycle_rule_id(prefix),
        "Filter": {"Prefix": prefix.strip("/") + "/"},
        "Status": "Enabled",
        "Expiration": {"Days": expire_days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": INCOMPLETE_UPLOAD_DAYS},
    }


def jobs_for(names: list[str] | None = None) -> SetupJobs:
    """The jobs named (an events or a trends job, by name or path), or every job of the config dir.

    Raises:
        ConfigError: a name is neither an events nor a trends job, or a job's YAML is invalid.
    """
    if not names:
        root = config_dir()
        return SetupJobs(
            tuple(load_events(p) for p in sorted((root / "events").glob("*.yaml"))),
            tuple(load_trends(p) for p in sorted((root / "trends").glob("*.yaml"))),
        )
    events: list[EventsConfig] = []
    trends: list[TrendConfig] = []
    for name in names:
        kind = _job_kind(name)
        if kind == "events":
            events.append(load_events(name))
        elif kind == "trends":
            trends.append(load_trends(name))
        else:
            root = config_dir()
            raise ConfigError(
                f"-j {name}: not an events or trends job "
                f"(looked in {display_path(root / 'events')}/ and {display_path(root / 'trends')}/)"
            )
    return SetupJobs(tuple(events), tuple(trends))


def _job_kind(name: str) -> str | None:
    """``events`` or ``trends`` for a job name (its file in the config dir) or a YAML path (by its fields)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        data = read_yaml(path)
        if isinstance(data, dict) and "serving_table" in data:
            return "trends"
        if isinstance(data, dict) and "events_table" in data:
            return "events"
        return None
    for kind in ("events", "trends"):
        if (config_dir() / kind / f"{name}.yaml").is_file():
            return kind
    return None


def setup_resources(profile: Profile, jobs: SetupJobs = SetupJobs(), dry_run: bool = False) -> list[SetupStep]:
    """Create what is missing, in order: bucket and its properties, key table, article and serving tables."""
    steps = _bucket_steps(object_store_for(profile), profile, dry_run)
    encryption = "SSE-KMS" + (f" ({profile.kms_key_id})" if profile.kms_key_id else " (AWS-owned key)")
    steps.append(_table_step(key_store_for(profile), "key table", encryption, dry_run))
    resources = Resources(profile)
    seen: set[str] = set()
    for job in jobs.events:
        if job.reference.table not in seen:
            seen.add(job.reference.table)
            table = resources.articles(job)
            steps.append(_table_step(table, "article table", f"{encryption}, events job {job.name}", dry_run))
    for trend in jobs.trends:
        if trend.serving_table not in seen:
            seen.add(trend.serving_table)
            serving = trend_serving_for(profile, trend)
            detail = f"{encryption}, TTL on expires_at, trends job {trend.name}"
            steps.append(_table_step(serving, "trend serving table", detail, dry_run))
    return steps


def _table_step(table: DynamoTable, kind: str, detail: str, dry_run: bool) -> SetupStep:
    what = f"{kind} {table.table}"
    if table.probe():
        return SetupStep(EXISTS, what)
    if dry_run:
        return SetupStep(WOULD_CREATE, what, detail)
    table.ensure()
    return SetupStep(CREATED, what, detail)


def _bucket_steps(store: S3ObjectStore, profile: Profile, dry_run: bool) -> list[SetupStep]:
    bucket = f"s3://{store.bucket}"
    wanted = "SSE-KMS with " + profile.kms_key_id if profile.kms_key_id else "SSE-S3"
    rule = lifecycle_rule(profile.prefix)
    rule_detail = (
        f"objects under {profile.prefix.strip('/')}/ expire after {STAGED_EXPIRY_DAYS} days, "
        f"incomplete uploads are aborted after {INCOMPLETE_UPLOAD_DAYS} day"
    )
    steps: list[SetupStep] = []

    def step(what: str, present: bool, create: Callable[[], None], detail: str) -> None:
        if present:
            steps.append(SetupStep(EXISTS, what))
        elif dry_run:
            steps.append(SetupStep(WOULD_CREATE, what, detail))
        else:
            create()
            steps.append(SetupStep(CREATED, what, detail))

    exists = store.bucket_exists()
    step(f"bucket {bucket}", exists, store.create_bucket, f"region {profile.aws_region}")
    if not exists and dry_run:  # nothing more to read: every property would be created with the bucket
        steps.append(SetupStep(WOULD_CREATE, f"default encryption of {bucket}", wanted))
        steps.append(SetupStep(WOULD_CREATE, f"public access block of {bucket}", "all public access blocked"))
        steps.append(SetupStep(WOULD_CREATE, f"lifecycle rule {rule['ID']} of {bucket}", rule_detail))
        return steps

    current = store.default_encryption()
    if current is not None and profile.kms_key_id and current.get("SSEAlgorithm") != "aws:kms":
        steps.append(
            SetupStep(
                DIFFERS,
                f"default encryption of {bucket}",
                f"{current.get('SSEAlgorithm')}, but the profile names KMS key {profile.kms_key_id} "
                "(`keyflow audit` will fail): change the bucket's default encryption or the profile",
            )
        )
    else:
        step(f"default encryption of {bucket}", current is not None, store.put_default_encryption, wanted)

    block = store.public_access_block() or {}
    blocked = all(block.get(flag) for flag in PUBLIC_ACCESS_FLAGS)
    step(f"public access block of {bucket}", blocked, store.block_public_access, "all public access blocked")

    rules = store.lifecycle_rules()
    present = any(r.get("ID") == rule["ID"] for r in rules)
    step(
        f"lifecycle rule {rule['ID']} of {bucket}",
        present,
        lambda: store.put_lifecycle_rules([*rules, rule]),
        rule_detail,
    )
    return steps
