"""``config/sources/*.yaml``: one source of landing files, their columns and checks, and the RDS table they fill."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from config.models.common import Ident, TypeName, _FileModel, _Model, _relative_key
from config.types import parse_type


class FileColumn(_Model):
    """One column of a landing file and how its values are checked."""

    name: Ident
    type: TypeName = "text"
    required: bool = Field(False, description="a row without a value here is rejected")
    allowed: list[str | int | float] | None = Field(None, max_length=10_000, description="the only values accepted")
    min: float | None = Field(None, description="smallest accepted number (numbers) or length (text)")
    max: float | None = Field(None, description="largest accepted number (numbers) or length (text)")
    format: str | None = Field(None, max_length=64, description="date/timestamp format, e.g. %d/%m/%Y (ISO if omitted)")

    @model_validator(mode="after")
    def _bounds(self) -> FileColumn:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.format and parse_type(self.type).kind not in ("date", "timestamp", "timestamptz"):
            raise ValueError("'format' applies to date and timestamp columns only")
        return self


class CsvOptions(_Model):
    """How a CSV landing file is read."""

    delimiter: str = Field(",", min_length=1, max_length=1)
    quote: str = Field('"', min_length=1, max_length=1)
    encoding: str = Field("utf-8", max_length=32, description="e.g. utf-8, latin-1, cp1252")
    header: bool = Field(True, description="first line names the columns (checked against 'columns')")
    null_values: list[str] = Field(default_factory=lambda: [""], description="texts read as no value")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}") from None
        return v


class FileTarget(_Model):
    """The RDS table the rows are upserted into (created with its primary key when missing)."""

    db_schema: Ident | None = Field(None, alias="schema")
    table: Ident

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FileSourceConfig(_FileModel):
    """One source of landing files: where they land, their schema and checks, and the table they fill."""

    name: Ident
    description: str = ""
    landing_prefix: str = Field(min_length=1, max_length=512, description="S3 prefix the files land under")
    pattern: str = Field("*", min_length=1, max_length=256, description="glob on the name below the prefix")
    format: Literal["csv", "jsonl"] = "csv"
    csv: CsvOptions = Field(default_factory=CsvOptions)  # type: ignore[arg-type]
    columns: list[FileColumn] = Field(min_length=1, max_length=1000)
    primary_key: list[Ident] = Field(min_length=1, description="rows are upserted on it")
    target: FileTarget
    rejected_prefix: str = Field("rejected", min_length=1, max_length=512, description="rejected rows, with reasons")
    quarantine_prefix: str = Field("quarantine", min_length=1, max_length=512, description="unreadable files")
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1, le=10 * 1024**3)

    @field_validator("landing_prefix", "rejected_prefix", "quarantine_prefix")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _relative_key(v)

    @model_validator(mode="after")
    def _keys_are_columns(self) -> FileSourceConfig:
        names = [c.name.lower() for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate column names: {', '.join(dup)}")
        missing = [k for k in self.primary_key if k.lower() not in names]
        if missing:
            raise ValueError(f"primary_key column(s) not among the columns: {', '.join(missing)}")
        return self
