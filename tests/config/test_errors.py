"""The first line of an error, as every layer reports it."""

from __future__ import annotations

import pytest

from config.errors import first_line


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
