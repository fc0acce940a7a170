"""Tasks of the key-driven ETL: prepare the target, list active keys, group them into units, stage and load them."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import date
from typing import Any

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from config.errors import ConfigError, KeyFailedError, KeyflowError, PausedError, RetryableError, first_line
from config.models import IDENT_RE, DatasetConfig
from tasks.control import ensure_limit, is_paused, source_slot
from tasks.io.passthrough import CsvPassthroughWriter
from tasks.io.source import CopySession, SourceDatabase, SplitPlan
from tasks.io.stager import GATE, PartWriter, stop_if_interrupted
from tasks.resources import Resources
from tasks.retries import KEY_IO, LISTING_IO, SETUP_IO, backoff_delays
from tasks.transforms.drift import plan_drift
from tasks.transforms.keys import CampaignKey
from tasks.transforms.plan import arrow_schema, plan_table
from tasks.transforms.pushdown import Pushdown, plan_pushdown, render_count_query, render_pushed_query
from tasks.transforms.rules import RuleEngine, RuleError, as_text, conform, passthrough_columns
from tasks.transforms.split import SplitRange, default_split_rows, plan_ranges, range_query
from tasks.transforms.sql import TableSpec, render_key_query, render_unit_query
from tasks.transforms.staging import (
    KeyCounts,
    StagedKey,
    StagedPart,
    key_prefix,
    redshift_manifest,
    run_record,
    unit_prefix,
)
from tasks.transforms.units import (
    BackfillPlan,
    WorkUnit,
    add_counts,
    count_by_key,
    plan_backfill,
    plan_units,
    why_not_shared,
    window_params,
    with_dates,
)

_limits_lock = threading.Lock()
_limits: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def _limit(name: str, size: int) -> threading.BoundedSemaphore:
    """A process-wide semaphore per (name, size): bounds keys at once and extractions per source database."""
    with _limits_lock:
        return _limits.setdefault((name, size), threading.BoundedSemaphore(size))


@dataclass(frozen=True)
class KeyResult:
    """The outcome of one key, as the summary table and the artifact show it."""

    key: str
    status: str
    rows_extracted: int = 0
    rows_filtered: int = 0
    rows_staged: int = 0
    rows_loaded: int = 0
    bytes_staged: int = 0
    seconds: float = 0.0
    stage_seconds: float = 0.0
    load_seconds: float = 0.0
    uri: str = ""
    error: str = ""
    unit: str = ""  # the shared unit that carried the key ("" for a key loaded on its own)

    def as_row(self) -> dict[str, Any]:
        """The result as one summary-table row."""
        return asdict(self)


@task(name="prepare_target", **SETUP_IO)
def prepare_target(dataset: DatasetConfig, resources: Resources) -> TableSpec:
    """Plan the target table from the source schema and rules; create it when missing."""
    profile = resources.profile
    if dataset.staging.format_for(profile.warehouse_kind) == "parquet" and profile.warehouse_kind != "redshift":
        raise ConfigError(
            f"{dataset.file}: staging.format: parquet loads only into Redshift; the profile's warehouse is "
            f"{profile.warehouse_kind!r} (use csv)"
        )
    logger = get_run_logger()
    if profile.source_concurrency_limit:
        ensure_limit(profile.source_concurrency_limit, profile.source_max_connections)
    planned = plan_table(dataset, resources.source().source_schema(dataset.source), dataset.file)
    warehouse = resources.warehouse()
    drift = plan_drift(planned, warehouse.columns(planned), dataset.target.on_schema_change, dataset.file)
    for warning in drift.warnings:
        logger.warning("Schema of %s.%s: %s", planned.schema, planned.table, warning)
    spec = drift.spec
    warehouse.prepare(spec, drift.add)
    logger.info(
        "Target %s.%s ready on %s (%d columns)",
        spec.schema,
        spec.table,
        profile.warehouse_kind,
        len(spec.columns),
    )
    return spec


@task(name="list_active_keys", **LISTING_IO)
def list_active_keys(dataset: str, run_date: date, resources: Resources) -> list[CampaignKey]:
    """Query the DynamoDB key table for the keys of ``dataset`` active on ``run_date``."""
    keys = resources.key_store().active_keys(dataset, run_date)
    shown = ", ".join(k.key for k in keys[:LISTED_KEYS]) or "none"
    more = f" and {len(keys) - LISTED_KEYS:,} more" if len(keys) > LISTED_KEYS else ""
    get_run_logger().info("%d key(s) of %s active on %s: %s%s", len(keys), dataset, run_date, shown, more)
    return keys


LISTED_KEYS = 20  # keys the listing's log line names (the run's results list every key)


PROGRESS_SECONDS = 10.0  # how often a key still staging logs its progress


def _logger() -> Any:
    """The run's logger; ``stage_rows`` also runs outside a task (a helper process that stages, then crashes)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("keyflow.etl")


