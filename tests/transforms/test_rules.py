"""The rule engine on Arrow tables: each rule, its errors, and invariants (batch-split invariance, idempotence)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import Rule
from tasks.transforms.rules import RuleEngine, RuleError, conform


def rules(*items: dict[str, Any]) -> list[Rule]:
    return [Rule.model_validate(i) for i in items]


def table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "name": pa.array(["  Ann ", "bob", None, ""], pa.string()),
            "clicks": pa.array([5, 0, 3, None], pa.int32()),
            "imps": pa.array([10, 0, 6, 2], pa.int32()),
            "day": pa.array([dt.date(2024, 1, 31), dt.date(2024, 2, 1), None, dt.date(2023, 12, 1)]),
            "phone": pa.array(["+33612345678", "12", None, "123456"], pa.string()),
        }
    )


def test_select_drop_rename() -> None:
    out = RuleEngine(rules({"select": ["name", "id"]}, {"rename": {"name": "who"}})).apply(table())
    assert out.column_names == ["who", "id"]
    out = RuleEngine(rules({"drop": ["phone", "day"]})).apply(table())
    assert out.column_names == ["id", "name", "clicks", "imps"]


def test_trim_lower_upper_fill() -> None:
    out = RuleEngine(rules({"trim": ["name"]}, {"upper": ["name"]}, {"fill": {"name": "?", "clicks": 0}})).apply(
        table()
    )
    assert out.column("name").to_pylist() == ["ANN", "BOB", "?", ""]
    assert out.column("clicks").to_pylist() == [5, 0, 3, 0]


def test_filter_drops_false_and_null_rows() -> None:
    out = RuleEngine(rules({"filter": [{"column": "clicks", "op": ">", "value": 0}]})).apply(table())
    assert out.column("id").to_pylist() == [1, 3]
    out = RuleEngine(rules({"filter": {"column": "id", "op": "not_in", "values": [1, 2]}})).apply(table())
    assert out.column("id").to_pylist() == [3, 4]
    out = RuleEngine(rules({"filter": {"column": "name", "op": "is_null"}})).apply(table())
    assert out.column("id").to_pylist() == [3]


def test_derive_arithmetic_concat_dates_coalesce() -> None:
    engine = RuleEngine(
        rules(
            {"derive": {"column": "ctr", "expr": {"div": ["clicks", "imps"]}}},
            {"derive": {"column": "label", "expr": {"concat": ["name", {"lit": "#"}, "id"]}}},
            {"derive": {"column": "month", "expr": {"month": "day"}, "type": "smallint"}},
            {"derive": {"column": "c2", "expr": {"coalesce": ["clicks", {"lit": -1}]}}},
            {"derive": {"column": "total", "expr": {"add": ["clicks", "imps", 1]}}},
            {"derive": {"column": "source", "expr": {"lit": "crm"}}},
        )
    )
    out = engine.apply(table())
    assert out.column("ctr").to_pylist() == [0.5, None, 0.5, None]  # 0/0 is null, not an error
    assert out.column("label").to_pylist() == ["  Ann #1", "bob#2", "#3", "#4"]
    assert out.column("month").type == pa.int16()
    assert out.column("month").to_pylist() == [1, 2, None, 12]
    assert out.column("c2").to_pylist() == [5, 0, 3, -1]
    assert out.column("total").to_pylist() == [16, 1, 10, None]
    assert out.column("source").to_pylist() == ["crm"] * 4


def test_privacy_mask_hash_drop() -> None:
    engine = RuleEngine(
        rules(
            {"privacy": {"column": "phone", "action": "mask", "keep_last": 4}},
            {"privacy": {"column": "name", "action": "hash", "salt_secret": "salt"}},
            {"privacy": {"column": "day", "action": "drop"}},
        ),
        {"salt": b"pepper"},
    )
    out = engine.apply(table())
    assert out.column("phone").to_pylist() == ["********5678", "12", None, "**3456"]
    hashed = out.column("name").to_pylist()
    assert hashed[2] is None and len(hashed[0]) == 64 and hashed[0] != hashed[1]
    assert "day" not in out.column_names
    other_salt = RuleEngine(engine.rules, {"salt": b"other"}).apply(table()).column("name").to_pylist()
    assert other_salt[0] != hashed[0]


def test_cast_and_conform() -> None:
    t = pa.table({"amount": ["1.50", "2", None], "flag": ["true", "false", None]})
    out = RuleEngine(rules({"cast": {"amount": "decimal(10,2)", "flag": "boolean"}})).apply(t)
    assert out.column("amount").to_pylist() == [Decimal("1.50"), Decimal("2.00"), None]
    assert out.column("flag").to_pylist() == [True, False, None]
    schema = pa.schema([("flag", pa.bool_()), ("amount", pa.decimal128(12, 2))])
    assert conform(out, schema).schema == schema


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"select": ["nope"]}, "rules[0].select: column 'nope' not found (have: id, name, clicks, imps, day, phone)"),
        ({"trim": ["id"]}, "rules[0].trim.id: column 'id' is int64, not text"),
        ({"rename": {"name": "id"}}, "rules[0].rename: renaming would give two columns named id"),
        ({"derive": {"column": "x", "expr": {"add": ["name", "id"]}}}, "rules[0].derive.expr.add: "),
        (
            {"privacy": {"column": "name", "action": "hash", "salt_secret": "missing"}},
            "rules[0].privacy.salt_secret: secret 'missing' is not defined in the profile",
        ),
    ],
)
def test_rule_errors_name_the_rule(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError) as err:
        RuleEngine(rules(rule)).apply(table())
    assert str(err.value).startswith(message)


def test_bad_value_in_cast_names_the_column() -> None:
    with pytest.raises(RuleError, match=r"^rules\[0\]\.cast\.amount: cannot cast to int64"):
        RuleEngine(rules({"cast": {"amount": "bigint"}})).apply(pa.table({"amount": ["1", "x"]}))


def test_output_schema_from_empty_table() -> None:
    engine = RuleEngine(rules({"derive": {"column": "ctr", "expr": {"div": ["clicks", "imps"]}}}, {"drop": ["day"]}))
    schema = engine.output_schema(table().schema)
    assert schema.names == ["id", "name", "clicks", "imps", "phone", "ctr"]
    assert schema.field("ctr").type == pa.float64()


rows_strategy = st.lists(
    st.tuples(st.integers(0, 20), st.one_of(st.none(), st.text(max_size=6)), st.integers(-5, 5)), max_size=60
)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, cut=st.integers(0, 60))
def test_batch_split_does_not_change_the_result(rows: list[tuple[int, str | None, int]], cut: int) -> None:
    """Rules applied batch by batch (dedupe included) equal rules applied to the whole key at once."""
    t = pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "s": pa.array([r[1] for r in rows], pa.string()),
            "n": pa.array([r[2] for r in rows], pa.int64()),
        }
    )
    spec = rules(
        {"trim": ["s"]},
        {"filter": {"column": "n", "op": ">=", "value": 0}},
        {"dedupe": {"on": ["id"]}},
        {"derive": {"column": "m", "expr": {"mul": ["n", 2]}}},
    )
    whole = RuleEngine(spec).apply(t)
    cut = min(cut, t.num_rows)
    engine = RuleEngine(spec)
    parts = [engine.apply(t.slice(0, cut)), engine.apply(t.slice(cut))]
    assert pa.concat_tables(parts).to_pylist() == whole.to_pylist()
    assert len(set(whole.column("id").to_pylist())) == whole.num_rows


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=8)), max_size=30))
def test_text_rules_are_idempotent(values: list[str | None]) -> None:
    t = pa.table({"s": pa.array(values, pa.string())})
    engine = RuleEngine(rules({"trim": ["s"]}, {"lower": ["s"]}, {"fill": {"s": ""}}))
    once = engine.apply(t)
    assert engine.apply(once).equals(once)


def test_passthrough_is_only_what_no_rule_touches() -> None:
    from tasks.transforms.rules import as_text, passthrough_columns, referenced_columns

    spec = rules(
        {"rename": {"name": "who"}},
        {"derive": {"column": "ctr", "expr": {"div": ["clicks", {"coalesce": ["imps", 1]}]}}},
        {"filter": {"column": "id", "op": ">", "value": 0}},
        {"drop": ["phone"]},
    )
    assert referenced_columns(spec) == {"name", "who", "ctr", "clicks", "imps", "id"}
    source = table().schema
    target = pa.schema([("id", pa.int64()), ("who", pa.string()), ("day", pa.date32()), ("clicks", pa.int64())])
    # day is untouched and keeps its type; clicks is read by a rule; phone is not in the target.
    assert passthrough_columns(spec, source, target) == {"day"}
    assert as_text(target, {"day"}).field("day").type == pa.string()
