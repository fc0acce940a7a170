"""``config/profiles/*.yaml``: where keyflow runs, and its ``KEYFLOW_<FIELD>`` overrides (pydantic-settings)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from config.models.common import ENV_PREFIX, Ident, SecretRef, _exactly_one, _Model
from config.urls import POSTGRES_BACKENDS, SOURCE_BACKENDS, url_problem


class EncryptionKey(_Model):
    """Where field-level encryption gets its public key: an RSA public key (PEM) or a KMS key."""

    public_key_file: str | None = Field(None, description="PEM file; relative paths are tried from the config dir")
    public_key_pem: str | None = Field(None, max_length=20_000, description="the PEM text itself (it is public)")
    kms_key_id: str | None = Field(None, description="KMS key for envelope encryption (GenerateDataKey)")

    @model_validator(mode="after")
    def _one(self) -> EncryptionKey:
        _exactly_one(self, "an encryption key", ("public_key_file", "public_key_pem", "kms_key_id"))
        return self


def _is_scalar(annotation: Any) -> bool:
    """A str, int, float, bool or Literal field, optionally None: what one environment variable can hold."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return all(m is type(None) or m in (str, int, float, bool) or get_origin(m) is Literal for m in members)


class ProfileEnvSource(EnvSettingsSource):
    """``KEYFLOW_<FIELD>`` variables for a profile's scalar fields, read from ``environ`` when the source is built.

    Only the capitalised spelling counts. Secret references and maps are never read from the environment: a profile
    names where a secret comes from in YAML. An empty variable unsets an optional field (``source_url`` keeps ``""``).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The mapping given (`keyflow validate` passes an empty one), not always os.environ; lower-cased for matching.
        return {name.lower(): value for name, value in self._environ.items() if name.isupper()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The variable's text for a scalar field; nothing for a structured one."""
        if not _is_scalar(field.annotation):
            return None, field_name, False
        return super().get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        """``{field: value}`` for every field a variable sets."""
        return {
            name: None if value == "" and name != "source_url" else value for name, value in super().__call__().items()
        }


class RedshiftConfig(_Model):
    """How keyflow reaches Redshift: a database connection (``direct``) or the Redshift Data API (``data_api``)."""

    mode: Literal["direct", "data_api"] = Field(
        "direct",
        description="direct: a connection to warehouse_url (psycopg2); data_api: the Redshift Data API over HTTPS, "
        "no network path to the cluster needed",
    )
    cluster_id: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$", max_length=63, description="provisioned cluster identifier"
    )
    workgroup: str | None = Field(None, pattern=r"^[a-z0-9-]{3,63}$", description="Redshift Serverless workgroup name")
    database: Ident | None = Field(None, description="database (data_api; direct mode takes it from warehouse_url)")
    db_user: str | None = Field(
        None,
        min_length=1,
        max_length=127,
        description="database user for temporary credentials (GetClusterCredentials) on a provisioned cluster",
    )
    secret_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:secretsmanager:", description="data_api: Secrets Manager secret of the user"
    )
    iam_auth: bool = Field(
        False,
        description="direct: connect with temporary IAM credentials (GetClusterCredentials for cluster_id + db_user, "
        "redshift-serverless GetCredentials for workgroup) instead of a password",
    )
    endpoint_url: str | None = Field(
        None, description="endpoint of the Redshift APIs (a VPC endpoint); default: aws_endpoint_url"
    )
    poll_max_seconds: float = Field(
        5.0, ge=0.05, le=60, description="data_api: longest pause between two DescribeStatement polls"
    )
    timeout_seconds: int = Field(
        3600, ge=10, le=86_400, description="data_api: how long a load is waited for before the key is retried"
    )

    @model_validator(mode="after")
    def _combination(self) -> RedshiftConfig:
        if self.cluster_id and self.workgroup:
            raise ValueError("give cluster_id (provisioned) or workgroup (Serverless), not both")
        if self.mode == "data_api":
            if not (self.cluster_id or self.workgroup):
                raise ValueError("mode data_api needs cluster_id (provisioned) or workgroup (Serverless)")
            if not self.database:
                raise ValueError("mode data_api needs database")
            if self.iam_auth:
                raise ValueError("iam_auth is for mode direct; data_api authenticates with secret_arn or db_user")
            if self.cluster_id and bool(self.secret_arn) == bool(self.db_user):
                raise ValueError("mode data_api on a cluster needs exactly one of secret_arn or db_user")
            if self.workgroup and self.db_user:
                raise ValueError(
                    "db_user is for a provisioned cluster; a Serverless workgroup uses secret_arn or the caller's "
                    "IAM identity"
                )
        else:
            if self.secret_arn:
                raise ValueError("secret_arn is for mode data_api; mode direct uses warehouse_password or iam_auth")
            if self.iam_auth and not (self.cluster_id or self.workgroup):
                raise ValueError("iam_auth needs cluster_id and db_user (provisioned) or workgroup (Serverless)")
            if self.iam_auth and self.cluster_id and not self.db_user:
                raise ValueError("iam_auth on a cluster needs db_user (GetClusterCredentials)")
            if not self.iam_auth and (self.cluster_id or self.workgroup or self.db_user):
                raise ValueError("cluster_id, workgroup and db_user are used by mode data_api or iam_auth: set one")
        return self