@dataclass(frozen=True)
class Route:
    """How one key travels: the rules pushed into the source's query (if any), and whether bytes pass through."""

    push: Pushdown | None
    passthrough: bool


def choose_route(dataset: DatasetConfig, source: SourceDatabase, schema_in: Any, target_schema: Any, fmt: str) -> Route:
    """Push what the source computes exactly; pass the bytes through when nothing is left for the client.

    Passthrough needs CSV staging and the pushed query's columns already the target's (names, order and types),
    so nothing would be conformed either. PostgreSQL writes the CSV with its COPY; MySQL/MariaDB render each row
    as one record, when every column is of a type they render exactly (checked per key: :func:`_passthrough_off`).
    """
    if not dataset.source.pushdown or schema_in is None or dataset.source.query is not None:
        return Route(None, False)
    caps = source.capabilities()
    if caps.dialect not in ("postgres", "mysql"):
        return Route(None, False)
    push = plan_pushdown(dataset.rules, schema_in, caps)
    passthrough = not push.client_rules and fmt == "csv" and push.schema.equals(target_schema, check_metadata=False)
    if not push.pushed_any and not passthrough:
        return Route(None, False)
    return Route(push, passthrough)


_said_lock = threading.Lock()
_said: set[tuple[str, str, str]] = set()


def _passthrough_off(
    dataset: DatasetConfig, source: SourceDatabase, route: Route, sql: str, params: Any, run_id: str
) -> Route:
    """The route, with passthrough off when the source should not write these columns as staged CSV.

    Said once per run and dataset, not once per key.
    """
    if not route.passthrough or route.push is None:
        return route
    why = source.why_not_passthrough(sql, params, route.push.schema)
    if why is None:
        return route
    with _said_lock:
        first = (run_id, dataset.name, why) not in _said
        _said.add((run_id, dataset.name, why))
    if first:
        _logger().info("Dataset %s: rows are parsed, not passed through as bytes: %s", dataset.name, why)
    return replace(route, passthrough=False)


@dataclass
class _Extraction:
    """One stream of a key's rows: the whole key, or one range of a split key."""

    sql: str
    count_sql: str | None
    params: dict[str, Any]
    session: CopySession | None = None


class _RangeStopped(Exception):
    """A range stopped because another range of its key failed."""


def _with_push(base_sql: str, route: Route, dialect: str) -> tuple[str, str | None]:
    """The extraction query over ``base_sql`` with the pushed rules, and the count before pushed filters (if any)."""
    if route.push is None:
        return base_sql, None
    return render_pushed_query(base_sql, route.push, dialect), (
        render_count_query(base_sql) if route.push.filters else None
    )


def _split_setting(dataset: DatasetConfig, source: SourceDatabase, expected_rows: int | None) -> tuple[int, str] | None:
    """Rows of one range and the column a key is cut on, or None when the key is not split.

    ``source.split_rows`` when set (0: never; a table without a single-column primary key and no ``split_column``
    is a config error); else ``split_bytes`` over the table's average row, for a table with a single-column primary
    key (or a ``split_column``), and only when the table is larger than ``split_bytes``. A key the work-unit
    planner counted at no more than a range's rows is not split, and not counted again.
    """
    config = dataset.source
    if config.table is None or config.split_rows == 0:
        return None
    column: str | None
    if config.split_rows is not None:
        split_rows = config.split_rows
        column = source.split_column(config)
    else:
        try:
            derived = default_split_rows(config.split_bytes, source.table_size(config))
            column = config.split_column or source.primary_key(config) if derived is not None else None
        except (ConfigError, KeyflowError) as exc:  # the default must not fail a key the source can extract
            _logger().warning("Not splitting big keys by default: %s", first_line(exc))
            return None
        if derived is None or column is None:
            return None
        if not IDENT_RE.match(column):  # a key column named beyond keyflow's identifiers: extracted whole
            _logger().warning("Not splitting big keys by default: primary key %r is not a plain identifier", column)
            return None
        split_rows = derived
    if expected_rows is not None and expected_rows <= split_rows:
        return None
    return split_rows, column


