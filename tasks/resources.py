"""The composition root: a run's adapters, built from its profile once and handed to its tasks.

A flow builds one :class:`Resources` per run and passes it to its tasks (``unmapped(resources)`` across a map)::

    resources = resources_for(load_profile(profile))
    spec = prepare_target(dataset, resources)

A task asks it for the adapter it needs (``resources.warehouse()``, ``resources.object_store()``…), typed by the
adapter's Protocol. Each adapter is built on first use and kept for the run; each secret is resolved once, on first
need, and kept as ``SecretStr``. The object pickles (the Dask task runner ships it to its workers) with the profile
and the resolved secrets only: cached clients and engines are dropped and rebuilt on the other side.

Flows never see an SDK: everything here is built in ``tasks/io``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import SecretStr

from config.errors import ConfigError
from config.loader import config_dir
from config.models import EventsConfig, KinesisSourceConfig, Profile, SecretRef, TrendConfig
from tasks.io.databases import pg_dsn
from tasks.io.keystore import DynamoKeyStore, KeyStore
from tasks.io.kms import kms_data_keys
from tasks.io.objectstore import ObjectStore, S3ObjectStore
from tasks.io.redshift import DataApi, IamCredentials, RedshiftDataApiWarehouse
from tasks.io.secrets import resolve_secret
from tasks.io.source import SourceDatabase, SqlSource
from tasks.io.warehouse import DuckDBWarehouse, PostgresWarehouse, RedshiftWarehouse, Warehouse
from tasks.transforms.crypto import DataKeySource, load_public_key, rsa_data_keys

if TYPE_CHECKING:  # each flow family's adapters are imported when first built: the ETL does not load Acero or pika
    from tasks.io.archive import UserDirectory
    from tasks.io.broker import EventSource
    from tasks.io.event_store import ArticleDirectory, EventTable
    from tasks.io.rds_writer import RdsWriter
    from tasks.io.trend_store import TrendCounts, TrendServing

A = TypeVar("A")


class Resources:
    """The adapters of one run, built lazily from ``profile`` and cached; secrets resolved once.

    Thread-safe (the tasks of a run share it); picklable without its clients (see the module docstring).
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._secrets: dict[tuple[str, str | None, str | None], SecretStr | None] = {}
        self._adapters: dict[tuple[str, ...], Any] = {}
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"profile": self.profile, "secrets": dict(self._secrets)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.profile = state["profile"]
        self._secrets = state["secrets"]
        self._adapters = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Resources(profile={self.profile.name!r}, {len(self._secrets)} secret(s) resolved)"

    # --- secrets

    def secret(self, ref: SecretRef | None, what: str, env_default: str | None = None) -> SecretStr | None:
        """The secret ``ref`` names (else the ``env_default`` variable, None when unset), resolved once per run."""
        cache_key = (what, ref.model_dump_json() if ref is not None else None, env_default)
        with self._lock:
            if cache_key not in self._secrets:
                value: SecretStr | None
                if ref is not None:
                    value = resolve_secret(ref, what, self.profile.aws_region, self.profile.aws_endpoint_url)
                else:
                    env = os.environ.get(env_default) if env_default else None
                    value = SecretStr(env) if env else None
                self._secrets[cache_key] = value
            return self._secrets[cache_key]

    @contextmanager
    def _field(self, field: str) -> Iterator[None]:
        """A URL an adapter cannot use is the profile's mistake: name the file and the field."""
        try:
            yield
        except ConfigError as exc:
            raise ConfigError([f"{self.profile.file}: {field}: {p}" for p in exc.problems]) from None

    def _password(self, ref: SecretRef | None, env_default: str, what: str) -> str | None:
        secret = self.secret(ref, what, env_default)
        return secret.get_secret_value() if secret is not None else None

    def salts(self, names: set[str]) -> dict[str, bytes]:
        """The named secrets a dataset's rules need (hash salts), as bytes."""
        out = {}
        for name in sorted(names):
            ref = self.profile.secrets.get(name)
            if ref is None:
                raise ConfigError(
                    f"profile {self.profile.name}: secrets.{name}: not defined (a rule's salt_secret names it)"
                )
            secret = self.secret(ref, f"profile {self.profile.name}: secrets.{name}")
            assert secret is not None
            out[name] = secret.get_secret_value().encode()
        return out

    # --- adapters

    def _cached(self, key: tuple[str, ...], build: Callable[[], A]) -> A:
        with self._lock:
            if key not in self._adapters:
                self._adapters[key] = build()
            adapter: A = self._adapters[key]
            return adapter

    def source(self) -> SourceDatabase:
        """The source database of the profile."""

        def build() -> SourceDatabase:
            p = self.profile
            password = self._password(p.source_password, "KEYFLOW_SOURCE_PASSWORD", "source_password")
            with self._field("source_url"):
                return SqlSource(p.source_url, password, pool_size=max(p.source_max_connections, 1))

        return self._cached(("source",), build)

    def warehouse(self) -> Warehouse:
        """The warehouse of the profile."""

        def build() -> Warehouse:
            p = self.profile
            if p.warehouse_kind == "duckdb":
                return DuckDBWarehouse(p.warehouse_url, lock_wait_seconds=p.retry_window_seconds)
            if p.warehouse_kind == "redshift":
                return self._redshift()
            password = self._password(p.warehouse_password, "KEYFLOW_WAREHOUSE_PASSWORD", "warehouse_password")
            with self._field("warehouse_url"):
                return PostgresWarehouse(p.warehouse_url, password)

        return self._cached(("warehouse",), build)

    def _redshift(self) -> Warehouse:
        """Redshift in the profile's mode: the Data API, or a connection with a password or IAM credentials."""
        p, rs = self.profile, self.profile.redshift
        assert p.redshift_iam_role is not None
        endpoint = rs.endpoint_url or p.aws_endpoint_url
        if rs.mode == "data_api":
            assert rs.database is not None
            api = DataApi(
                p.aws_region,
                endpoint,
                rs.database,
                cluster_id=rs.cluster_id,
                workgroup=rs.workgroup,
                db_user=rs.db_user,
                secret_arn=rs.secret_arn,
                poll_max_seconds=rs.poll_max_seconds,
                timeout_seconds=rs.timeout_seconds,
            )
            return RedshiftDataApiWarehouse(api, p.redshift_iam_role, p.aws_region, p.prefix)
        if rs.iam_auth:
            with self._field("warehouse_url"):
                database = str(pg_dsn(p.warehouse_url).get("dbname") or "dev")
                credentials = IamCredentials(p.aws_region, endpoint, database, rs.cluster_id, rs.db_user, rs.workgroup)
                return RedshiftWarehouse(p.warehouse_url, None, p.redshift_iam_role, p.aws_region, credentials)
        password = self._password(p.warehouse_password, "KEYFLOW_WAREHOUSE_PASSWORD", "warehouse_password")
        with self._field("warehouse_url"):
            return RedshiftWarehouse(p.warehouse_url, password, p.redshift_iam_role, p.aws_region)

    def object_store(self) -> ObjectStore:
        """The staging bucket of the profile (also where landing files and the event archive live)."""
        return self._cached(("object_store",), lambda: object_store_for(self.profile))

    def key_store(self) -> KeyStore:
        """The DynamoDB key table of the profile."""
        return self._cached(("key_store",), lambda: key_store_for(self.profile))

    def rds_writer(self) -> RdsWriter:
        """The RDS database landing files are loaded into: the profile's source database (the ETL reads it)."""

        def build() -> RdsWriter:
            from tasks.io.rds_writer import RdsWriter

            p = self.profile
            password = self._password(p.source_password, "KEYFLOW_SOURCE_PASSWORD", "source_password")
            with self._field("source_url"):
                return RdsWriter(p.source_url, password)

        return self._cached(("rds_writer",), build)

    def data_keys(self, names: set[str]) -> dict[str, DataKeySource]:
        """Data-key sources for the encryption keys a dataset's rules name (public keys only: never a private key)."""
        return {name: self._cached(("data_keys", name), partial(self._data_key, name)) for name in sorted(names)}

    def _data_key(self, name: str) -> DataKeySource:
        p = self.profile
        entry = p.encryption_keys.get(name)
        where = f"profile {p.name}: encryption_keys.{name}"
        if entry is None:
            raise ConfigError(f"{where}: not defined (a rule's 'encrypt' action names it)")
        if entry.kms_key_id:
            return kms_data_keys(entry.kms_key_id, p.aws_region, p.aws_endpoint_url)
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
            return rsa_data_keys(load_public_key(pem))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def trend_counts(self, job: TrendConfig) -> TrendCounts:
        """Where a trend job's window counts and watermark live: ``trends_url``, else a PostgreSQL warehouse."""

        def build() -> TrendCounts:
            from tasks.io.trend_store import TrendCounts

            p = self.profile
            if p.trends_url:
                password = self._password(p.trends_password, "KEYFLOW_TRENDS_PASSWORD", "trends_password")
                with self._field("trends_url"):
                    return TrendCounts(p.trends_url, password, job.counts_schema, job.counts_table)
            if p.warehouse_kind != "postgres":
                raise ConfigError(
                    f"profile {p.name}: trends_url: trend counts need PostgreSQL; set trends_url "
                    f"(the warehouse is {p.warehouse_kind!r})"
                )
            password = self._password(p.warehouse_password, "KEYFLOW_WAREHOUSE_PASSWORD", "warehouse_password")
            with self._field("warehouse_url"):
                return TrendCounts(p.warehouse_url, password, job.counts_schema, job.counts_table)

        return self._cached(("trend_counts", job.counts_schema, job.counts_table), build)

    def trend_serving(self, job: TrendConfig) -> TrendServing:
        """The DynamoDB table serving a trend job's top-N."""
        return self._cached(("trend_serving", job.serving_table), lambda: trend_serving_for(self.profile, job))

    def users(self, job: TrendConfig) -> UserDirectory:
        """The user reference file of a trend job (one cache per process: a server re-reads it only on change)."""
        return self._cached(("users", job.users_key), lambda: _users(self.profile, job))

    def event_table(self, job: EventsConfig) -> EventTable:
        """The DynamoDB events table of an ingestion."""

        def build() -> EventTable:
            from tasks.io.event_store import EventTable

            p = self.profile
            return EventTable(job.events_table, p.aws_region, p.aws_endpoint_url, p.kms_key_id)

        return self._cached(("event_table", job.events_table), build)

    def articles(self, job: EventsConfig) -> ArticleDirectory:
        """The article reference lookup of an ingestion (one cache per process: a long drain keeps it warm)."""
        return self._cached(("articles", job.reference.table), lambda: _articles(self.profile, job))

    def open_event_source(self, job: EventsConfig) -> EventSource:
        """The broker queue or stream an ingestion drains, opened now (not cached: close it when done)."""
        from tasks.io.broker import RabbitMQSource
        from tasks.io.stream import CheckpointTable, KinesisSource

        p, src = self.profile, job.source
        if isinstance(src, KinesisSourceConfig):
            checkpoints = CheckpointTable(src.checkpoint_table, p.aws_region, p.aws_endpoint_url, p.kms_key_id)
            checkpoints.ensure()
            return KinesisSource(src.stream, p.aws_region, p.aws_endpoint_url, checkpoints, job.name, src.start)
        password = self._password(src.password, "KEYFLOW_BROKER_PASSWORD", "source.password")
        return RabbitMQSource(src.url, password, src.queue, src.dead_letter_queue, src.prefetch)

    def check_event_source(self, job: EventsConfig) -> list[str]:
        """Problems reaching the broker queues or the stream an ingestion drains (checked, not opened for long)."""
        p, src = self.profile, job.source
        if isinstance(src, KinesisSourceConfig):
            from tasks.io.stream import check_stream

            return check_stream(src.stream, p.aws_region, p.aws_endpoint_url)
        from tasks.io.broker import check_queues

        password = self._password(src.password, "KEYFLOW_BROKER_PASSWORD", "source.password")
        return check_queues(src.url, password, [src.queue, src.dead_letter_queue])


