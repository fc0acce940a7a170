"""Names from outside never escape their prefix (landing files for ingestion, staged keys)."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.transforms.paths import UnsafePathError, join_under, relative_to


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../etc/passwd", "has '..', '.' or empty segments"),
        ("a/../../b.csv", "has '..', '.' or empty segments"),
        ("/etc/passwd", "is absolute"),
        ("C:\\data\\x.csv", "is absolute"),
        ("a//b.csv", "empty segments"),
        ("a\nb.csv", "control characters"),
        ("", "1 to 1024 characters"),
    ],
)
def test_unsafe_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(UnsafePathError, match=message):
        join_under("landing/campaigns/", name)


def test_plain_names_join_and_list_back() -> None:
    assert join_under("landing/campaigns/", "2017/03/20/facts.csv.gz") == "landing/campaigns/2017/03/20/facts.csv.gz"
    assert relative_to("landing/campaigns", "landing/campaigns/2017/facts.csv") == "2017/facts.csv"
    with pytest.raises(UnsafePathError, match="is not under"):
        relative_to("landing/campaigns", "landing/campaigns-other/x.csv")


@settings(max_examples=400, deadline=None)
@given(name=st.text(max_size=60))
def test_a_joined_name_never_leaves_its_prefix(name: str) -> None:
    try:
        key = join_under("landing/in", name)
    except UnsafePathError:
        return
    assert key.startswith("landing/in/") and posixpath.normpath(key).startswith("landing/in/")
    assert ".." not in key.split("/")