def _split_ranges(
    dataset: DatasetConfig,
    source: SourceDatabase,
    client_rules: list[Any],
    key_sql: str,
    params: dict[str, Any],
    what: str,
    expected_rows: int | None = None,
) -> tuple[str, list[SplitRange], SplitPlan | None]:
    """The ranges a big key is extracted as, or none when it is not split (not big, or not splittable).

    A split key's plan is returned open (on PostgreSQL its snapshot stays exported): the caller closes it once the
    ranges ran.
    """
    setting = _split_setting(dataset, source, expected_rows)
    if setting is None:
        return "", [], None
    split_rows, column = setting
    for rule in client_rules:
        if rule.dedupe is not None and column not in rule.dedupe.on:
            # Duplicates could fall in two ranges: a dedupe on the client sees the key whole.
            why = f"a dedupe on {rule.dedupe.on} is not on the split column {column!r}"
            _logger().info("Not splitting %s: %s", what, why)
            return "", [], None
    plan = source.plan_split(key_sql, params, split_rows, column)
    ranges = plan_ranges(plan.boundaries)
    if len(ranges) < 2:
        plan.close()
        return "", [], None
    _logger().info(
        "Splitting %s (%d rows on the source, over split_rows %d%s) into %d ranges of %r, %s",
        what,
        plan.rows,
        split_rows,
        "" if dataset.source.split_rows else f" from split_bytes {dataset.source.split_bytes}",
        len(ranges),
        column,
        "all in one snapshot" if plan.snapshot else f"each in its own snapshot ({plan.why_no_snapshot})",
    )
    return column, ranges, plan


@contextmanager
def _closed_on_failure(plan: SplitPlan | None) -> Iterator[None]:
    """Close a split key's plan (its open snapshot transaction) if what follows fails before the ranges run."""
    try:
        yield
    except BaseException:
        if plan is not None:
            plan.close()
        raise


def _run_one(
    extract: Callable[[int, _Extraction, Any], tuple[int, int]],
    i: int,
    job: _Extraction,
    writer: Any,
    stop: threading.Event,
) -> tuple[int, int] | BaseException:
    """Run one extraction; a failure stops the key's other ranges at their next batch and is handed back."""
    try:
        return extract(i, job, writer)
    except BaseException as exc:
        stop.set()
        return exc


def _abort(writers: list[Any], store: Any, prefix: str | None) -> None:
    """A key's staging failed: drop its local files; a split key's uploaded parts go too (the ranges that ended)."""
    for writer in writers:
        writer.abort()
    if prefix is not None:
        try:
            store.delete_prefix(prefix)
        except Exception as exc:
            _logger().warning("Could not remove the failed key's staged parts under %s: %s", prefix, first_line(exc))


