"""The composition root: build adapters from the active profile. Tasks call these; flows never see SDKs."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from config.errors import ConfigError
from config.loader import config_dir
from config.models import EventsConfig, KinesisSourceConfig, Profile, SecretRef, TrendConfig
from tasks.io.keystore import DynamoKeyStore
from tasks.io.kms import kms_data_keys
from tasks.io.objectstore import S3ObjectStore
from tasks.io.secrets import resolve_secret
from tasks.io.source import SqlSource
from tasks.io.warehouse import DuckDBWarehouse, PostgresWarehouse, RedshiftWarehouse, Warehouse
from tasks.transforms.crypto import DataKeySource, load_public_key, rsa_data_keys

if TYPE_CHECKING:  # each flow family's adapters are imported when first built: the ETL does not load Acero or pika
    from tasks.io.archive import UserDirectory
    from tasks.io.broker import RabbitMQSource
    from tasks.io.event_store import ArticleDirectory, EventTable
    from tasks.io.rds_writer import RdsWriter
    from tasks.io.stream import KinesisSource
    from tasks.io.trend_store import TrendCounts, TrendServing


def _password(profile: Profile, ref: SecretRef | None, env_default: str, what: str) -> str | None:
    if ref is not None:
        return resolve_secret(ref, what, profile.aws_region, profile.aws_endpoint_url).get_secret_value()
    return os.environ.get(env_default) or None


def source_for(profile: Profile) -> SqlSource:
    """The source database of a profile."""
    password = _password(profile, profile.source_password, "KEYFLOW_SOURCE_PASSWORD", "source_password")
    return SqlSource(profile.source_url, password, pool_size=max(profile.source_max_connections, 1))


def warehouse_for(profile: Profile) -> Warehouse:
    """The warehouse of a profile."""
    if profile.warehouse_kind == "duckdb":
        return DuckDBWarehouse(profile.warehouse_url)
    password = _password(profile, profile.warehouse_password, "KEYFLOW_WAREHOUSE_PASSWORD", "warehouse_password")
    if profile.warehouse_kind == "redshift":
        assert profile.redshift_iam_role is not None
        return RedshiftWarehouse(profile.warehouse_url, password, profile.redshift_iam_role, profile.aws_region)
    return PostgresWarehouse(profile.warehouse_url, password)


def rds_writer_for(profile: Profile) -> RdsWriter:
    """The RDS database landing files are loaded into: the profile's source database (the ETL reads it)."""
    from tasks.io.rds_writer import RdsWriter

    password = _password(profile, profile.source_password, "KEYFLOW_SOURCE_PASSWORD", "source_password")
    return RdsWriter(profile.source_url, password)


def object_store_for(profile: Profile) -> S3ObjectStore:
    """The staging bucket of a profile."""
    return S3ObjectStore(profile.bucket, profile.aws_region, profile.aws_endpoint_url, profile.kms_key_id)


def trend_counts_for(profile: Profile, job: TrendConfig) -> TrendCounts:
    """Where a trend job's window counts and watermark live: ``trends_url``, else a PostgreSQL warehouse."""
    from tasks.io.trend_store import TrendCounts

    if profile.trends_url:
        password = _password(profile, profile.trends_password, "KEYFLOW_TRENDS_PASSWORD", "trends_password")
        return TrendCounts(profile.trends_url, password, job.counts_schema, job.counts_table)
    if profile.warehouse_kind != "postgres":
        raise ConfigError(
            f"profile {profile.name}: trends_url: trend counts need PostgreSQL; set trends_url "
            f"(the warehouse is {profile.warehouse_kind!r})"
        )
    password = _password(profile, profile.warehouse_password, "KEYFLOW_WAREHOUSE_PASSWORD", "warehouse_password")
    return TrendCounts(profile.warehouse_url, password, job.counts_schema, job.counts_table)


def trend_serving_for(profile: Profile, job: TrendConfig) -> TrendServing:
    """The DynamoDB table serving a trend job's top-N."""
    from tasks.io.trend_store import TrendServing

    return TrendServing(job.serving_table, profile.aws_region, profile.aws_endpoint_url, profile.kms_key_id)


_users_lock = threading.Lock()
_users: dict[tuple[str, str, str | None], UserDirectory] = {}


