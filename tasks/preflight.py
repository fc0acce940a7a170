"""Preflight: every problem that would fail a run, found before a row moves, one line each.

Each ``check_*`` function looks at one resource (the source table, the rules, the secrets, the bucket, the key
table, the warehouse target, the RDS table, the broker, the article table, the users file, the trend counts) and
returns its problems; nothing stops at the first. A line names the file and field (``config/datasets/x.yaml:
source.date_column: 'day' is not a column of 'facts'``) or the resource (``config/profiles/aws.yaml: bucket:
s3://b/keyflow/: NoSuchBucket: …``). :func:`preflight` runs the checks a job needs; every flow calls it first
(:func:`check_before_run`, through ``flows.common``), and ``keyflow check`` runs it on its own (:func:`check_job`).

It changes nothing a run would not: the only write is a small probe object, put with the profile's SSE and deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import pyarrow as pa
from prefect import get_run_logger, task

from config.errors import ConfigError, KeyflowError, RetryableError, first_line
from config.models import DatasetConfig, EventsConfig, FileSourceConfig, Profile, SecretRef, TrendConfig
from tasks.io.kms import check_kms_key
from tasks.resources import Resources, resources_for
from tasks.transforms.plan import plan_table
from tasks.transforms.sql import TableSpec

Job = DatasetConfig | FileSourceConfig | EventsConfig | TrendConfig
T = TypeVar("T")

RECHECK_DELAYS = (2.0, 8.0)
"""A run whose only problems may clear up (a refused connection, a timeout) checks again after these waits."""


@dataclass(frozen=True)
class Problem:
    """One thing that would make the run fail, as one line naming the file and field, or the resource."""

    line: str
    transient: bool = False  # connection trouble that may clear up by itself (a run checks again before failing)


@dataclass
class _Checker:
    """Runs checks against one run's resources, turning keyflow's errors into problem lines."""

    resources: Resources
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    aws_down: bool = False  # the AWS endpoint did not answer: further AWS checks would only repeat it

    @property
    def profile(self) -> Profile:
        return self.resources.profile

    def in_file(self, file: str, line: str) -> str:
        """``line`` as ``file: line``; a line naming its profile (``profile NAME: …``) names the file instead."""
        p = self.profile
        for prefix in (f"{p.file}: ", f"profile {p.name}: "):
            if line.startswith(prefix):
                return f"{p.file}: {line.removeprefix(prefix)}"
        return line if line.startswith(f"{file}: ") else f"{file}: {line}"

    def attempt(self, what: str, file: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None with its error kept as problem lines prefixed with ``file``; ``what`` is checked."""
        self.mark(what)
        try:
            return call()
        except ConfigError as exc:
            self.problems += [Problem(self.in_file(file, line)) for line in exc.problems]
        except RetryableError as exc:
            self.problems.append(Problem(self.in_file(file, first_line(exc)), transient=True))
        except KeyflowError as exc:
            self.problems.append(Problem(self.in_file(file, first_line(exc))))
        return None

    def found(self) -> list[Problem]:
        """The problems, each once (a secret two resources need is reported by the first that asks)."""
        return list(dict.fromkeys(self.problems))

    def mark(self, what: str) -> None:
        """Note that ``what`` was looked at (``keyflow check`` lists them)."""
        if what not in self.checked:
            self.checked.append(what)

    def add(self, file: str, lines: list[str] | None) -> None:
        """Problem lines an adapter's check returned, each prefixed with ``file``."""
        self.problems += [Problem(self.in_file(file, line)) for line in lines or []]

    def aws(self, what: str, file: str, call: Callable[[], T]) -> T | None:
        """An AWS call: skipped once the endpoint proved unreachable (one line says so, not one per resource)."""
        if self.aws_down:
            return None
        before = len(self.problems)
        result = self.attempt(what, file, call)
        new = self.problems[before:]
        if any(p.transient or "host name does not resolve" in p.line for p in new):
            self.aws_down = True
        return result


# --- one check per resource


def check_secret(c: _Checker, file: str, field_name: str, ref: SecretRef | None, env_default: str) -> None:
    """A password the profile (or a job) names resolves (the environment, a Prefect Secret, AWS Secrets Manager)."""
    c.attempt("secrets", file, lambda: c.resources.secret(ref, field_name, env_default))


