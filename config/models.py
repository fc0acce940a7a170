"""Pydantic models of keyflow's YAML: datasets (source, rules, target) and profiles (where things run)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from config.types import parse_type

IDENT_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,62}\Z")  # \Z: "$" would accept a trailing newline


def _ident(value: str) -> str:
    if not isinstance(value, str) or not IDENT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a safe identifier (ASCII letters, digits and _, not starting with a digit, "
            "at most 63 characters)"
        )
    return value


def _type_name(value: str) -> str:
    return str(parse_type(value))


Ident = Annotated[str, AfterValidator(_ident)]
TypeName = Annotated[str, AfterValidator(_type_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FileModel(_Model):
    """A model loaded from its own YAML file, which its errors name."""

    _file: str = PrivateAttr("config")

    @property
    def file(self) -> str:
        """The YAML file this came from, as errors show it."""
        return self._file


# ---------------------------------------------------------------- rules


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
        return next(iter(self.model_fields_set))


# ---------------------------------------------------------------- dataset


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

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _table_or_query(self) -> SourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        if self.query is not None and ":key" not in self.query:
            raise ValueError("'query' must filter on the bound parameter :key")
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
    load_mode: Literal["replace_key", "replace_table"] = Field(
        "replace_key",
        description="replace_key: replace each active key's rows; replace_table: also remove keys no longer active",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _unique(self) -> TargetConfig:
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

    compression: Literal["zstd", "gzip", "none"] = "zstd"
    level: int = Field(1, ge=1, le=19, description="compression level (gzip: 1-9)")
    part_rows: int = Field(250_000, ge=1_000, le=50_000_000, description="rows per staged part file")


class DatasetConfig(_FileModel):
    """One key-driven ETL: source, rules, staging and target."""

    name: Ident
    description: str = ""
    source: SourceConfig
    rules: list[Rule] = Field(default_factory=list)
    staging: StagingConfig = Field(default_factory=StagingConfig)  # type: ignore[arg-type]
    target: TargetConfig

    @model_validator(mode="after")
    def _query_needs_columns(self) -> DatasetConfig:
        if self.source.query is not None and not self.target.columns:
            raise ValueError("a 'query' source needs target.columns (types cannot be read from the table)")
        return self

    @property
    def target_key_column(self) -> str:
        return self.target.key_column or self.source.key_column

    def secret_names(self) -> set[str]:
        return {r.privacy.salt_secret for r in self.rules if r.privacy and r.privacy.salt_secret}

    def encryption_key_names(self) -> set[str]:
        return {r.privacy.key for r in self.rules if r.privacy and r.privacy.action == "encrypt" and r.privacy.key}


# ---------------------------------------------------------------- trend scoring


def _relative_key(v: str) -> str:
    parts = v.replace("\\", "/").split("/")
    if v.startswith("/") or ".." in parts:
        raise ValueError(f"{v!r} must be a relative S3 key without '..'")
    return v.strip("/")


class ScoringConfig(_Model):
    """The trending score's parameters (README: "How trends are scored")."""

    prior: Literal["fit", "fixed"] = Field(
        "fit", description="fit: Beta prior fitted to the recent per-article CTRs; fixed: alpha and beta below"
    )
    alpha: float = Field(1.0, gt=0, le=1e6, description="Beta prior alpha (prior clicks); the fallback when fitting")
    beta: float = Field(30.0, gt=0, le=1e6, description="Beta prior beta (prior non-clicks)")
    half_life_minutes: float = Field(60.0, gt=0, le=10_080, description="time decay half-life")
    max_age_minutes: float = Field(180.0, gt=0, le=10_080, description="older articles are past news (score 0)")
    velocity_weight: float = Field(0.25, ge=0, le=10, description="weight of velocity (0 switches it off)")
    baseline_windows: int = Field(10, ge=1, le=1440, description="windows before the latest that form the baseline")