def stage_rows(
    key: CampaignKey | WorkUnit,
    dataset: DatasetConfig,
    resources: Resources,
    spec: TableSpec,
    run_id: str,
    run_date: date,
    expected_rows: int | None = None,
) -> StagedKey:
    """Stream one key's rows (or a shared unit's) from the source through the rules into compressed, encrypted S3 parts.

    A shared unit is one extraction of all its keys, each within its own dates, staged as one object set; its rows
    are counted per key on the way (read, and staged after the rules), so each key is reconciled on its own. A key's
    ``expected_rows`` (the work-unit planner's count, if it counted) spare a small key the split's count.
    """
    unit = key if isinstance(key, WorkUnit) else WorkUnit((key,))
    key = unit.keys[0]
    started = time.perf_counter()
    profile = resources.profile
    source = resources.source()
    store = resources.object_store()
    schema_in = source.source_schema(dataset.source)
    target_schema = arrow_schema(spec)
    fmt = dataset.staging.format_for(profile.warehouse_kind)
    params: dict[str, Any]
    if unit.counted:
        windows = unit.windows()
        sql = render_unit_query(dataset.source, source.dialect, [len(w.keys) for w in windows])
        key_sql = sql
        params = {**window_params(windows), "run_date": run_date}
        prefix = unit_prefix(profile.prefix, dataset.name, run_id, unit.digest)
    else:
        sql = render_key_query(dataset.source, source.dialect)
        key_sql = sql
        params = {**key.params}
        params.update(key=key.key, start_date=key.start_date, end_date=key.end_date, run_date=run_date)
        prefix = key_prefix(profile.prefix, dataset.name, run_id, key.key)
    what = f"unit {unit.label}" if unit.counted else f"key {key.key!r}"
    salts = resources.salts(dataset.secret_names())
    # A shared unit counts each of its keys' rows from the parsed stream, before and after the rules (issue 16): its
    # rules stay on the client, so no pushed filter hides rows from that count.
    route = Route(None, False) if unit.counted else choose_route(dataset, source, schema_in, target_schema, fmt)
    client_rules, positions = list(dataset.rules), None
    if route.push is not None:
        # The rules the source computes exactly are in the query (see _with_push); the rest run here.
        params.update(route.push.params)
        schema_in = route.push.schema
        client_rules = [r for _, r in route.push.client_rules]
        positions = [i for i, _ in route.push.client_rules]
        route = _passthrough_off(dataset, source, route, _with_push(key_sql, route, source.dialect)[0], params, run_id)
    data_keys = resources.data_keys(dataset.encryption_key_names())
    if schema_in is not None and source.text_native and fmt == "csv":
        # Columns no rule touches travel as the database's own text: exact, and no parse/format round trip.
        keep = passthrough_columns(client_rules, schema_in, target_schema)
        schema_in, target_schema = as_text(schema_in, keep), as_text(target_schema, keep)
    if profile.source_max_connections == 0:
        raise KeyFailedError(f"{what}: extraction is switched off (source_max_connections is 0)")
    if route.push is not None:
        on_client = [p for p in route.push.placements if p.where == "client"]
        _logger().info(
            "Key %r: %d rule(s) computed by the source, %d by keyflow%s; %s",
            key.key,
            len(route.push.placements) - len(on_client),
            len(on_client),
            f" ({'; '.join(p.describe() for p in on_client)})" if on_client else "",
            "CSV bytes passed through unparsed" if route.passthrough else "rows parsed for the client",
        )
    # A big key (issue 15): ranges of its split column, each extracted as the whole key would be.
    split_column, ranges, split = (
        ("", [], None)
        if unit.counted
        else _split_ranges(dataset, source, client_rules, key_sql, params, what, expected_rows)
    )
    with _closed_on_failure(split):
        if ranges:
            jobs = []
            for rng in ranges:
                range_sql, range_params = range_query(key_sql, rng, split_column, source.dialect)
                jobs.append(_Extraction(*_with_push(range_sql, route, source.dialect), {**params, **range_params}))
        else:
            jobs = [_Extraction(*_with_push(key_sql, route, source.dialect), params)]
    read_by_key: dict[str, int] = {}
    staged_by_key: dict[str, int] = {}
    report_at = time.perf_counter() + PROGRESS_SECONDS
    staged_now = [0] * len(jobs)

    def progress(i: int, staged_so_far: int) -> None:
        nonlocal report_at
        staged_now[i] = staged_so_far
        if time.perf_counter() >= report_at:  # a long key says how far it got, in the log and on the TTY
            report_at = time.perf_counter() + PROGRESS_SECONDS
            _logger().info(
                "Staging %s: %d rows staged so far (%.0fs)",
                what,
                sum(staged_now),
                time.perf_counter() - started,
            )

    def new_writer(i: int) -> PartWriter | CsvPassthroughWriter:
        # Each range's parts are named apart under the key's one prefix: r000-part-00000…, r001-part-00000…
        part_prefix = prefix + (f"r{i:03d}-" if ranges else "")
        if route.passthrough:
            return CsvPassthroughWriter(
                store, part_prefix, dataset.staging.compression, dataset.staging.level, dataset.staging.part_rows
            )
        return PartWriter(
            store,
            part_prefix,
            target_schema,
            dataset.staging.compression,
            dataset.staging.level,
            dataset.staging.part_rows,
            fmt,
        )

    stop = threading.Event()

    def extract(i: int, job: _Extraction, writer: PartWriter | CsvPassthroughWriter) -> tuple[int, int]:
        """One extraction (the key, or one of its ranges) into ``writer``: rows streamed, rows the rules dropped."""
        session = CopySession(
            salts={n: salts[n] for n in route.push.salts} if route.push is not None else {},
            count_sql=job.count_sql,
            snapshot=split.snapshot if split is not None else None,
        )
        job.session = session
        streamed = filtered = 0
        with (
            _limit(f"source:{profile.source_url}", profile.source_max_connections),
            source_slot(profile.source_concurrency_limit),
        ):
            if isinstance(writer, CsvPassthroughWriter):
                for chunk in source.stream_csv(job.sql, job.params, session, target_schema, dataset.source.batch_rows):
                    if stop.is_set():
                        raise _RangeStopped
                    writer.write(chunk)
                    progress(i, writer.rows)
            else:
                engine = RuleEngine(client_rules, salts, data_keys, positions)  # its state (dedupe) is per stream
                for batch in source.stream(job.sql, job.params, schema_in, dataset.source.batch_rows, session):
                    if stop.is_set():
                        raise _RangeStopped
                    streamed += batch.num_rows
                    out = conform(engine.apply(batch), target_schema)
                    filtered += batch.num_rows - out.num_rows
                    if unit.counted:  # each key of the unit is reconciled on its own
                        add_counts(read_by_key, count_by_key(batch.column(dataset.source.key_column)))
                        add_counts(staged_by_key, count_by_key(out.column(spec.key_column)))
                    writer.write(out)
                    progress(i, streamed - filtered)
        return streamed, filtered

    with _closed_on_failure(split):
        writers = [new_writer(i) for i in range(len(jobs))]
    parts: list[StagedPart] = []
    extracted = filtered = 0
    try:
        if len(jobs) == 1:
            outcomes = [_run_one(extract, 0, jobs[0], writers[0], stop)]
        else:
            with ThreadPoolExecutor(
                max_workers=min(len(jobs), profile.source_max_connections), thread_name_prefix="keyflow-range"
            ) as pool:
                # Each range runs in a copy of the task's context: its Prefect run logger and settings.
                futures = [
                    pool.submit(contextvars.copy_context().run, _run_one, extract, i, jobs[i], writers[i], stop)
                    for i in range(len(jobs))
                ]
                outcomes = [f.result() for f in futures]
        failures = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, _RangeStopped)]
        if failures:
            raise failures[0]
        for job, writer, outcome in zip(jobs, writers, outcomes, strict=True):
            assert isinstance(outcome, tuple)
            written = writer.close()
            parts.extend(written)
            streamed, dropped = outcome
            if isinstance(writer, CsvPassthroughWriter):
                streamed = sum(p.rows for p in written)
                assert job.session is not None
                if job.session.streamed is not None and job.session.streamed != streamed:
                    raise KeyFailedError(
                        f"{what}: the source sent {job.session.streamed} rows but {streamed} CSV records were staged"
                    )
            # Rows the pushed filters dropped were counted by the source, in the extraction's snapshot (PostgreSQL).
            assert job.session is not None
            source_count = job.session.extracted if job.session.extracted is not None else streamed
            extracted += source_count
            filtered += dropped + source_count - streamed
    except RuleError as exc:
        _abort(writers, store, prefix if ranges else None)
        raise KeyFailedError(f"{what}: {dataset.file}: {exc.path}: {exc.message}") from None
    except BaseException:
        _abort(writers, store, prefix if ranges else None)
        raise
    finally:
        if split is not None:  # every range read the snapshot: the planning transaction ends
            split.close()
    members = tuple(
        KeyCounts(
            k,
            read_by_key.get(k, 0),
            read_by_key.get(k, 0) - staged_by_key.get(k, 0),
            staged_by_key.get(k, 0),
            unit.dates_of(k),
        )
        for k in (unit.names if unit.counted else ())
    )
    staged = StagedKey(
        dataset=dataset.name,
        key=unit.label,
        run_id=run_id,
        run_date=run_date.isoformat(),
        bucket=store.bucket,
        prefix=prefix,
        manifest_key=prefix + "manifest.json",
        compression=dataset.staging.compression,
        columns=tuple(spec.column_names),
        rows_extracted=extracted,
        rows_filtered=filtered,
        rows_staged=sum(p.rows for p in parts),
        bytes_staged=sum(p.bytes for p in parts),
        seconds=0.0,
        parts=tuple(parts),
        format=fmt,
        members=members,
    )
    with GATE.upload():  # an interrupt removes the run's prefix: nothing may land after it
        store.put_bytes(redshift_manifest(store.bucket, parts), staged.manifest_key, "application/json")
        store.put_bytes(run_record(staged, run_date), prefix + "_keyflow.json", "application/json")
    return replace(staged, seconds=time.perf_counter() - started)


