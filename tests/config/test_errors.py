"""The first line of an error, as every layer reports it, and a user's value as an error echoes it."""

from __future__ import annotations

import pytest

from config.errors import clip, first_line, quoted


@pytest.mark.parametrize(
    ("error", "default", "line"),
    [
        (RuntimeError("connection refused \n\tIs the server running?\n"), None, "connection refused "),
        (RuntimeError("\n  only line  \n"), None, "only line"),
        (RuntimeError(""), None, "RuntimeError"),
        (RuntimeError(""), "failed", "failed"),
        ("text\nmore", None, "text"),
        ("", None, ""),
        ("", "paused", "paused"),
    ],
)
def test_first_line(error: BaseException | str, default: str | None, line: str) -> None:
    assert first_line(error, default) == line


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("MCS2017", "'MCS2017'"),
        ("", "''"),
        ("a\tb", "'a\\tb'"),  # control characters are escaped, never printed raw
        ("K" * 40, "'" + "K" * 40 + "'"),
        ("K" * 10_000, "'" + "K" * 40 + "'… (10,000 characters)"),
        (12, "'12'"),
    ],
)
def test_quoted_cuts_a_long_value_and_says_how_long_it_was(value: object, shown: str) -> None:
    assert quoted(value) == shown


def test_clip_keeps_short_text_and_cuts_long_text() -> None:
    assert clip("config/datasets/x.yaml") == "config/datasets/x.yaml"
    assert clip("x" * 250) == "x" * 200 + "… (250 characters)"