def check_rule_secrets(c: _Checker, ds: DatasetConfig) -> None:
    """Every salt and encryption key the rules name is in the profile and resolves; KMS keys exist and are enabled."""
    p = c.profile
    for i, rule in enumerate(ds.rules):
        privacy = rule.privacy
        if privacy is None:
            continue
        if privacy.salt_secret:
            name = privacy.salt_secret
            if name not in p.secrets:
                c.mark("secrets")
                c.problems.append(
                    Problem(
                        f"{ds.file}: rules[{i}].privacy.salt_secret: {name!r} is not among the secrets of {p.file} "
                        f"(add secrets.{name} there)"
                    )
                )
            else:
                c.attempt("secrets", p.file, partial(c.resources.salts, {name}))
        if privacy.action == "encrypt" and privacy.key:
            name = privacy.key
            entry = p.encryption_keys.get(name)
            if entry is None:
                c.mark("encryption keys")
                c.problems.append(
                    Problem(f"{ds.file}: rules[{i}].privacy.key: {name!r} is not among the encryption_keys of {p.file}")
                )
                continue
            c.attempt("encryption keys", p.file, partial(c.resources.data_keys, {name}))
            if entry.kms_key_id:
                kms_id = entry.kms_key_id
                problem = c.aws("encryption keys", p.file, partial(_kms, p, kms_id))
                if problem:
                    c.problems.append(Problem(f"{p.file}: encryption_keys.{name}.kms_key_id: {problem}"))


def _kms(profile: Profile, key_id: str) -> str | None:
    return check_kms_key(key_id, profile.aws_region, profile.aws_endpoint_url)


def check_source(c: _Checker, ds: DatasetConfig) -> pa.Schema | None:
    """The source database answers, and has the table with every column the dataset names (key, date, columns)."""
    source = c.attempt("source", c.profile.file, c.resources.source)
    if source is None:
        return None
    lines = c.attempt("source", c.profile.file, lambda: source.check(ds.source))
    if lines is None:
        return None
    c.add(ds.file, lines)
    if lines or ds.source.table is None:
        return None
    return c.attempt("source", ds.file, lambda: source.source_schema(ds.source))


def check_rules(c: _Checker, ds: DatasetConfig, schema: pa.Schema | None) -> TableSpec | None:
    """The rules run on an empty batch of the source's schema: every column they name is there.

    The target table is planned from what they produce; a query source is planned from ``target.columns``.
    """
    if schema is None and ds.source.table is not None:
        return None  # the source check said why
    return c.attempt("rules", ds.file, lambda: plan_table(ds, schema, ds.file))


def encryption_problem(rule: dict[str, Any] | None, kms_key_id: str | None) -> str | None:
    """What ``keyflow audit`` would say of a bucket's default encryption rule (None: what it expects)."""
    if rule is None:
        return "has no default encryption (keyflow audit fails on it; `keyflow setup` sets it)"
    if kms_key_id and rule.get("SSEAlgorithm") != "aws:kms":
        return f"default encryption is {rule.get('SSEAlgorithm')}, but the profile names a KMS key (kms_key_id)"
    return None


def check_bucket(c: _Checker, prefix: str, write: bool = True, encryption: bool = True) -> None:
    """The bucket can be listed under ``prefix`` and, when ``write``, written there, with the right encryption.

    A probe object is put with the profile's SSE and deleted; the default encryption is the one ``keyflow audit``
    expects; the profile's KMS key exists.
    """
    p = c.profile
    store = c.resources.object_store()
    before = len(c.problems)
    c.aws("bucket", p.file, lambda: _probe(store, prefix, write))
    if len(c.problems) > before or not encryption:
        return
    rule = c.aws("bucket", p.file, store.default_encryption)
    if len(c.problems) == before:
        problem = encryption_problem(rule, p.kms_key_id)
        if problem:
            c.problems.append(Problem(f"{p.file}: bucket: s3://{p.bucket} {problem}"))
    if p.kms_key_id:
        kms_id = p.kms_key_id
        problem = c.aws("bucket", p.file, lambda: _kms(p, kms_id))
        if problem:
            c.problems.append(Problem(f"{p.file}: kms_key_id: {problem}"))


