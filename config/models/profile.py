"""``config/profiles/*.yaml``: where keyflow runs: source database, warehouse, AWS, bucket, keys table, parallelism."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from config.models.common import Ident, SecretRef, _exactly_one, _Model


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
