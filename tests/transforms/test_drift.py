"""Schema drift planning (pure): catalog types read back, and what each mode does with each difference."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.types import parse_type
from tasks.transforms.drift import plan_drift, same_type, type_from_catalog
from tasks.transforms.sql import TableSpec

SPEC = TableSpec(
    "s",
    "t",
    "k",
    (("k", parse_type("text"), False), ("qty", parse_type("integer"), True), ("new", parse_type("date"), True)),
)


@pytest.mark.parametrize(
    ("catalog", "precision", "scale", "expected"),
    [
        ("character varying", None, None, "text"),  # Redshift's VARCHAR(65535), PostgreSQL's varchar
        ("VARCHAR", None, None, "text"),  # DuckDB
        ("numeric", 38, 10, "decimal(38,10)"),
        ("DECIMAL(18,3)", 18, 3, "decimal(18,3)"),
        ("timestamp without time zone", None, None, "timestamp"),
        ("TIMESTAMP WITH TIME ZONE", None, None, "timestamptz"),
        ("double precision", 53, None, "double"),
        ("integer", 32, 0, "integer"),
        ("USER-DEFINED", None, None, None),
    ],
)
def test_catalog_types_read_back(catalog: str, precision: int | None, scale: int | None, expected: str | None) -> None:
    got = type_from_catalog(catalog, precision, scale)
    assert (str(got) if got else None) == expected


def test_text_lengths_and_capped_decimal_precision_are_not_drift() -> None:
    assert same_type(parse_type("text"), parse_type("varchar(32)"))
    assert same_type(parse_type("decimal(38,10)"), parse_type("decimal(50,10)"))
    assert not same_type(parse_type("decimal(38,2)"), parse_type("decimal(38,10)"))
    assert not same_type(parse_type("integer"), parse_type("bigint"))


def test_no_table_is_no_drift() -> None:
    assert plan_drift(SPEC, [], "fail", "f.yaml").spec == SPEC


def test_each_mode() -> None:
    existing = [("k", parse_type("text")), ("qty", parse_type("integer")), ("old", parse_type("text"))]
    with pytest.raises(ConfigError) as err:
        plan_drift(SPEC, existing, "fail", "f.yaml")
    assert err.value.problems == [
        "f.yaml: target: the dataset now produces column(s) new that s.t lacks (target.on_schema_change: "
        "add_columns adds them, ignore leaves them out)",
        "f.yaml: target: column(s) old of s.t no longer come from the source (target.on_schema_change: "
        "add_columns or ignore loads them as NULL)",
    ]
    added = plan_drift(SPEC, existing, "add_columns", "f.yaml")
    assert added.spec == SPEC and added.add == (("new", parse_type("date"), True),)
    ignored = plan_drift(SPEC, existing, "ignore", "f.yaml")
    assert [c[0] for c in ignored.spec.columns] == ["k", "qty"] and ignored.add == ()
    assert ignored.warnings == (
        "column(s) old of s.t no longer come from the source: loaded as NULL",
        "column(s) new are not in s.t: left out of the load (ignore)",
    )
    with pytest.raises(ConfigError, match=r"column qty: text → integer"):
        plan_drift(SPEC, [("k", parse_type("text")), ("qty", parse_type("text"))], "ignore", "f.yaml")