def users_for(profile: Profile, job: TrendConfig) -> UserDirectory:
    """The user reference file, one cache per process: a long-running server re-reads it only when it changes."""
    from tasks.io.archive import UserDirectory

    cache_key = (profile.bucket, job.users_key, profile.aws_endpoint_url)
    with _users_lock:
        if cache_key not in _users:
            _users[cache_key] = UserDirectory(object_store_for(profile), job.users_key)
        return _users[cache_key]


def event_source_for(profile: Profile, job: EventsConfig) -> RabbitMQSource | KinesisSource:
    """The broker queue or stream an event ingestion drains (opened now; close it when done)."""
    from tasks.io.broker import RabbitMQSource
    from tasks.io.stream import CheckpointTable, KinesisSource

    src = job.source
    if isinstance(src, KinesisSourceConfig):
        checkpoints = CheckpointTable(
            src.checkpoint_table, profile.aws_region, profile.aws_endpoint_url, profile.kms_key_id
        )
        checkpoints.ensure()
        return KinesisSource(src.stream, profile.aws_region, profile.aws_endpoint_url, checkpoints, job.name, src.start)
    if src.password is not None:
        password: str | None = resolve_secret(
            src.password, "source.password", profile.aws_region, profile.aws_endpoint_url
        ).get_secret_value()
    else:
        password = os.environ.get("KEYFLOW_BROKER_PASSWORD") or None
    return RabbitMQSource(src.url, password, src.queue, src.dead_letter_queue, src.prefetch)


def event_table_for(profile: Profile, job: EventsConfig) -> EventTable:
    """The DynamoDB events table of an ingestion."""
    from tasks.io.event_store import EventTable

    return EventTable(job.events_table, profile.aws_region, profile.aws_endpoint_url, profile.kms_key_id)


_articles: dict[tuple[str, str | None, int, int], ArticleDirectory] = {}


def articles_for(profile: Profile, job: EventsConfig) -> ArticleDirectory:
    """The article reference lookup, one cache per process (a long-running drain keeps it warm)."""
    from tasks.io.event_store import ArticleDirectory
    from tasks.transforms.events import TTLCache

    ref = job.reference
    cache_key = (ref.table, profile.aws_endpoint_url, ref.cache_ttl_seconds, ref.cache_max_entries)
    with _users_lock:
        if cache_key not in _articles:
            cache = TTLCache(ttl_seconds=ref.cache_ttl_seconds, max_entries=ref.cache_max_entries)
            _articles[cache_key] = ArticleDirectory(
                ref.table, profile.aws_region, profile.aws_endpoint_url, cache, profile.kms_key_id
            )
        return _articles[cache_key]


def key_store_for(profile: Profile, page_size: int | None = None) -> DynamoKeyStore:
    """The DynamoDB key table of a profile."""
    return DynamoKeyStore(
        profile.keys_table, profile.aws_region, profile.aws_endpoint_url, profile.kms_key_id, page_size
    )


def salts_for(profile: Profile, names: set[str]) -> dict[str, bytes]:
    """Resolve the named secrets a dataset's rules need (hash salts), as bytes."""
    out = {}
    for name in sorted(names):
        ref = profile.secrets.get(name)
        if ref is None:
            raise ConfigError(f"profile {profile.name}: secrets.{name}: not defined (a rule's salt_secret names it)")
        out[name] = (
            resolve_secret(ref, f"profile {profile.name}: secrets.{name}", profile.aws_region, profile.aws_endpoint_url)
            .get_secret_value()
            .encode()
        )
    return out


def data_keys_for(profile: Profile, names: set[str]) -> dict[str, DataKeySource]:
    """Data-key sources for the encryption keys a dataset's rules name (public keys only: never a private key)."""
    out: dict[str, DataKeySource] = {}
    for name in sorted(names):
        entry = profile.encryption_keys.get(name)
        where = f"profile {profile.name}: encryption_keys.{name}"
        if entry is None:
            raise ConfigError(f"{where}: not defined (a rule's 'encrypt' action names it)")
        if entry.kms_key_id:
            out[name] = kms_data_keys(entry.kms_key_id, profile.aws_region, profile.aws_endpoint_url)
            continue
        if entry.public_key_pem:
            pem = entry.public_key_pem.encode()
        else:
            assert entry.public_key_file is not None
            path = Path(entry.public_key_file)
            if not path.is_file() and not path.is_absolute():
                path = config_dir() / path
            if not path.is_file():
                raise ConfigError(f"{where}: public_key_file: no such file {entry.public_key_file!r}")
            pem = path.read_bytes()
        try:
            out[name] = rsa_data_keys(load_public_key(pem))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return out