def _probe(store: Any, prefix: str, write: bool) -> None:
    try:
        store.probe(prefix, write)
    except ConfigError as exc:
        raise ConfigError([f"bucket: {line}" for line in exc.problems]) from None
    except RetryableError as exc:
        raise RetryableError(f"bucket: {exc}") from None


def check_key_table(c: _Checker) -> None:
    """The DynamoDB key table exists (``keyflow keys put`` creates it)."""
    p = c.profile
    exists = c.aws("key table", p.file, c.resources.key_store().probe)
    if exists is False:
        c.problems.append(
            Problem(
                f"{p.file}: keys_table: DynamoDB table {p.keys_table!r} does not exist "
                "(`keyflow keys put` or `keyflow setup` creates it)"
            )
        )


def check_warehouse(c: _Checker, ds: DatasetConfig | None, spec: TableSpec | None) -> None:
    """The warehouse answers; the target schema is there or creatable; an existing table has the planned columns."""
    p = c.profile
    warehouse = c.attempt("warehouse", p.file, c.resources.warehouse)
    if warehouse is None:
        return
    schema = ds.target.db_schema if ds else "public"
    lines = c.attempt("warehouse", p.file, lambda: warehouse.check(spec, schema))
    c.add(ds.file if ds else p.file, lines)


def check_rds_target(c: _Checker, src: FileSourceConfig) -> None:
    """The RDS database answers; an existing target table holds every column of the files, with their primary key."""
    writer = c.attempt("database", c.profile.file, c.resources.rds_writer)
    if writer is None:
        return
    c.add(src.file, c.attempt("database", c.profile.file, lambda: writer.check(src)))


def check_event_source(c: _Checker, job: EventsConfig) -> None:
    """The broker accepts the login and the queues (or the Kinesis stream exists)."""
    c.add(job.file, c.attempt("broker", job.file, lambda: c.resources.check_event_source(job)))


def check_article_table(c: _Checker, job: EventsConfig) -> None:
    """The article reference table exists (an empty one is the drain's warning: it rejects every event)."""
    table = job.reference.table
    exists = c.aws("article table", c.profile.file, c.resources.articles(job).probe)
    if exists is False:
        c.problems.append(
            Problem(
                f"{job.file}: reference.table: DynamoDB table {table!r} does not exist; create it "
                "(`keyflow setup`) and fill it with the articles (article_id, live)"
            )
        )


def check_users_file(c: _Checker, job: TrendConfig) -> None:
    """The users reference file is in the bucket."""
    p = c.profile
    store = c.resources.object_store()
    found = c.aws("users file", p.file, lambda: store.exists(job.users_key))
    if found is False:
        c.problems.append(
            Problem(
                f"{job.file}: users_key: s3://{p.bucket}/{job.users_key} does not exist; upload the users file "
                "(CSV: user_id,gender,segment_id) before the first run"
            )
        )


def check_trend_counts(c: _Checker, job: TrendConfig) -> None:
    """Where the window counts live answers, and its schema is there or creatable."""
    counts = c.attempt("trend counts", c.profile.file, lambda: c.resources.trend_counts(job))
    if counts is None:
        return
    c.add(job.file, c.attempt("trend counts", c.profile.file, counts.check))


# --- the checks each job needs


def _dataset(c: _Checker, ds: DatasetConfig) -> None:
    p = c.profile
    check_secret(c, p.file, "source_password", p.source_password, "KEYFLOW_SOURCE_PASSWORD")
    if p.warehouse_kind != "duckdb":
        check_secret(c, p.file, "warehouse_password", p.warehouse_password, "KEYFLOW_WAREHOUSE_PASSWORD")
    check_rule_secrets(c, ds)
    schema = check_source(c, ds)
    spec = check_rules(c, ds, schema)
    check_bucket(c, p.prefix)
    check_key_table(c)
    check_warehouse(c, ds, spec)


def _file_source(c: _Checker, src: FileSourceConfig) -> None:
    p = c.profile
    check_secret(c, p.file, "source_password", p.source_password, "KEYFLOW_SOURCE_PASSWORD")
    check_bucket(c, src.landing_prefix, write=False, encryption=False)
    check_bucket(c, src.quarantine_prefix)
    check_rds_target(c, src)


