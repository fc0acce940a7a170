"""Pydantic models of keyflow's YAML, one module per folder of ``config/``; every public name is importable from here.

- :mod:`config.models.common`: the strict bases, safe identifiers, type names, :class:`SecretRef`.
- :mod:`config.models.rules`: a dataset's rules, and :func:`secret_names`, the profile entries rules name.
- :mod:`config.models.dataset` (``datasets/``), :mod:`config.models.sources` (``sources/``),
  :mod:`config.models.events` (``events/``), :mod:`config.models.trends` (``trends/``),
  :mod:`config.models.profile` (``profiles/``, with the ``KEYFLOW_<FIELD>`` overrides).
"""

from __future__ import annotations

from config.models.common import ENV_PREFIX, IDENT_RE, Ident, SecretRef, TypeName
from config.models.dataset import (
    DatasetConfig,
    SourceConfig,
    StagingConfig,
    TargetColumn,
    TargetConfig,
    UnitsConfig,
)
from config.models.events import EventsConfig, KinesisSourceConfig, RabbitMQSourceConfig, ReferenceConfig
from config.models.profile import EncryptionKey, Profile, ProfileEnvSource, RedshiftConfig
from config.models.rules import (
    FILTER_OPS,
    RULE_NAMES,
    Condition,
    Dedupe,
    Derive,
    Expr,
    Privacy,
    Rule,
    SecretNames,
    secret_names,
)
from config.models.sources import CsvOptions, FileColumn, FileSourceConfig, FileTarget
from config.models.trends import ScoringConfig, TrendConfig

__all__ = [
    "ENV_PREFIX",
    "FILTER_OPS",
    "IDENT_RE",
    "RULE_NAMES",
    "Condition",
    "CsvOptions",
    "DatasetConfig",
    "Dedupe",
    "Derive",
    "EncryptionKey",
    "EventsConfig",
    "Expr",
    "FileColumn",
    "FileSourceConfig",
    "FileTarget",
    "Ident",
    "KinesisSourceConfig",
    "Privacy",
    "Profile",
    "ProfileEnvSource",
    "RabbitMQSourceConfig",
    "RedshiftConfig",
    "ReferenceConfig",
    "Rule",
    "ScoringConfig",
    "SecretNames",
    "SecretRef",
    "SourceConfig",
    "StagingConfig",
    "TargetColumn",
    "TargetConfig",
    "TrendConfig",
    "TypeName",
    "UnitsConfig",
    "secret_names",
]
