"""``config/datasets/*.yaml``: one key-driven ETL from a source table or query, through rules, to a warehouse table."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from config.models.common import Ident, TypeName, _FileModel, _Model
from config.models.rules import Rule, secret_names

DEFAULT_SPLIT_BYTES = 512 * 1024 * 1024  # a key of more than 512 MiB on the source is cut into ranges of about that


class SourceConfig(_Model):
    """Where a key's rows come from: a table filtered on the key column, or a query with bound parameters."""

    table: Ident | None = Field(None, description="source table; rows are selected WHERE key_column = :key")
    db_schema: Ident | None = Field(None, alias="schema", description="schema (PostgreSQL) or database (MySQL)")
    key_column: Ident = Field(description="column holding the key (campaign code)")
    columns: list[Ident] | None = Field(None, description="columns to read; all when omitted")
    date_column: Ident | None = Field(
        None, description="optional: also keep only rows whose date is within the key's start and end dates"
    )
    query: str | None = Field(
        None,
        max_length=100_000,
        description="SQL with bound parameters :key, :start_date, :end_date, :run_date and :<param>",
    )
    batch_rows: int = Field(20_000, ge=100, le=1_000_000, description="rows per streamed batch")
    pushdown: bool = Field(
        True,
        description="compute the rules the source computes exactly in the extraction query (table sources); "
        "false runs every rule on the client",
    )
    split_rows: int | None = Field(
        None,
        ge=0,
        le=1_000_000_000,
        description="rows of one range: a key with more rows than this is extracted as ranges of split_column in "
        "parallel (within the profile's source_max_connections), staged as parts of the key and loaded in its one "
        "transaction (table sources); 0: keys are never split; unset: derived from split_bytes",
    )
    split_bytes: int = Field(
        DEFAULT_SPLIT_BYTES,
        ge=0,
        le=1 << 40,
        description="when split_rows is unset, a range's size on the source: split_rows is this divided by the "
        "table's average row size from its statistics (PostgreSQL pg_class, MySQL/MariaDB information_schema), "
        "and only a table with a single-column primary key (or a split_column) is split; 0: never split by default",
    )
    split_column: Ident | None = Field(
        None,
        description="the orderable column (integer, date, text…) a split key is cut on, at its quantiles within the "
        "key; default: the table's single-column primary key",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _table_or_query(self) -> SourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        if self.query is not None and ":key" not in self.query:
            raise ValueError("'query' must filter on the bound parameter :key")
        if self.query is not None and (
            self.split_rows is not None or self.split_column is not None or "split_bytes" in self.model_fields_set
        ):
            raise ValueError("split_rows, split_bytes and split_column apply to a 'table' source only")
        return self


class TargetColumn(_Model):
    """One column of the target table."""

    name: Ident
    type: TypeName
    nullable: bool = True


class TargetConfig(_Model):
    """The warehouse table: created when missing; one key's slice is replaced per load."""

    db_schema: Ident = Field("public", alias="schema")
    table: Ident
    key_column: Ident | None = Field(None, description="column holding the key; default: source.key_column")
    columns: list[TargetColumn] | None = Field(
        None, description="columns and types; derived from the source and rules when omitted"
    )
    distkey: Ident | None = Field(None, description="Redshift DISTKEY")
    sortkey: list[Ident] = Field(default_factory=list, description="Redshift compound SORTKEY")
    load_mode: Literal["replace_key", "replace_table", "merge"] = Field(
        "replace_key",
        description="replace_key: replace each active key's rows; replace_table: also remove keys no longer "
        "active; merge: upsert the key's rows by primary_key (rows no longer extracted stay)",
    )
    on_schema_change: Literal["fail", "add_columns", "ignore"] = Field(
        "fail",
        description="a source column the table lacks, or a table column the source lost: fail names them; "
        "add_columns adds new ones and loads lost ones as NULL; ignore leaves new ones out and loads lost ones as "
        "NULL. A changed type always fails",
    )
    primary_key: list[Ident] = Field(
        default_factory=list, max_length=16, description="columns that identify a row (load_mode merge)"
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _unique(self) -> TargetConfig:
        if self.load_mode == "merge" and not self.primary_key:
            raise ValueError("load_mode merge needs primary_key (the columns that identify a row)")
        if len({c.lower() for c in self.primary_key}) != len(self.primary_key):
            raise ValueError("primary_key names a column twice")
        if self.columns:
            names = [c.name.lower() for c in self.columns]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"duplicate column names: {', '.join(dup)}")
            for name in [self.distkey, *self.sortkey]:
                if name and name.lower() not in names:
                    raise ValueError(f"distkey/sortkey column {name!r} is not among the target columns")
        return self


class StagingConfig(_Model):
    """How staged files are written."""

    format: Literal["parquet", "csv"] | None = Field(
        None,
        description="parquet (typed columns, real NULLs; Redshift only) or csv; default: parquet for Redshift, "
        "csv for PostgreSQL and DuckDB",
    )
    compression: Literal["zstd", "gzip", "none"] = "zstd"
    level: int = Field(1, ge=1, le=19, description="compression level (gzip: 1-9)")
    part_rows: int = Field(250_000, ge=1_000, le=50_000_000, description="rows per staged part file")

    def format_for(self, warehouse_kind: str) -> str:
        """The staging format for a warehouse: the one given, else Parquet for Redshift and CSV elsewhere."""
        return self.format or ("parquet" if warehouse_kind == "redshift" else "csv")


class UnitsConfig(_Model):
    """How a run groups its active keys into work units: one extraction, one staged object set, one load each.

    Before staging, one ``GROUP BY`` counts each active key's rows; keys are then packed in key order into units of
    at most ``unit_rows`` expected rows and ``max_keys_per_unit`` keys, and a key expected to have ``unit_rows`` or
    more keeps a unit of its own. A shared unit is loaded in one transaction that replaces and reconciles every key
    in it; if it fails, its keys are retried one by one, so a bad key fails alone. A ``query`` source is never
    grouped (its SQL names one ``:key``).
    """

    unit_rows: int = Field(
        50_000, ge=1, le=50_000_000, description="expected rows of one shared unit; a key with as many keeps its own"
    )
    max_keys_per_unit: int = Field(
        250, ge=1, le=5_000, description="keys one shared unit holds at most (1: every key is its own unit)"
    )


class DatasetConfig(_FileModel):
    """One key-driven ETL: source, rules, staging and target."""

    name: Ident
    description: str = ""
    source: SourceConfig
    rules: list[Rule] = Field(default_factory=list)
    staging: StagingConfig = Field(default_factory=StagingConfig)  # type: ignore[arg-type]
    units: UnitsConfig = Field(default_factory=UnitsConfig)  # type: ignore[arg-type]
    target: TargetConfig

    @model_validator(mode="after")
    def _query_needs_columns(self) -> DatasetConfig:
        if self.source.query is not None and not self.target.columns:
            raise ValueError("a 'query' source needs target.columns (types cannot be read from the table)")
        return self

    @property
    def target_key_column(self) -> str:
        """The target's key column: ``target.key_column``, else the source's."""
        return self.target.key_column or self.source.key_column

    def secret_names(self) -> set[str]:
        """Names of the profile ``secrets`` the rules use (hash salts)."""
        return set(secret_names(self.rules).secrets)

    def encryption_key_names(self) -> set[str]:
        """Names of the profile ``encryption_keys`` the rules' ``encrypt`` actions use."""
        return set(secret_names(self.rules).encryption_keys)