def _events(c: _Checker, job: EventsConfig) -> None:
    if job.source.kind == "rabbitmq":
        check_secret(c, job.file, "source.password", job.source.password, "KEYFLOW_BROKER_PASSWORD")
    check_event_source(c, job)
    check_bucket(c, job.archive_prefix)
    check_article_table(c, job)


def _trends(c: _Checker, job: TrendConfig) -> None:
    check_trend_counts(c, job)
    # A run compacts closed hours (it writes to the archive), and writes bad lines and unreadable files aside.
    check_bucket(c, job.archive_prefix, write=job.compact, encryption=False)
    check_users_file(c, job)


def _profile_only(c: _Checker) -> None:
    p = c.profile
    check_secret(c, p.file, "source_password", p.source_password, "KEYFLOW_SOURCE_PASSWORD")
    if p.warehouse_kind != "duckdb":
        check_secret(c, p.file, "warehouse_password", p.warehouse_password, "KEYFLOW_WAREHOUSE_PASSWORD")
    for name, ref in sorted(p.secrets.items()):
        what = f"profile {p.name}: secrets.{name}"  # as the run asks for it: resolved once for both
        c.attempt("secrets", p.file, partial(c.resources.secret, ref, what))
    if p.source_url:
        source = c.attempt("source", p.file, c.resources.source)
        if source is not None:
            c.attempt("source", p.file, source.ping)
    check_bucket(c, p.prefix)
    check_key_table(c)
    check_warehouse(c, None, None)


def preflight(job: Job | None, resources: Resources) -> list[Problem]:
    """Every problem that would fail a run of ``job`` (the profile alone when None), found before it starts."""
    c = _Checker(resources)
    _run_checks(c, job)
    return c.found()


def _run_checks(c: _Checker, job: Job | None) -> None:
    if isinstance(job, DatasetConfig):
        _dataset(c, job)
    elif isinstance(job, FileSourceConfig):
        _file_source(c, job)
    elif isinstance(job, EventsConfig):
        _events(c, job)
    elif isinstance(job, TrendConfig):
        _trends(c, job)
    else:
        _profile_only(c)


@task(name="preflight")
def check_before_run(job: Job, resources: Resources, within: float | None = None) -> list[str]:
    """The run's problems as lines (none: it may start).

    Problems that may clear up by themselves (a refused connection, a timeout) are checked again after a short wait
    before the run gives up, while the run's time allows (``within`` seconds: a drain's ``max_seconds``).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    problems = preflight(job, resources)
    for delay in RECHECK_DELAYS:
        if not problems or not all(p.transient for p in problems):
            break
        if within is not None and time.perf_counter() - started + delay > within:
            break
        logger.warning("Preflight: %s; checking again in %.0f s", problems[0].line, delay)
        time.sleep(delay)
        problems = preflight(job, resources)
    logger.info("Preflight of %s: %d problem(s) in %.2f s", job.file, len(problems), time.perf_counter() - started)
    return [p.line for p in problems]


def problems_before_run(job: Job, profile: Profile) -> list[str]:
    """The problems :func:`check_before_run` would find, outside a flow (a backfill's first step, the CLI)."""
    return [p.line for p in preflight(job, resources_for(profile))]


@dataclass(frozen=True)
class CheckReport:
    """What ``keyflow check`` found for one job (or the profile): its problems, what was looked at, how long."""

    kind: str
    name: str
    file: str
    problems: tuple[str, ...]
    checked: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


KINDS = {
    DatasetConfig: "dataset",
    FileSourceConfig: "file source",
    EventsConfig: "events job",
    TrendConfig: "trends job",
}


def check_jobs(profile: Profile, jobs: list[Job]) -> list[CheckReport]:
    """``keyflow check``: the preflight of each job (the profile's own resources when ``jobs`` is empty).

    The jobs share one set of resources, so each secret is resolved once.
    """
    resources = resources_for(profile)
    reports = []
    targets: list[Job | None] = list(jobs) or [None]
    for job in targets:
        c = _Checker(resources)
        started = time.perf_counter()
        _run_checks(c, job)
        reports.append(
            CheckReport(
                kind=KINDS[type(job)] if job is not None else "profile",
                name=job.name if job is not None else profile.name,
                file=job.file if job is not None else profile.file,
                problems=tuple(p.line for p in c.found()),
                checked=tuple(c.checked),
                seconds=time.perf_counter() - started,
            )
        )
    return reports
