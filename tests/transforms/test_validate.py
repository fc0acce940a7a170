"""Row checks of landing files: every row is either loaded or rejected with a reason, never both, never lost."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import FileSourceConfig
from tasks.transforms.validate import LINE, REASON, BadFile, check_rows, decode, read_rows

SOURCE = FileSourceConfig.model_validate(
    {
        "name": "s",
        "landing_prefix": "in",
        "columns": [
            {"name": "id", "type": "integer", "required": True},
            {"name": "day", "type": "date", "format": "%d/%m/%Y"},
            {"name": "at", "type": "timestamp"},
            {"name": "ok", "type": "boolean"},
            {"name": "score", "type": "double", "min": 0, "max": 1},
            {"name": "tag", "type": "varchar(3)", "allowed": ["a", "bb", "ccc"]},
        ],
        "primary_key": ["id"],
        "target": {"table": "t"},
    }
)
cell = st.one_of(
    st.sampled_from(["", "1", "-7", "x", "0.5", "2", "1e-3", "31/12/2026", "2026-12-31", "true", "no", "a", "dddd"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
)


def to_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "day", "at", "ok", "score", "tag"])
    w.writerows(rows)
    return buf.getvalue()


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(cell, min_size=6, max_size=6), min_size=1, max_size=25))
def test_every_row_is_loaded_or_rejected_with_a_reason(rows: list[list[str]]) -> None:
    try:
        read = read_rows(decode("f.csv", to_csv(rows).encode(), "utf-8"), SOURCE)
    except BadFile as exc:
        assert exc.reason == "empty file"
        return
    checked = check_rows(read, SOURCE)
    assert checked.rows_in == read.num_rows
    assert checked.rejected[REASON].null_count == 0
    assert sorted(checked.rejected[LINE].to_pylist()) == sorted(set(checked.rejected[LINE].to_pylist()))
    ids = checked.good["id"].to_pylist()
    assert None not in ids and len(ids) == len(set(ids))
    assert all(s is None or 0 <= s <= 1 for s in checked.good["score"].to_pylist())
    assert set(checked.good["tag"].to_pylist()) <= {None, "a", "bb", "ccc"}
    again = check_rows(read, SOURCE)
    assert again.good.equals(checked.good) and again.rejected.equals(checked.rejected)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (["x", "", "", "", "", ""], "id: not an integer: 'x'"),
        (["99999999999", "", "", "", "", ""], "id: out of range for integer"),
        (["1", "2026-12-31", "", "", "", ""], "day: not a date (%d/%m/%Y): '2026-12-31'"),
        (["1", "", "noon", "", "", ""], "at: not a timestamp (ISO 8601): 'noon'"),
        (["1", "", "", "maybe", "", ""], "ok: not a boolean: 'maybe'"),
        (["1", "", "", "", "1.5", ""], "score: above the maximum 1"),
        (["1", "", "", "", "", "dddd"], "tag: longer than 3 characters"),
        (["1", "", "", "", "", "d"], "tag: not one of a, bb, ccc: 'd'"),
        (["", "", "", "", "", ""], "id: required"),
    ],
)
def test_reasons_are_exact(row: list[str], reason: str) -> None:
    checked = check_rows(read_rows(to_csv([row]), SOURCE), SOURCE)
    assert checked.rejected[REASON].to_pylist() == [reason]


def test_jsonl_and_typed_values() -> None:
    src = SOURCE.model_copy(update={"format": "jsonl"})
    text = (
        '{"id": 1, "day": "01/02/2026", "ok": true, "score": 0.25, "tag": "bb"}\n[1]\n'
        '{"id": 2, "at": "2026-01-01T10:00:00"}\n'
    )
    checked = check_rows(read_rows(text, src), src)
    assert checked.good.num_rows == 2 and checked.rejected[REASON].to_pylist() == ["not a JSON object: list"]
    first = checked.good.to_pylist()[0]
    assert str(first["day"]) == "2026-02-01" and first["ok"] is True and first["score"] == 0.25
