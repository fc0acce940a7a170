"""Text meant for people's spreadsheets. Pure."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """Neutralise CSV formula injection: a value a spreadsheet would evaluate gets a leading single quote."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value