class TrendConfig(_FileModel):
    """One trend-scoring job: the event archive it reads, its windows, score parameters and where results go."""

    name: Ident
    description: str = ""
    archive_prefix: str = Field("events/archive", min_length=1, max_length=512, description="S3 prefix of events")
    users_key: str = Field("reference/users.csv", min_length=1, max_length=1024, description="user reference CSV")
    window_seconds: int = Field(60, ge=1, le=3600, description="tumbling window width, dividing an hour")
    lateness_seconds: int = Field(120, ge=0, le=86_400, description="allowed lateness after a window ends")
    max_catch_up_minutes: int = Field(
        180, ge=1, le=10_080, description="after downtime, recount at most this far back (older: `trends backfill`)"
    )
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)  # type: ignore[arg-type]
    top_n: int = Field(20, ge=1, le=1000, description="articles kept per (gender, segment)")
    ttl_minutes: int = Field(30, ge=1, le=10_080, description="serving items expire after this (DynamoDB TTL)")
    counts_schema: Ident = Field("trends", description="warehouse schema of the window counts")
    counts_table: Ident = Field("trend_counts", description="warehouse table of the window counts")
    serving_table: str = Field("keyflow_trending", min_length=3, max_length=255, description="DynamoDB top-N table")
    parallel_files: int = Field(2, ge=1, le=32, description="event files read at once")

    @field_validator("window_seconds")
    @classmethod
    def _divides_hour(cls, v: int) -> int:
        if 3600 % v:
            raise ValueError(f"{v} does not divide an hour (3600 seconds): windows must tile the hour partitions")
        return v

    @field_validator("archive_prefix", "users_key")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _relative_key(v)


# ---------------------------------------------------------------- file ingestion


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
        import codecs

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


# ---------------------------------------------------------------- event ingestion


class RabbitMQSourceConfig(_Model):
    """A RabbitMQ (or Amazon MQ for RabbitMQ) queue: messages are acknowledged only after their batch is stored."""

    kind: Literal["rabbitmq"]
    url: str = Field("amqp://guest@127.0.0.1:5672/%2F", description="AMQP URL without password")
    password: SecretRef | None = Field(None, description="defaults to $KEYFLOW_BROKER_PASSWORD, else 'guest'")
    queue: str = Field(min_length=1, max_length=255)
    dead_letter_queue: str = Field(min_length=1, max_length=255, description="poison messages go here with a reason")
    prefetch: int = Field(1000, ge=1, le=65_535, description="unacknowledged messages held at once")

    @field_validator("url")
    @classmethod
    def _no_password(cls, v: str) -> str:
        if re.match(r"^amqps?://[^/@:]*:[^/@]+@", v):
            raise ValueError("a password in a URL would live in YAML; remove it and set 'password'")
        return v


class KinesisSourceConfig(_Model):
    """A Kinesis stream: shards read in order, checkpoints in DynamoDB advanced only after a batch is stored."""

    kind: Literal["kinesis"]
    stream: str = Field(min_length=1, max_length=128)
    checkpoint_table: str = Field("keyflow_checkpoints", min_length=3, max_length=255)
    start: Literal["TRIM_HORIZON", "LATEST"] = Field(
        "TRIM_HORIZON", description="where a shard without a checkpoint is read from"
    )


class ReferenceConfig(_Model):
    """Where events are checked: a DynamoDB table of articles (``article_id``, ``live``), cached in process."""

    table: str = Field("keyflow_articles", min_length=3, max_length=255)
    cache_ttl_seconds: int = Field(600, ge=0, le=86_400, description="how long a lookup is trusted")
    cache_max_entries: int = Field(100_000, ge=0, le=10_000_000)


class EventsConfig(_FileModel):
    """One event ingestion: a broker queue into a DynamoDB events table and an hour-partitioned S3 archive."""

    name: Ident
    description: str = ""
    source: RabbitMQSourceConfig | KinesisSourceConfig = Field(discriminator="kind")
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)  # type: ignore[arg-type]
    events_table: str = Field("keyflow_events", min_length=3, max_length=255, description="DynamoDB, key event_id")
    archive_prefix: str = Field("events/archive", min_length=1, max_length=512, description="trend scoring reads it")
    rejected_prefix: str = Field("events/rejected", min_length=1, max_length=512)
    batch_size: int = Field(500, ge=1, le=10_000, description="messages stored and acknowledged together")
    max_events: int = Field(100_000, ge=1, le=100_000_000, description="a drain stops after this many messages")
    max_seconds: float = Field(240, gt=0, le=86_400, description="a drain stops after this long")
    idle_seconds: float = Field(2.0, gt=0, le=600, description="a drain stops when the queue is quiet this long")

    @field_validator("archive_prefix", "rejected_prefix")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _relative_key(v)


