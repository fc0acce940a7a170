"""The ``keyflow`` command: run the ETL, manage keys, validate YAML, run the embedded demo."""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from contextlib import suppress
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from config.errors import ConfigError, KeyflowError

app = typer.Typer(
    help="keyflow: key-driven ETL from RDS to Redshift through S3, as Prefect flows.", no_args_is_help=True
)
etl_app = typer.Typer(help="Run the key-driven ETL.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage the keys (campaigns) of a dataset in DynamoDB.", no_args_is_help=True)
app.add_typer(etl_app, name="etl")
trends_app = typer.Typer(help="Score trending articles from the event archive.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(trends_app, name="trends")
events_app = typer.Typer(help="Ingest activity events from the broker.", no_args_is_help=True)
app.add_typer(events_app, name="events")
files_app = typer.Typer(help="Load landing files from S3 into the RDS tables.", no_args_is_help=True)
app.add_typer(files_app, name="files")
out = Console()
err = Console(stderr=True)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="profile name or path (config/profiles/)")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="dataset name or path (config/datasets/)")]


def _quiet_prefect() -> None:
    """Offline-friendly Prefect defaults, set before Prefect is imported (a user's own settings win)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")


def _fail(exc: KeyflowError) -> None:
    problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
    for line in problems:
        err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def print_summary(rows: list[dict[str, Any]], title: str) -> None:
    """The per-key summary table."""
    table = Table(title=title, title_justify="left")
    for col, justify in (("key", "left"), ("status", "left"), ("rows", "right"), ("bytes staged", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("seconds", justify="right")
    table.add_column("detail", overflow="fold")
    for r in rows:
        ok = r["status"] == "loaded"
        table.add_row(
            r["key"],
            f"[green]{r['status']}[/green]" if ok else f"[red]{r['status']}[/red]",
            f"{r['rows_loaded']:,}" if ok else f"{r['rows_extracted']:,} extracted",
            f"{r['bytes_staged']:,}",
            f"{r['seconds']:.2f}",
            (
                f"extracted {r['rows_extracted']:,}, filtered {r['rows_filtered']:,}, loaded {r['rows_loaded']:,}"
                if ok
                else r["error"]
            ),
        )
    out.print(table)


def _check(profile: str, kind: str, name: str) -> None:
    """Load the profile and a job's YAML before Prefect starts: a user's mistake is one line each, no traceback."""
    from config import loader

    load = {
        "datasets": loader.load_dataset,
        "events": loader.load_events,
        "sources": loader.load_file_source,
        "trends": loader.load_trends,
    }[kind]
    try:
        loader.load_profile(profile)
        load(name)
    except KeyflowError as exc:
        _fail(exc)
    _quiet_prefect()


def _check_config(dataset: str, profile: str) -> None:
    _check(profile, "datasets", dataset)


def run_etl(dataset: str, run_date: date | None, profile: str, as_json: bool = False) -> int:
    """Validate config, run the flow, print the summary; return the exit code."""
    _check_config(dataset, profile)
    from flows.rds_to_redshift import for_profile

    state = for_profile(profile)(dataset=dataset, run_date=run_date, profile=profile, return_state=True)
    result: Any = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        message = str(result).strip() or type(result).__name__
        for line in message.splitlines():
            err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
        return 2 if isinstance(result, ConfigError) else 1
    rows: list[dict[str, Any]] = result or []
    if state.is_cancelled():
        err.print(f"[yellow]{state.message}[/yellow] (`keyflow resume etl` switches the etl flows back on)")
        if rows:
            print_summary(rows, f"{dataset} on {run_date or 'today'} — {state.message}")
        return 3
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return 0 if state.is_completed() else 1
    if not rows:
        out.print(f"Nothing to do: no key of {dataset} is active on {run_date or 'today'}.")
        return 0
    print_summary(rows, f"{dataset} on {run_date or 'today'} — {state.message}")
    return 0 if state.is_completed() else 1


@etl_app.command("run")
def etl_run(
    dataset: DatasetOpt,
    run_date: Annotated[str | None, typer.Option("--date", help="run date YYYY-MM-DD (default: today, UTC)")] = None,
    profile: ProfileOpt = "local",
    as_json: Annotated[bool, typer.Option("--json", help="print the per-key results as one JSON line")] = False,
) -> None:
    """Load every key of DATASET active on the run date; exit 1 when any key failed."""
    day = _parse_date(run_date, "--date") if run_date else None
    raise typer.Exit(run_etl(dataset, day, profile, as_json))


@etl_app.command("backfill")
def etl_backfill(
    dataset: DatasetOpt,
    start: Annotated[str, typer.Option("--from", help="first run date, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--to", help="last run date, YYYY-MM-DD (inclusive)")],
    profile: ProfileOpt = "local",
    force: Annotated[bool, typer.Option("--force", help="reload dates already loaded and reconciled")] = False,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=8, help="dates at once")] = 1,
) -> None:
    """Run past dates with the keys active on each; resumable: loaded dates are skipped unless --force."""
    from rich.progress import Progress

    first, last = _parse_date(start, "--from"), _parse_date(end, "--to")
    if last < first:
        err.print(f"[red]error:[/red] --to {last} is before --from {first}")
        raise typer.Exit(2)
    _check_config(dataset, profile)
    from flows.backfill import backfill

    with Progress(console=err, transient=True) as progress:
        bar = progress.add_task(f"backfill {dataset}", total=(last - first).days + 1)
        results = backfill(dataset, first, last, profile, force, parallel, on_done=lambda _: progress.advance(bar))
    table = Table(title=f"backfill {dataset} {first} → {last}", title_justify="left")
    for col in ("date", "status", "keys", "detail"):
        table.add_column(col)
    for r in results:
        color = {"loaded": "green", "skipped": "cyan", "nothing": "cyan", "paused": "yellow"}.get(r.status, "red")
        table.add_row(str(r.run_date), f"[{color}]{r.status}[/{color}]", str(r.keys), r.message)
    out.print(table)
    counts = {s: sum(r.status == s for r in results) for s in ("loaded", "skipped", "nothing", "failed", "paused")}
    out.print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    raise typer.Exit(1 if counts["failed"] else 3 if counts["paused"] else 0)


JobOpt = Annotated[str, typer.Option("--job", "-j", help="trend job name or path (config/trends/)")]


def _parse_time(text: str, option: str) -> datetime:
    """An ISO date or date-time; UTC unless it names its offset."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        err.print(f"[red]error:[/red] {option}: {text!r} is not a date or time (YYYY-MM-DD[THH:MM[:SS]][+00:00])")
        raise typer.Exit(2) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _check_trends(job: str, profile: str) -> None:
    from config.loader import load_profile, load_trends
    from tasks.resources import trend_counts_for

    try:
        trend_counts_for(load_profile(profile), load_trends(job))
    except KeyflowError as exc:
        _fail(exc)
    _quiet_prefect()


