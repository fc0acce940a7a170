"""The per-key summary as a user reads it: one line a key in an 80-column terminal, the whole error below."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from flows.cli import output


def _row(key: str, status: str = "loaded", error: str = "", **figures: Any) -> dict[str, Any]:
    row = dict(rows_extracted=0, rows_filtered=0, rows_staged=0, rows_loaded=0, bytes_staged=0, seconds=0.0)
    return {**row, **figures, "key": key, "status": status, "error": error}


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> tuple[Console, Console]:
    out = Console(width=80, record=True, force_terminal=False, color_system=None)
    err = Console(width=80, record=True, stderr=True, force_terminal=False, color_system=None)
    monkeypatch.setattr(output, "out", out)
    monkeypatch.setattr(output, "err", err)
    return out, err


def test_the_summary_fits_80_columns_and_keeps_each_failed_keys_whole_error(screen: tuple[Console, Console]) -> None:
    long_error = "key 'SPRING-2017-EMEA-LONG-CAMPAIGN': reconciliation failed: extracted=21,667 staged=21,667 " + (
        "loaded=21,666; rolled back, the key's previous rows are kept"
    )
    rows = [
        _row("MCS2017", rows_extracted=2000, rows_filtered=13, rows_loaded=1987, bytes_staged=135_502, seconds=0.44),
        _row("BIG", rows_extracted=1_221_667, rows_loaded=1_221_667, bytes_staged=1_375_430_000, seconds=1112.3),
        _row("SPRING-2017-EMEA-LONG-CAMPAIGN", "failed", long_error, rows_extracted=21_667, seconds=3.2),
        _row("P", "paused", "key 'P' not started: the etl flows are paused"),
    ]
    output.print_summary(rows, "campaign_facts on 2017-03-20 — 1 of 4 key(s) failed")
    out, err = screen
    table = out.export_text().splitlines()
    assert max(len(line.rstrip()) for line in table) <= 80
    assert any(line.split()[:5] == ["MCS2017", "loaded", "1,987", "136", "KB"] for line in table)
    assert any(line.split()[:5] == ["BIG", "loaded", "1,221,667", "1.38", "GB"] for line in table)
    assert any("13 filtered" in line for line in table)
    # The table cuts the failed key's detail; the error itself is printed whole, once, under it.
    assert long_error not in out.export_text()
    assert err.export_text().splitlines() == [f"error: {long_error}"]


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (999, "999 B"), (135_502, "136 KB"), (12_500_000, "12.5 MB"), (2 * 10**15, "2,000 TB")]
)
def test_byte_counts_are_short(n: int, text: str) -> None:
    assert output.human_bytes(n) == text