def resources_for(profile: Profile) -> Resources:
    """A run's resources: nothing is built or resolved until a task asks for it."""
    return Resources(profile)


_process_lock = threading.Lock()
_users_cache: dict[tuple[str, str, str | None, str], UserDirectory] = {}
_articles_cache: dict[tuple[str, str | None, int, int], ArticleDirectory] = {}


def _users(profile: Profile, job: TrendConfig) -> UserDirectory:
    from tasks.io.archive import UserDirectory

    cache_key = (profile.bucket, job.users_key, profile.aws_endpoint_url, job.file)
    with _process_lock:
        if cache_key not in _users_cache:
            _users_cache[cache_key] = UserDirectory(object_store_for(profile), job.users_key, f"{job.file}: users_key")
        return _users_cache[cache_key]


def _articles(profile: Profile, job: EventsConfig) -> ArticleDirectory:
    from tasks.io.event_store import ArticleDirectory
    from tasks.transforms.events import TTLCache

    ref = job.reference
    cache_key = (ref.table, profile.aws_endpoint_url, ref.cache_ttl_seconds, ref.cache_max_entries)
    with _process_lock:
        if cache_key not in _articles_cache:
            cache = TTLCache(ttl_seconds=ref.cache_ttl_seconds, max_entries=ref.cache_max_entries)
            _articles_cache[cache_key] = ArticleDirectory(
                ref.table, profile.aws_region, profile.aws_endpoint_url, cache, profile.kms_key_id
            )
        return _articles_cache[cache_key]


