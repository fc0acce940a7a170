"""Every flow family rides out a database restart within the profile's ``retry_window_seconds``, not only the ETL.

File ingestion into a private PostgreSQL that the test stops mid-load for longer than the fixed presets' retries
(2 s, then 10 s) would have waited: the file's step keeps retrying with backoff within the profile's window, and the
run completes with every row once and one ledger row per file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg2
import pytest

from flows.ingest_files import ingest_files
from tests.faults.test_dropped_connections import RIDE_OUT
from tests.flows.test_ingest_files import put_landing, source_yaml
from tests.helpers.faults import WhenRunning, pg_backends, restart, slow_pg_inserts
from tests.helpers.private_db import PrivatePostgres

pytestmark = pytest.mark.usefixtures("prefect_harness")

FILES, PER_FILE = 3, 30
DOWN_SECONDS = 14  # longer than the 2 s + 10 s the fixed preset BATCH_IO waits in all


def landing_file(n: int) -> bytes:
    """Landing file ``n``: PER_FILE valid rows with ids of its own."""
    lines = ["id,campaign_code,fact_date,country,clicks,spend,email"]
    for i in range(PER_FILE):
        lines.append(f"{(n + 1) * 1000 + i},C{n},2026-11-{1 + i % 28:02d},DE,{i},{i}.25,")
    return ("\n".join(lines) + "\n").encode()


def test_a_file_ingestion_rides_out_a_restart_longer_than_the_fixed_presets(
    private_pg: PrivatePostgres, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    from config.loader import load_profile

    schema, table = names["wh_schema"], names["src_table"]
    profile = make_profile(source_url=private_pg.url, **RIDE_OUT)
    source = source_yaml(tmp_path, names, schema)
    first = ingest_files(source=str(source), profile=str(profile), return_state=True)  # creates table and ledger
    assert first.is_completed(), first.message
    conn = psycopg2.connect(private_pg.dsn)
    conn.autocommit = True
    slow_pg_inserts(conn, schema, table, 0.03)  # a file's load takes about a second
    conn.close()
    put_landing(load_profile(profile, environ={}), {f"day-{n}.csv": landing_file(n) for n in range(FILES)})

    fault = WhenRunning(
        pg_backends(private_pg.dsn, f"INSERT INTO%{table}%"), restart(private_pg, down_seconds=DOWN_SECONDS)
    )
    fault.start()
    state = ingest_files(source=str(source), profile=str(profile), return_state=True)
    fault.check()
    assert state.is_completed(), state.message
    results = state.result()
    assert sorted((r["status"], r["rows_loaded"]) for r in results) == [("loaded", PER_FILE)] * FILES, results

    conn = psycopg2.connect(private_pg.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, count(*) FROM {schema}.{table} GROUP BY id ORDER BY id")
            assert cur.fetchall() == [((n + 1) * 1000 + i, 1) for n in range(FILES) for i in range(PER_FILE)]
            cur.execute(f"SELECT status, rows_loaded FROM {schema}.keyflow_file_ledger")
            assert cur.fetchall() == [("loaded", PER_FILE)] * FILES
    finally:
        conn.close()