def _finish(state: Any, family: str) -> dict[str, Any] | list[Any]:
    """The flow's data, or the error it ended with printed and the matching exit code raised."""
    result: Any = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        for line in (str(result).strip() or type(result).__name__).splitlines():
            err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(2 if isinstance(result, ConfigError) else 1)
    if state.is_cancelled():
        err.print(f"[yellow]{state.message}[/yellow] (`keyflow resume {family}` switches them back on)")
        raise typer.Exit(3)
    return result


@trends_app.command("run")
def trends_run(
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
    end: Annotated[str | None, typer.Option("--end", help="rank as of this time (default: now), UTC")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the run's figures as one JSON line")] = False,
) -> None:
    """Count the windows since the last run (and those still open to late events), then publish the top-N."""
    until = _parse_time(end, "--end") if end else None
    _check_trends(job, profile)
    from flows.trend_scoring import trend_scoring

    data = _finish(trend_scoring(job=job, profile=profile, end=until, return_state=True), "trends")
    if as_json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
        return
    assert isinstance(data, dict)
    out.print(
        f"Windows {data['start']} → {data['end']}: {data['events']:,} event(s) in {data['files']} file(s), "
        f"{data['counted']:,} counted, {data['late']:,} late, {data['invalid']:,} invalid; "
        f"{data['audiences']} audience(s) ranked."
    )
    if data.get("skipped"):
        a, b = data["skipped"]
        err.print(f"[yellow]catch-up capped: windows {a} → {b} not counted; run `keyflow trends backfill`[/yellow]")


@trends_app.command("backfill")
def trends_backfill(
    start: Annotated[str, typer.Option("--from", help="first window, YYYY-MM-DD[THH:MM] (UTC)")],
    end: Annotated[str, typer.Option("--to", help="end of the range (exclusive), YYYY-MM-DD[THH:MM] (UTC)")],
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
) -> None:
    """Recount every window of a past range from the archive, an hour at a time (idempotent)."""
    first, last = _parse_time(start, "--from"), _parse_time(end, "--to")
    if last <= first:
        err.print(f"[red]error:[/red] --to {last.isoformat()} is not after --from {first.isoformat()}")
        raise typer.Exit(2)
    _check_trends(job, profile)
    from flows.trend_scoring import trend_backfill

    rows = _finish(trend_backfill(job=job, start=first, end=last, profile=profile, return_state=True), "trends")
    table = Table(title=f"trends backfill {first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M}", title_justify="left")
    for col in ("hour", "files", "events", "counted", "late", "invalid", "rows"):
        table.add_column(col, justify="left" if col == "hour" else "right")
    for r in rows:
        assert isinstance(r, dict)
        table.add_row(
            str(r["start"])[:16].replace("T", " "),
            *(f"{r[c]:,}" for c in ("files", "events", "counted", "late", "invalid", "rows")),
        )
    out.print(table)


@trends_app.command("top")
def trends_top(
    gender: Annotated[str | None, typer.Option("--gender", "-g", help="gender (omit for unknown users)")] = None,
    segment: Annotated[str | None, typer.Option("--segment", "-s", help="segment id (omit for unknown users)")] = None,
    job: JobOpt = "trending",
    profile: ProfileOpt = "local",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="articles to show")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print the ranking as one JSON line")] = False,
) -> None:
    """The published top articles of one audience, best first, read back from the DynamoDB serving table."""
    from config.loader import load_profile, load_trends
    from tasks.resources import trend_serving_for

    try:
        ranking = trend_serving_for(load_profile(profile), load_trends(job)).top(gender, segment)[:limit]
    except KeyflowError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(ranking) + "\n")
        return
    if not ranking:
        out.print(f"No ranking published for gender {gender or '-'}, segment {segment or '-'} (or it expired).")
        raise typer.Exit(1)
    table = Table(title=f"top articles: gender {gender or '-'}, segment {segment or '-'}", title_justify="left")
    for col in ("rank", "article", "score", "ctr", "impressions", "clicks", "velocity", "age min"):
        table.add_column(col, justify="left" if col == "article" else "right")
    for i, r in enumerate(ranking, 1):
        table.add_row(
            str(i),
            str(r["article_id"]),
            f"{r['score']:.4f}",
            f"{r['ctr']:.4f}",
            f"{r['impressions']:,}",
            f"{r['clicks']:,}",
            f"{r['velocity']:.2f}",
            f"{r['age_minutes']:.0f}",
        )
    out.print(table)