# --- One adapter from a bare profile, for callers outside a run (the CLI, scripts, tests). No secret is kept:
# a second call resolves again. A flow's tasks use the run's Resources instead.


def object_store_for(profile: Profile) -> S3ObjectStore:
    """The staging bucket of a profile."""
    return S3ObjectStore(profile.bucket, profile.aws_region, profile.aws_endpoint_url, profile.kms_key_id)


def key_store_for(profile: Profile, page_size: int | None = None) -> DynamoKeyStore:
    """The DynamoDB key table of a profile."""
    return DynamoKeyStore(
        profile.keys_table, profile.aws_region, profile.aws_endpoint_url, profile.kms_key_id, page_size
    )


def trend_serving_for(profile: Profile, job: TrendConfig) -> TrendServing:
    """The DynamoDB table serving a trend job's top-N."""
    from tasks.io.trend_store import TrendServing

    return TrendServing(job.serving_table, profile.aws_region, profile.aws_endpoint_url, profile.kms_key_id)


def trend_counts_for(profile: Profile, job: TrendConfig) -> TrendCounts:
    """Where a trend job's window counts and watermark live (see :meth:`Resources.trend_counts`)."""
    return Resources(profile).trend_counts(job)


def event_source_for(profile: Profile, job: EventsConfig) -> EventSource:
    """The broker queue or stream an event ingestion drains (opened now; close it when done)."""
    return Resources(profile).open_event_source(job)


def data_keys_for(profile: Profile, names: set[str]) -> dict[str, DataKeySource]:
    """Data-key sources for the encryption keys a dataset's rules name (see :meth:`Resources.data_keys`)."""
    return Resources(profile).data_keys(names)