def _log_staged(what: str, dataset: str, run_id: str, staged: StagedKey) -> None:
    """One line of what a key or a unit staged."""
    get_run_logger().info(
        "Staged %s of %s (run %s): %d rows extracted, %d filtered by rules, %d staged in %d part(s), %d bytes, %.2fs",
        what,
        dataset,
        run_id,
        staged.rows_extracted,
        staged.rows_filtered,
        staged.rows_staged,
        len(staged.parts),
        staged.bytes_staged,
        staged.seconds,
    )


@task(name="stage_key", task_run_name="stage-{key.key}", **KEY_IO)
def stage_key(
    key: CampaignKey,
    dataset: DatasetConfig,
    resources: Resources,
    spec: TableSpec,
    run_id: str,
    run_date: date,
    rows: int | None = None,
) -> StagedKey:
    """Extract, transform and stage one key (``rows``: the planner's count); at most ``max_parallel_keys`` at once."""
    with _limit(f"keys:{dataset.name}", resources.profile.max_parallel_keys):
        if is_paused("etl"):  # checked once the key has a slot: a paused family starts no new key
            raise PausedError(f"key {key.key!r} not started: the etl flows are paused (`keyflow resume etl`)")
        staged = stage_rows(key, dataset, resources, spec, run_id, run_date, rows)
    _log_staged(f"key {key.key!r}", dataset.name, run_id, staged)
    return staged