@files_app.command("ingest")
def files_ingest(
    source: Annotated[str, typer.Option("--source", "-s", help="file source name or path (config/sources/)")],
    profile: ProfileOpt = "local",
    as_json: Annotated[bool, typer.Option("--json", help="print the per-file results as one JSON line")] = False,
) -> None:
    """Load the new landing files of SOURCE; exit 1 when a file failed (quarantined files are not failures)."""
    _check(profile, "sources", source)
    from flows.ingest_files import ingest_files

    state = ingest_files(source=source, profile=profile, return_state=True)
    rows = _finish(state, "ingest")
    assert isinstance(rows, list)
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
    else:
        table = Table(title=f"{source}: {state.message}", title_justify="left")
        for col in ("file", "status", "rows in", "loaded", "rejected", "reason"):
            table.add_column(
                col, justify="right" if col in ("rows in", "loaded", "rejected") else "left", overflow="fold"
            )
        for r in rows:
            table.add_row(
                r["file"],
                r["status"],
                f"{r['rows_in']:,}",
                f"{r['rows_loaded']:,}",
                f"{r['rows_rejected']:,}",
                r["reason"],
            )
        out.print(table)
    raise typer.Exit(0 if state.is_completed() else 1)


@events_app.command("drain")
def events_drain(
    job: Annotated[str, typer.Option("--job", "-j", help="event ingestion name or path (config/events/)")] = "activity",
    profile: ProfileOpt = "local",
    max_events: Annotated[int | None, typer.Option("--max-events", min=1, help="stop after this many")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", min=1, help="stop after this long")] = None,
    forever: Annotated[bool, typer.Option("--forever", help="long-running: drain again as soon as one ends")] = False,
) -> None:
    """Store broker events in DynamoDB and the S3 archive; each batch is acknowledged only once stored."""
    _check(profile, "events", job)
    from flows.ingest_events import ingest_events

    while True:
        state = ingest_events(
            job=job, profile=profile, max_events=max_events, max_seconds=max_seconds, return_state=True
        )
        row = _finish(state, "ingest")
        out.print(state.message or "", highlight=False)
        if not forever:
            assert isinstance(row, dict)
            return


def _parse_date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        err.print(f"[red]error:[/red] {option}: {text!r} is not a date (YYYY-MM-DD)")
        raise typer.Exit(2) from None


def _key_store(profile: str) -> Any:
    from config.loader import load_profile
    from tasks.resources import key_store_for

    try:
        return key_store_for(load_profile(profile))
    except KeyflowError as exc:
        _fail(exc)


@keys_app.command("put")
def keys_put(
    dataset: DatasetOpt,
    key: Annotated[str, typer.Option("--key", "-k", help="the key (campaign code)")],
    start: Annotated[str, typer.Option("--start", help="first active day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--end", help="last active day, YYYY-MM-DD (inclusive)")],
    disabled: Annotated[bool, typer.Option("--disabled", help="store it switched off")] = False,
    params: Annotated[str | None, typer.Option("--params", help="JSON object of extra query parameters")] = None,
    profile: ProfileOpt = "local",
) -> None:
    """Add or replace a key."""
    from tasks.transforms.keys import CampaignKey

    try:
        extra = json.loads(params) if params else {}
    except ValueError as exc:
        err.print(f"[red]error:[/red] --params: not JSON: {exc}")
        raise typer.Exit(2) from None
    if not isinstance(extra, dict):
        err.print("[red]error:[/red] --params: expected a JSON object")
        raise typer.Exit(2)
    store = _key_store(profile)
    try:
        store.ensure_table()
        store.put_key(
            CampaignKey(dataset, key, _parse_date(start, "--start"), _parse_date(end, "--end"), not disabled, extra)
        )
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except KeyflowError as exc:
        _fail(exc)
    out.print(f"Stored key {key!r} of {dataset} ({start} to {end}{', disabled' if disabled else ''}).")


@keys_app.command("list")
def keys_list(
    dataset: DatasetOpt,
    on: Annotated[str | None, typer.Option("--date", help="only keys active on this day")] = None,
    profile: ProfileOpt = "local",
) -> None:
    """List the keys of a dataset (or those active on a day)."""
    store = _key_store(profile)
    try:
        keys = store.active_keys(dataset, _parse_date(on, "--date")) if on else store.list_keys(dataset)
    except KeyflowError as exc:
        _fail(exc)
    table = Table("key", "start", "end", "enabled", "params")
    for k in keys:
        table.add_row(k.key, str(k.start_date), str(k.end_date), "yes" if k.enabled else "no", json.dumps(k.params))
    out.print(table)


def _set_enabled(dataset: str, key: str, profile: str, enabled: bool) -> None:
    try:
        _key_store(profile).set_enabled(dataset, key, enabled)
    except KeyflowError as exc:
        _fail(exc)
    out.print(f"{'Enabled' if enabled else 'Disabled'} key {key!r} of {dataset}.")


@keys_app.command("disable")
def keys_disable(
    dataset: DatasetOpt, key: Annotated[str, typer.Option("--key", "-k")], profile: ProfileOpt = "local"
) -> None:
    """Switch a key off (it stays in the table; `keys enable` switches it back on)."""
    _set_enabled(dataset, key, profile, False)


@keys_app.command("enable")
def keys_enable(
    dataset: DatasetOpt, key: Annotated[str, typer.Option("--key", "-k")], profile: ProfileOpt = "local"
) -> None:
    """Switch a key back on."""
    _set_enabled(dataset, key, profile, True)


@app.command("serve")
def serve_cmd(
    file: Annotated[Path, typer.Option("--file", help="deployments file")] = Path("deployments/prefect.yaml"),
    names: Annotated[list[str] | None, typer.Option("--name", help="serve only this deployment (repeatable)")] = None,
) -> None:
    """Serve every deployment's schedule from this one process (Prefect `serve`), for teams without work pools."""
    _quiet_prefect()
    from flows.serve import serve_all

    try:
        serve_all(file, names)
    except KeyflowError as exc:
        _fail(exc)


FamilyArg = Annotated[str, typer.Argument(help="flow family: etl, trends or ingest")]


def _family(family: str) -> str:
    from tasks.control import FAMILIES

    if family not in FAMILIES:
        err.print(f"[red]error:[/red] unknown flow family {family!r} (known: {', '.join(FAMILIES)})")
        raise typer.Exit(2)
    _quiet_prefect()
    return family


@app.command("pause")
def pause_cmd(family: FamilyArg) -> None:
    """Kill switch: runs of the family start no new key from now on; keys already loading finish atomically."""
    from tasks.control import pause

    pause(_family(family))
    out.print(f"Paused the {family} flows (global concurrency limit keyflow-{family}-switch = 0).")


@app.command("resume")
def resume_cmd(family: FamilyArg) -> None:
    """Switch a paused flow family back on."""
    from tasks.control import resume

    was = resume(_family(family))
    out.print(f"Resumed the {family} flows." if was else f"The {family} flows were not paused.")


@app.command("validate")
def validate(
    config_dir: Annotated[
        Path | None, typer.Option("--config-dir", help="folder with datasets/, profiles/, trends/, events/, sources/")
    ] = None,
) -> None:
    """Check every YAML (datasets, profiles, trends, events, sources); one line per problem, naming file and field."""
    from config.loader import validate_tree

    checked, problems = validate_tree(config_dir)
    for line in problems:
        err.print(line, highlight=False, soft_wrap=True, markup=False)
    if problems:
        err.print(f"{len(problems)} problem(s) in {checked} file(s)")
        raise typer.Exit(2)
    out.print(f"{checked} file(s) valid")


@app.command("demo")
def demo(
    run_date: Annotated[str, typer.Option("--date", help="run date; three campaigns overlap on 2017-03-20")] = (
        "2017-03-20"
    ),
    rows_per_key: Annotated[int, typer.Option("--rows", min=1, max=1_000_000)] = 2000,
    workdir: Annotated[Path, typer.Option("--dir", help="where the demo's files go")] = Path(".keyflow/demo"),
) -> None:
    """Seed an embedded demo (SQLite source, emulated DynamoDB/S3/KMS, DuckDB warehouse) and run the ETL on it."""
    _quiet_prefect()
    from tasks.demo import create_kms_key, seed_aws, seed_source
    from tasks.io.emulator import EmbeddedAWS

    day = _parse_date(run_date, "--date")
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["KEYFLOW_SOURCE_URL"] = f"sqlite:///{(workdir / 'source.db').resolve()}"
    os.environ["KEYFLOW_WAREHOUSE_URL"] = str((workdir / "warehouse.duckdb").resolve())
    os.environ["KEYFLOW_WAREHOUSE_KIND"] = "duckdb"
    os.environ.setdefault("KEYFLOW_EMAIL_SALT", "demo-salt-not-secret")
    with EmbeddedAWS() as aws:
        os.environ["KEYFLOW_AWS_ENDPOINT_URL"] = aws.endpoint_url
        from config.loader import load_profile

        prof = load_profile("local")
        os.environ["KEYFLOW_KMS_KEY_ID"] = create_kms_key(prof)
        prof = load_profile("local")
        n = seed_source(workdir / "source.db", rows_per_key)
        seed_aws(prof)
        out.print(
            f"Demo: {n:,} source rows in {workdir / 'source.db'}, 5 campaigns in DynamoDB table "
            f"{prof.keys_table!r} at {aws.endpoint_url} (emulated), staging bucket {prof.bucket!r} with SSE-KMS."
        )
        code = run_etl("campaign_facts", day, "local")
    if code == 0:
        out.print(f"Warehouse: {workdir / 'warehouse.duckdb'} (DuckDB), table analytics.campaign_facts.")
    raise typer.Exit(code)


@app.command("keygen")
def keygen(
    prefix: Annotated[Path, typer.Option("--out", help="file prefix: writes PREFIX.pem (private) and PREFIX.pub.pem")],
    bits: Annotated[int, typer.Option("--bits", min=2048, max=8192)] = 3072,
) -> None:
    """Make an RSA key pair for field-level encryption; give the .pub.pem to the pipeline, keep the .pem apart."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tasks.transforms.crypto import fingerprint

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = prefix.with_name(prefix.name + ".pem")
    public = prefix.with_name(prefix.name + ".pub.pem")
    if private.exists() or public.exists():
        err.print(f"[red]error:[/red] {private} or {public} exists; keyflow never overwrites a key")
        raise typer.Exit(2)
    private.parent.mkdir(parents=True, exist_ok=True)
    private.touch(mode=0o600)
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    out.print(
        f"Wrote {public} (for the profile's encryption_keys) and {private} (keep it away from the pipeline); "
        f"key id {fingerprint(key.public_key())}.",
        highlight=False,
    )


@app.command("decrypt")
def decrypt(
    source: Annotated[Path, typer.Argument(help="CSV with a header row (e.g. exported from the warehouse)")],
    columns: Annotated[list[str], typer.Option("--column", "-c", help="column to decrypt (repeatable)")],
    private_keys: Annotated[
        list[Path] | None, typer.Option("--private-key", "-k", help="RSA private key PEM (repeatable: rotation)")
    ] = None,
    kms: Annotated[bool, typer.Option("--kms", help="unwrap data keys with KMS Decrypt (profile's endpoint)")] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="keep values starting with = + - @ as they are (no spreadsheet guard)")
    ] = False,
    profile: ProfileOpt = "local",
) -> None:
    """Decrypt the named columns of a CSV to standard output (only a private-key or KMS holder can).

    The output is meant for people: a decrypted value that a spreadsheet would run as a formula (it starts with
    =, +, -, @, tab or carriage return) is prefixed with a single quote unless --raw is given.
    """
    import csv

    from tasks.transforms.crypto import DecryptError, decrypt_value, load_private_key, rsa_unwrapper
    from tasks.transforms.exports import spreadsheet_safe

    if kms:
        from config.loader import load_profile
        from tasks.io.kms import kms_unwrapper

        prof = load_profile(profile)
        unwrap = kms_unwrapper(prof.aws_region, prof.aws_endpoint_url)
    else:
        if not private_keys:
            err.print("[red]error:[/red] give --private-key (one per key id) or --kms")
            raise typer.Exit(2)
        try:
            unwrap = rsa_unwrapper([load_private_key(p.read_bytes()) for p in private_keys])
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/red] --private-key: {exc}")
            raise typer.Exit(2) from None
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            err.print(f"[red]error:[/red] {source}: no column {', '.join(missing)}")
            raise typer.Exit(2)
        writer = csv.DictWriter(sys.stdout, fieldnames=list(reader.fieldnames or []))
        writer.writeheader()
        cache: dict[bytes, bytes] = {}
        for n, row in enumerate(reader, start=1):
            try:
                for c in columns:
                    plain = decrypt_value(row[c] or None, c, unwrap, cache) or ""
                    row[c] = plain if raw else spreadsheet_safe(plain)
            except DecryptError as exc:
                err.print(f"[red]error:[/red] {source}: row {n}, column {c!r}: {exc}", highlight=False)
                raise typer.Exit(1) from None
            writer.writerow(row)


@app.command("audit")
def audit_cmd(
    profile: ProfileOpt = "local",
    max_age_hours: Annotated[float, typer.Option("--max-age-hours", min=0)] = 24.0,
) -> None:
    """Check encryption at rest (bucket default, key table, every staged object) and leftover staged files."""
    from datetime import timedelta

    from config.loader import load_profile
    from tasks.audit import audit

    try:
        findings = audit(load_profile(profile), timedelta(hours=max_age_hours))
    except KeyflowError as exc:
        _fail(exc)
    for f in findings:  # one greppable line per finding
        mark = "[green]ok  [/green]" if f.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {f.check}: {f.target}: {f.detail}", highlight=False, soft_wrap=True)
    bad = [f for f in findings if not f.ok]
    if bad:
        err.print(f"{len(bad)} problem(s) found")
        raise typer.Exit(1)


def _bound_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena; with parallel keys that inflates RSS for nothing."""
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        import ctypes

        with suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX = 2


def _leave(code: int | str | None) -> NoReturn:
    """Exit without tearing the interpreter down module by module (0.4 s of every command after a flow run).

    What a normal exit does that matters still happens, in the same order: non-daemon threads are waited for and
    threading's exit hooks run (Prefect drains its log and event workers to the API there), then the atexit hooks
    (logging flushes its handlers), then stdout and stderr are flushed.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # joins threads, runs threading's exit hooks (Prefect's drains)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code or 0)


def main() -> None:
    """Console-script entry point."""
    _bound_malloc_arenas()
    code: int | str | None = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    except KeyflowError as exc:  # a user's mistake: one line each, no traceback
        try:
            _fail(exc)
        except typer.Exit as stop:
            code = stop.exit_code
    _leave(code)


if __name__ == "__main__":
    main()
