"""`keyflow demo`: seed an embedded demo and run the ETL on it, with no server to install."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import parse_date, quiet_prefect
from flows.cli.etl import run_etl
from flows.cli.output import OK, fail, out, print_status, reports_errors


@reports_errors
def demo(
    run_date: Annotated[str, typer.Option("--date", help="run date; three campaigns overlap on 2017-03-20")] = (
        "2017-03-20"
    ),
    rows_per_key: Annotated[int, typer.Option("--rows", min=1, max=1_000_000)] = 2000,
    workdir: Annotated[Path, typer.Option("--dir", help="where the demo's files go")] = Path(".keyflow/demo"),
) -> None:
    """Seed an embedded demo (SQLite source, emulated DynamoDB/S3/KMS, DuckDB warehouse) and run the ETL on it."""
    quiet_prefect()
    from tasks.demo import create_kms_key, embedded_aws, seed_aws, seed_source

    day = parse_date(run_date, "--date")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--dir: cannot make {workdir}: {exc.strerror or exc}")
    os.environ["KEYFLOW_SOURCE_URL"] = f"sqlite:///{(workdir / 'source.db').resolve()}"
    os.environ["KEYFLOW_WAREHOUSE_URL"] = str((workdir / "warehouse.duckdb").resolve())
    os.environ["KEYFLOW_WAREHOUSE_KIND"] = "duckdb"
    os.environ.setdefault("KEYFLOW_EMAIL_SALT", "demo-salt-not-secret")
    with embedded_aws() as aws:
        os.environ["KEYFLOW_AWS_ENDPOINT_URL"] = aws.endpoint_url
        from config.loader import load_profile

        prof = load_profile("local")
        os.environ["KEYFLOW_KMS_KEY_ID"] = create_kms_key(prof)
        prof = load_profile("local")
        n = seed_source(workdir / "source.db", rows_per_key)
        steps = seed_aws(prof)
        print_status((s.status, s.what) for s in steps)
        out.print(
            f"Demo: {n:,} source rows in {workdir / 'source.db'}, 5 campaigns in DynamoDB table "
            f"{prof.keys_table!r} at {aws.endpoint_url} (emulated), staging bucket {prof.bucket!r} with SSE-KMS."
        )
        code = run_etl("campaign_facts", day, "local")
    if code == OK:
        out.print(f"Warehouse: {workdir / 'warehouse.duckdb'} (DuckDB), table analytics.campaign_facts.")
    raise typer.Exit(code)