def loaded_result(key: str, staged: StagedKey, loaded: int, load_seconds: float, unit: str = "") -> KeyResult:
    """The result of a key that loaded: its staged counts, the rows loaded, and where its seconds went."""
    return KeyResult(
        key=key,
        status="loaded",
        rows_extracted=staged.rows_extracted,
        rows_filtered=staged.rows_filtered,
        rows_staged=staged.rows_staged,
        rows_loaded=loaded,
        bytes_staged=staged.bytes_staged,
        seconds=round(staged.seconds + load_seconds, 3),
        stage_seconds=round(staged.seconds, 3),
        load_seconds=round(load_seconds, 3),
        uri=f"s3://{staged.bucket}/{staged.prefix}",
        unit=unit,
    )


@task(name="load_key", task_run_name="load-{staged.key}", **KEY_IO)
def load_key(staged: StagedKey, dataset: DatasetConfig, resources: Resources, spec: TableSpec) -> KeyResult:
    """Replace the key's slice in the warehouse in one transaction, reconcile counts, then drop staged files."""
    logger = get_run_logger()
    started = time.perf_counter()
    stop_if_interrupted()  # an interrupted process starts no load (its staged files are being removed)
    store = resources.object_store()
    loaded = resources.warehouse().load_key(spec, staged, store)
    if not resources.profile.keep_staged:
        try:
            store.delete_prefix(staged.prefix)
        except KeyflowError as exc:  # the key is committed: a cleanup failure must not fail (or retry) it
            logger.warning("Key %r loaded, but its staged files stay (keyflow audit lists them): %s", staged.key, exc)
    seconds = staged.seconds + time.perf_counter() - started
    logger.info(
        "Loaded key %r of %s (run %s): %d rows into %s.%s (%.2fs)",
        staged.key,
        staged.dataset,
        staged.run_id,
        loaded,
        spec.schema,
        spec.table,
        seconds,
    )
    return loaded_result(staged.key, staged, loaded, time.perf_counter() - started)


def why_not_in_units(dataset: DatasetConfig, resources: Resources) -> str | None:
    """Why the dataset's keys cannot share units on this profile (each is then its own), or None when they can."""
    reason = why_not_shared(dataset)
    warehouse = resources.warehouse()
    if reason is None and not warehouse.loads_units:
        kind = resources.profile.warehouse_kind
        reason = f"the {kind} warehouse ({type(warehouse).__name__}) loads one key at a time"
    return reason