# ---------------------------------------------------------------- profile


def _exactly_one(model: BaseModel, what: str, names: tuple[str, ...]) -> None:
    if sum(1 for n in names if getattr(model, n)) != 1:
        raise ValueError(f"{what} takes exactly one of: {', '.join(names)}")


class SecretRef(_Model):
    """Where a secret comes from. Secret values never live in YAML."""

    env: str | None = Field(None, description="environment variable")
    prefect_secret: str | None = Field(None, description="name of a Prefect Secret block")
    aws_secret: str | None = Field(None, description="AWS Secrets Manager secret id")
    aws_secret_field: str | None = Field(None, description="JSON field inside the AWS secret")

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        _exactly_one(self, "a secret reference", ("env", "prefect_secret", "aws_secret"))
        return self


class EncryptionKey(_Model):
    """Where field-level encryption gets its public key: an RSA public key (PEM) or a KMS key."""

    public_key_file: str | None = Field(None, description="PEM file; relative paths are tried from the config dir")
    public_key_pem: str | None = Field(None, max_length=20_000, description="the PEM text itself (it is public)")
    kms_key_id: str | None = Field(None, description="KMS key for envelope encryption (GenerateDataKey)")

    @model_validator(mode="after")
    def _one(self) -> EncryptionKey:
        _exactly_one(self, "an encryption key", ("public_key_file", "public_key_pem", "kms_key_id"))
        return self


class Profile(_Model):
    """Where keyflow runs: source database, warehouse, AWS endpoint, bucket, keys table, parallelism."""

    name: str = "local"
    source_url: str = Field(description="SQLAlchemy URL of the source database, without password")
    source_password: SecretRef | None = Field(None, description="defaults to $KEYFLOW_SOURCE_PASSWORD if set")
    source_max_connections: int = Field(
        2, ge=0, le=64, description="extractions at once against the source (0 stops extraction)"
    )
    source_concurrency_limit: str | None = Field(
        None,
        max_length=100,
        description="Prefect global concurrency limit held by every extraction from this source, across runs",
    )
    warehouse_kind: Literal["postgres", "redshift", "duckdb"] = "duckdb"
    warehouse_url: str = Field(description="postgresql://… (postgres, redshift) or a DuckDB file path")
    warehouse_password: SecretRef | None = Field(None, description="defaults to $KEYFLOW_WAREHOUSE_PASSWORD")
    redshift_iam_role: str | None = Field(None, description="IAM role ARN for Redshift COPY")
    trends_url: str | None = Field(
        None, description="PostgreSQL URL of trend counts; default: warehouse_url when warehouse_kind is postgres"
    )
    trends_password: SecretRef | None = Field(None, description="defaults to $KEYFLOW_TRENDS_PASSWORD")
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = Field(None, description="AWS endpoint (a moto server); None for real AWS")
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = Field("keyflow", description="key prefix of staged files")
    kms_key_id: str | None = Field(None, description="SSE-KMS key for staged objects; SSE-S3 when omitted")
    keys_table: str = Field("keyflow_keys", min_length=3, max_length=255)
    max_parallel_keys: int = Field(4, ge=1, le=64)
    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="threads: keys in threads of the flow's process; dask: keys on a Dask cluster"
    )
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster (tcp://…)")
    dask_workers: int = Field(2, ge=1, le=256, description="worker processes of a local Dask cluster")
    keep_staged: bool = Field(False, description="keep staged files after a successful load")
    secrets: dict[Ident, SecretRef] = Field(default_factory=dict, description="named secrets, e.g. hash salts")
    encryption_keys: dict[Ident, EncryptionKey] = Field(
        default_factory=dict, description="public keys for the privacy rule's 'encrypt' action"
    )

    @field_validator("source_url", "warehouse_url", "trends_url")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v and re.match(r"^[a-z0-9+]+://[^/@:]*:[^/@]+@", v):
            raise ValueError(
                "a password in a URL would live in YAML; remove it and set source_password / "
                "warehouse_password (environment variable, Prefect Secret or AWS Secrets Manager)"
            )
        return v

    @model_validator(mode="after")
    def _redshift(self) -> Profile:
        if self.warehouse_kind == "redshift" and not self.redshift_iam_role:
            raise ValueError("warehouse_kind 'redshift' needs redshift_iam_role (COPY runs with an IAM role)")
        return self
