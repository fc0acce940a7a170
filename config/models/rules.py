"""The transformation rules of a dataset: expressions, filters, derived columns, dedupe and privacy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from config.models.common import Ident, TypeName, _Model


class Expr(_Model):
    """A derived-column expression: exactly one operator. A bare string is a column, a bare number a literal."""

    col: Ident | None = Field(None, description="value of a column")
    lit: str | int | float | bool | None = Field(None, description="a constant")
    concat: list[Expr] | None = Field(None, description="text concatenation; nulls count as empty")
    add: list[Expr] | None = Field(None, min_length=2, description="sum of the operands")
    sub: list[Expr] | None = Field(None, min_length=2, max_length=2, description="a - b")
    mul: list[Expr] | None = Field(None, min_length=2, description="product of the operands")
    div: list[Expr] | None = Field(None, min_length=2, max_length=2, description="a / b (null when b is 0)")
    coalesce: list[Expr] | None = Field(None, min_length=1, description="first non-null operand")
    year: Expr | None = Field(None, description="year of a date or timestamp")
    month: Expr | None = Field(None, description="month (1-12) of a date or timestamp")
    day: Expr | None = Field(None, description="day of month of a date or timestamp")
    hour: Expr | None = Field(None, description="hour of a timestamp")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"col": data}
        if isinstance(data, bool | int | float):
            return {"lit": data}
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown operator {unknown[0]!r} (known: {', '.join(cls.model_fields)})")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Expr:
        if len(self.model_fields_set) != 1:
            raise ValueError("an expression takes exactly one operator of: " + ", ".join(type(self).model_fields))
        return self

    @property
    def op(self) -> str:
        """The one operator set."""
        return next(iter(self.model_fields_set))


FILTER_OPS = {
    "==": "eq",
    "!=": "ne",
    "<": "lt",
    "<=": "le",
    ">": "gt",
    ">=": "ge",
    "eq": "eq",
    "ne": "ne",
    "lt": "lt",
    "le": "le",
    "gt": "gt",
    "ge": "ge",
    "in": "in",
    "not_in": "not_in",
    "is_null": "is_null",
    "not_null": "not_null",
}


class Condition(_Model):
    """One filter comparison: ``column op value``. Rows where it is false or null are dropped."""

    column: Ident
    op: str = Field(description="one of " + ", ".join(FILTER_OPS))
    value: str | int | float | bool | None = None
    values: list[str | int | float | bool] | None = Field(None, max_length=10_000)

    @field_validator("op")
    @classmethod
    def _known_op(cls, v: str) -> str:
        if v not in FILTER_OPS:
            raise ValueError(f"unknown operator {v!r} (known: {', '.join(FILTER_OPS)})")
        return FILTER_OPS[v]

    @model_validator(mode="after")
    def _operands(self) -> Condition:
        if self.op in ("in", "not_in"):
            if self.values is None:
                raise ValueError(f"operator {self.op!r} needs 'values' (a list)")
        elif self.op in ("is_null", "not_null"):
            if self.value is not None or self.values is not None:
                raise ValueError(f"operator {self.op!r} takes no value")
        elif self.value is None:
            raise ValueError(f"operator {self.op!r} needs a 'value'")
        return self


class Derive(_Model):
    """A new (or replaced) column computed from an expression."""

    column: Ident
    expr: Expr
    type: TypeName | None = Field(None, description="cast the result to this type")


class Dedupe(_Model):
    """Keep one row per distinct combination of ``on`` (the first seen), across the key's batches."""

    on: list[Ident] = Field(min_length=1)
    keep: Literal["first"] = "first"


class Privacy(_Model):
    """Per-column privacy: drop it, mask it, a keyed SHA-256 hash, or encrypt it for a private-key holder."""

    column: Ident
    action: Literal["drop", "mask", "hash", "encrypt"]
    keep_last: int = Field(4, ge=0, le=64, description="mask: characters left visible at the end")
    mask_char: str = Field("*", min_length=1, max_length=1)
    salt_secret: Ident | None = Field(None, description="hash: name of the profile secret used as salt")
    key: Ident | None = Field(None, description="encrypt: name of an entry in the profile's encryption_keys")

    @model_validator(mode="after")
    def _needs(self) -> Privacy:
        if self.action == "hash" and not self.salt_secret:
            raise ValueError("action 'hash' needs 'salt_secret' (the name of a secret in the profile)")
        if self.action == "encrypt" and not self.key:
            raise ValueError("action 'encrypt' needs 'key' (the name of an entry in the profile's encryption_keys)")
        return self


RULE_NAMES = (
    "select",
    "drop",
    "rename",
    "cast",
    "trim",
    "lower",
    "upper",
    "fill",
    "filter",
    "derive",
    "dedupe",
    "privacy",
)


class Rule(_Model):
    """One transformation step; exactly one of its fields is set. Rules apply in order."""

    select: list[Ident] | None = Field(None, min_length=1, description="keep only these columns, in this order")
    drop: list[Ident] | None = Field(None, min_length=1, description="remove these columns")
    rename: dict[Ident, Ident] | None = Field(None, description="old name: new name")
    cast: dict[Ident, TypeName] | None = Field(None, description="column: type")
    trim: list[Ident] | None = Field(None, description="strip surrounding whitespace")
    lower: list[Ident] | None = None
    upper: list[Ident] | None = None
    fill: dict[Ident, str | int | float | bool] | None = Field(None, description="column: value used for nulls")
    filter: list[Condition] | None = Field(None, description="keep rows where every condition holds")
    derive: Derive | None = None
    dedupe: Dedupe | None = None
    privacy: Privacy | None = None

    @field_validator("filter", mode="before")
    @classmethod
    def _one_condition(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="before")
    @classmethod
    def _single_key(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if len(data) != 1:
                raise ValueError(
                    f"a rule is a mapping with exactly one of: {', '.join(RULE_NAMES)}; got {sorted(data)}"
                )
            name = next(iter(data))
            if name not in RULE_NAMES:
                raise ValueError(f"unknown rule {name!r} (known: {', '.join(RULE_NAMES)})")
        return data

    @property
    def name(self) -> str:
        """The one rule set (``select``, ``cast``, …)."""
        return next(iter(self.model_fields_set))


class SecretNames(NamedTuple):
    """The profile entries a list of rules names: ``secrets`` (hash salts) and ``encryption_keys``."""

    secrets: frozenset[str]
    encryption_keys: frozenset[str]


def secret_names(rules: Iterable[Rule]) -> SecretNames:
    """The profile secrets and encryption keys ``rules`` need; the one place that collects them."""
    secrets: set[str] = set()
    keys: set[str] = set()
    for rule in rules:
        p = rule.privacy
        if p is None:
            continue
        if p.salt_secret:
            secrets.add(p.salt_secret)
        if p.action == "encrypt" and p.key:
            keys.add(p.key)
    return SecretNames(frozenset(secrets), frozenset(keys))