@task(name="plan_units", **LISTING_IO)
def plan_work_units(
    keys: list[CampaignKey],
    dataset: DatasetConfig,
    resources: Resources,
    dates: dict[str, list[date]] | None = None,
) -> list[WorkUnit]:
    """Group the active keys into work units by their rows on the source (one ``GROUP BY``), see :class:`UnitsConfig`.

    No more keys than keys run at once (``max_parallel_keys``): every key is its own unit, as before, and nothing
    is counted. Nor when the dataset or the warehouse cannot share a unit (the reason is logged). A backfill's
    ``dates`` (key → the dates it is loaded for) go with every unit, whatever its size.
    """
    logger = get_run_logger()
    profile = resources.profile
    if dates is None and (len(keys) <= profile.max_parallel_keys or dataset.units.max_keys_per_unit <= 1):
        return plan_units(keys, None, dataset.units.unit_rows, 1)
    reason = why_not_in_units(dataset, resources)
    if reason:
        if dates is not None:  # the caller checked: a backfill in one run needs units
            raise ConfigError(f"{dataset.file}: a backfill in one run needs work units, but {reason}")
        logger.info("%d keys, one unit each: %s", len(keys), reason)
        return plan_units(keys, None, dataset.units.unit_rows, 1)
    started = time.perf_counter()
    counts = resources.source().count_keys(dataset.source, keys)
    counted = time.perf_counter() - started
    # Fewer keys per unit than would leave a run slot idle: sharing must not cost the run its parallelism.
    per_slot_keys = -(-len(keys) // profile.max_parallel_keys)
    per_slot_rows = -(-sum(counts.values()) // profile.max_parallel_keys)
    units = plan_units(
        keys,
        counts,
        max(1, min(dataset.units.unit_rows, per_slot_rows)),
        # A warehouse may cap a unit's keys (the Data API: its batch's SQL text stays under 100 KB).
        max(
            1,
            min(
                dataset.units.max_keys_per_unit,
                per_slot_keys,
                getattr(resources.warehouse(), "max_unit_keys", len(keys)),
            ),
        ),
    )
    if dates is not None:
        units = with_dates(units, dates)
    shared = [u for u in units if u.shared]
    logger.info(
        "%d keys, %d rows on the source (counted in %.2fs): %d unit(s), %d shared by %d keys, %d key(s) on their own",
        len(keys),
        sum(counts.values()),
        counted,
        len(units),
        len(shared),
        sum(len(u.keys) for u in shared),
        len(units) - len(shared),
    )
    return units


@task(name="stage_unit", task_run_name="stage-{unit.label}", **KEY_IO)
def stage_unit(
    unit: WorkUnit, dataset: DatasetConfig, resources: Resources, spec: TableSpec, run_id: str, run_date: date
) -> StagedKey:
    """Extract, transform and stage a shared unit's keys together; it takes one of the ``max_parallel_keys`` slots."""
    with _limit(f"keys:{dataset.name}", resources.profile.max_parallel_keys):
        if is_paused("etl"):
            raise PausedError(f"unit {unit.label} not started: the etl flows are paused (`keyflow resume etl`)")
        staged = stage_rows(unit, dataset, resources, spec, run_id, run_date)
    _log_staged(f"unit {unit.label}", dataset.name, run_id, staged)
    return staged


@task(name="load_unit", task_run_name="load-{staged.key}", **KEY_IO)
def load_unit(staged: StagedKey, dataset: DatasetConfig, resources: Resources, spec: TableSpec) -> list[KeyResult]:
    """Replace every key of a shared unit in one transaction, each reconciled; one result per key."""
    started = time.perf_counter()
    stop_if_interrupted()
    store = resources.object_store()
    loaded = resources.warehouse().load_unit(spec, staged, store)
    _drop_staged(resources, staged)
    load_seconds = time.perf_counter() - started
    get_run_logger().info(
        "Loaded unit %s of %s (run %s): %d rows of %d keys into %s.%s (%.2fs)",
        staged.key,
        staged.dataset,
        staged.run_id,
        sum(loaded.values()),
        len(loaded),
        spec.schema,
        spec.table,
        staged.seconds + load_seconds,
    )
    results = []
    for m in staged.members:
        share = staged.bytes_staged * m.rows_staged // staged.rows_staged if staged.rows_staged else 0
        results.append(
            KeyResult(
                key=m.key,
                status="loaded",
                rows_extracted=m.rows_extracted,
                rows_filtered=m.rows_filtered,
                rows_staged=m.rows_staged,
                rows_loaded=loaded[m.key],
                bytes_staged=share,  # the unit's bytes, shared by rows
                seconds=round(staged.seconds + load_seconds, 3),
                stage_seconds=round(staged.seconds, 3),
                load_seconds=round(load_seconds, 3),
                uri=f"s3://{staged.bucket}/{staged.prefix}",
                unit=staged.key if len(staged.members) > 1 else "",
            )
        )
    return results


def _drop_staged(resources: Resources, staged: StagedKey) -> None:
    """Remove what a load committed from staging (unless the profile keeps it); a failure is only a warning."""
    if resources.profile.keep_staged:
        return
    try:
        resources.object_store().delete_prefix(staged.prefix)
    except KeyflowError as exc:  # the keys are committed: a cleanup failure must not fail (or retry) them
        get_run_logger().warning("%s loaded, but its staged files stay (keyflow audit lists them): %s", staged.key, exc)


@task(name="retry_keys", task_run_name="retry-{unit.label}-key-by-key")
def retry_keys(
    unit: WorkUnit,
    dataset: DatasetConfig,
    resources: Resources,
    spec: TableSpec,
    run_id: str,
    run_date: date,
    why: str,
) -> list[KeyResult]:
    """A shared unit failed: stage and load its keys one by one, so a bad key fails alone and the others load.

    Each key is its own transaction, as an unshared key's; a key's transient errors are retried within the
    profile's ``retry_window_seconds``. The failed unit's staged files are removed first.
    """
    logger = get_run_logger()
    logger.warning("Unit %s failed (%s): its %d keys are retried one by one", unit.label, why, len(unit.keys))
    if not resources.profile.keep_staged:
        try:
            resources.object_store().delete_prefix(
                unit_prefix(resources.profile.prefix, dataset.name, run_id, unit.digest)
            )
        except KeyflowError as exc:
            logger.warning("Unit %s: its staged files stay (keyflow audit lists them): %s", unit.label, exc)
    return [
        _retry_one(key, dataset, resources, spec, run_id, run_date, unit.label, unit.dates_of(key.key))
        for key in unit.keys
    ]


def _retry_one(
    key: CampaignKey,
    dataset: DatasetConfig,
    resources: Resources,
    spec: TableSpec,
    run_id: str,
    run_date: date,
    unit: str,
    dates: tuple[str, ...] = (),
) -> KeyResult:
    """One key of a failed unit, staged then loaded on its own; its failure is its result, never raised.

    A backfill's key (``dates``) is loaded as a unit of one, so its ledger rows are written for each of its dates.
    """
    profile = resources.profile
    alone: CampaignKey | WorkUnit = WorkUnit((key,), dates=((key.key, dates),)) if dates else key
    delays = backoff_delays(profile.retry_window_seconds, profile.retry_backoff_seconds)
    staged: StagedKey | None = None
    for attempt in range(len(delays) + 1):
        try:
            if staged is None:
                with _limit(f"keys:{dataset.name}", profile.max_parallel_keys):
                    if is_paused("etl"):
                        raise PausedError(
                            f"key {key.key!r} not started: the etl flows are paused (`keyflow resume etl`)"
                        )
                    staged = stage_rows(alone, dataset, resources, spec, run_id, run_date)
            started = time.perf_counter()
            stop_if_interrupted()
            store = resources.object_store()
            if staged.members:
                loaded = resources.warehouse().load_unit(spec, staged, store)[key.key]
            else:
                loaded = resources.warehouse().load_key(spec, staged, store)
            _drop_staged(resources, staged)
            load_seconds = time.perf_counter() - started
            return loaded_result(key.key, staged, loaded, load_seconds, unit=f"{unit}, retried alone")
        except RetryableError as exc:
            if attempt == len(delays):
                return _key_failed(key.key, "failed", exc, staged, unit)
            time.sleep(delays[attempt])
        except PausedError as exc:
            return _key_failed(key.key, "paused", exc, staged, unit)
        except KeyflowError as exc:
            return _key_failed(key.key, "failed", exc, staged, unit)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns


def _key_failed(key: str, status: str, exc: BaseException, staged: StagedKey | None, unit: str) -> KeyResult:
    """The result of a key retried alone that did not load (with the counts it staged, if it got that far)."""
    if status == "failed":
        get_run_logger().error("Key %r of unit %s failed alone: %s", key, unit, first_line(exc))
    return KeyResult(
        key=key,
        status=status,
        rows_extracted=staged.rows_extracted if staged else 0,
        rows_filtered=staged.rows_filtered if staged else 0,
        rows_staged=staged.rows_staged if staged else 0,
        error=first_line(exc, default=status),
        unit=f"{unit}, retried alone",
    )


@task(name="plan_backfill", **LISTING_IO)
def plan_backfill_dates(
    dataset: DatasetConfig, resources: Resources, days: list[date], force: bool = False
) -> BackfillPlan:
    """A backfill's work over ``days``: the keys listed once, the ledger read once for the whole range."""
    keys = resources.key_store().list_keys(dataset.name)
    done = (
        set()
        if force
        else resources.warehouse().loaded_between(
            dataset.target.db_schema, dataset.name, days[0].isoformat(), days[-1].isoformat()
        )
    )
    plan = plan_backfill(keys, days, done, force)
    get_run_logger().info(
        "Backfill of %s over %d date(s): %d (key, date) load(s) pending of %d active, %d distinct key(s) to load",
        dataset.name,
        len(days),
        sum(len(v) for v in plan.pending.values()),
        sum(len(v) for v in plan.active.values()),
        len(plan.keys),
    )
    return plan


@task(name="remove_inactive_keys", **SETUP_IO)
def remove_inactive_keys(resources: Resources, spec: TableSpec, keep: list[str]) -> int:
    """replace_table mode: after every active key loaded, delete the rows of keys no longer active."""
    removed = resources.warehouse().delete_other_keys(spec, keep)
    get_run_logger().info("Removed %d row(s) of keys no longer active from %s.%s", removed, spec.schema, spec.table)
    return removed


def pending_keys(dataset: DatasetConfig, resources: Resources, run_date: date) -> tuple[list[str], list[str]]:
    """(keys active on ``run_date``, those of them without a committed, reconciled load for that date)."""
    active = [k.key for k in resources.key_store().active_keys(dataset.name, run_date)]
    done = resources.warehouse().loaded_keys(dataset.target.db_schema, dataset.name, run_date.isoformat())
    return active, [k for k in active if k not in done]