class Profile(BaseSettings):
    """Where keyflow runs: source database, warehouse, AWS endpoint, bucket, keys table, parallelism."""

    # extra/frozen/validate_default as every other model (BaseSettings would validate defaults).
    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=False, env_prefix=ENV_PREFIX)

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
    warehouse_url: str = Field(
        "", description="postgresql://… (postgres, redshift direct) or a DuckDB file path; unused by redshift data_api"
    )
    warehouse_password: SecretRef | None = Field(None, description="defaults to $KEYFLOW_WAREHOUSE_PASSWORD")
    redshift_iam_role: str | None = Field(None, description="IAM role ARN for Redshift COPY")
    redshift: RedshiftConfig = Field(
        default_factory=RedshiftConfig,  # type: ignore[arg-type]
        description="how Redshift is reached (warehouse_kind redshift): connection mode and authentication",
    )
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
    retry_window_seconds: float = Field(
        180,
        ge=0,
        le=3600,
        description="how long a step (a key, a file, a drain, a count) keeps retrying a dropped or refused connection "
        "(an RDS failover takes 60-120 s)",
    )
    retry_backoff_seconds: float = Field(
        2, gt=0, le=60, description="the first wait before a retry; each next one doubles, up to 30 s, with jitter"
    )
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

    @field_validator("source_url", "warehouse_url", "trends_url")
    @classmethod
    def _database_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A URL keyflow can connect with (a DuckDB warehouse is a file path); checked now, not at the first key."""
        if not v:
            return v
        if info.field_name == "source_url":
            problem = url_problem(v, SOURCE_BACKENDS)
        elif info.field_name == "warehouse_url" and info.data.get("warehouse_kind", "duckdb") == "duckdb":
            scheme = v.split("://", 1)[0].lower() if "://" in v else None
            problem = None if scheme in (None, "duckdb") else "warehouse_kind 'duckdb' takes a file path, not a URL"
        else:
            problem = url_problem(v, POSTGRES_BACKENDS, psycopg2_only=True)
        if problem:
            raise ValueError(problem)
        return v

    _file: str | None = PrivateAttr(None)

    @property
    def file(self) -> str:
        """The profile's YAML file as errors show it (``profile NAME`` for a profile built in code)."""
        return self._file or f"profile {self.name}"

    @model_validator(mode="after")
    def _redshift(self) -> Profile:
        if self.warehouse_kind == "redshift" and not self.redshift_iam_role:
            raise ValueError("warehouse_kind 'redshift' needs redshift_iam_role (COPY runs with an IAM role)")
        data_api = self.warehouse_kind == "redshift" and self.redshift.mode == "data_api"
        if not self.warehouse_url and not data_api:
            raise ValueError(f"warehouse_kind {self.warehouse_kind!r} needs warehouse_url")
        redshift_iam = self.warehouse_kind == "redshift" and (data_api or self.redshift.iam_auth)
        if redshift_iam and self.warehouse_password is not None:
            how = "mode data_api" if data_api else "iam_auth"
            raise ValueError(f"warehouse_password is not used with redshift {how}; remove it")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``KEYFLOW_<FIELD>`` variables win over the values given (the YAML); no ``.env`` file, no secrets folder."""
        return ProfileEnvSource(settings_cls), init_settings
