"""Backfill over a date range on real services: bounded, resumable from the load ledger, forced on demand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers.etl import create_pg_source, put_keys, run, source_rows, write_dataset

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()


def backfill(dataset: Path, profile: Path, *extra: str) -> Any:
    return runner.invoke(
        app,
        [
            "etl",
            "backfill",
            "-d",
            str(dataset),
            "-p",
            str(profile),
            "--from",
            "2017-03-14",
            "--to",
            "2017-03-16",
            "--parallel",
            "2",
            *extra,
        ],
        env={"COLUMNS": "200"},
    )


def test_backfill_skips_what_is_done_and_resumes_what_failed(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    create_pg_source(pg, names["src_table"], source_rows(["K1", "K2"], per_key=10))
    try:
        profile = make_profile()
        put_keys(profile)  # K1 from 03-01, K2 from 03-15, a third key from 03-10
        dataset = write_dataset(tmp_path, names)
        assert run(dataset, profile, dt.date(2017, 3, 1))[0].is_completed()  # creates the target
        with pg.cursor() as cur:  # K2 cannot load until this constraint goes
            cur.execute(
                f"ALTER TABLE {names['wh_schema']}.facts ADD CONSTRAINT no_k2 CHECK (campaign_key <> 'K2') NOT VALID"
            )
        first = backfill(dataset, profile)
        assert first.exit_code == 1, first.output
        assert "1 loaded, 2 failed" in first.output

        with pg.cursor() as cur:
            cur.execute(f"ALTER TABLE {names['wh_schema']}.facts DROP CONSTRAINT no_k2")
        resumed = backfill(dataset, profile)
        assert resumed.exit_code == 0, resumed.output
        assert "2 loaded, 1 skipped" in resumed.output  # 03-14 was done; only the failed dates ran again

        again = backfill(dataset, profile)
        assert again.exit_code == 0 and "3 skipped" in again.output
        forced = backfill(dataset, profile, "--force")
        assert forced.exit_code == 0 and "3 loaded" in forced.output

        with pg.cursor() as cur:
            cur.execute(
                f"SELECT run_date, count(*) FROM {names['wh_schema']}.keyflow_loads WHERE run_date >= '2017-03-14' "
                "GROUP BY 1 ORDER BY 1"
            )
            assert [(d.isoformat(), n) for d, n in cur.fetchall()] == [
                ("2017-03-14", 2),
                ("2017-03-15", 3),
                ("2017-03-16", 3),
            ]
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_backfill_refuses_a_reversed_range(make_profile: Any, tmp_path: Path, names: dict[str, str]) -> None:
    result = runner.invoke(
        app, ["etl", "backfill", "-d", "campaign_facts", "--from", "2017-03-16", "--to", "2017-03-14"]
    )
    assert result.exit_code == 2 and "--to 2017-03-14 is before --from 2017-03-16" in result.output
