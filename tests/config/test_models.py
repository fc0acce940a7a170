"""The models package: every name still imports from ``config.models``, one secret-name helper, the env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

import config.models
from config.loader import load_profile
from config.models import DatasetConfig, Profile, Rule, SecretNames, secret_names

PROFILE = """\
source_url: postgresql://etl@db:5432/x
warehouse_url: postgresql://loader@wh:5432/y
warehouse_kind: postgres
aws_endpoint_url: http://127.0.0.1:5000
bucket: yaml-bucket
secrets: {email_salt: {env: KEYFLOW_EMAIL_SALT}}
"""

# Every public name config/models.py had before it became a package.
NAMES = [
    "Condition",
    "CsvOptions",
    "DatasetConfig",
    "Dedupe",
    "Derive",
    "EncryptionKey",
    "EventsConfig",
    "Expr",
    "FILTER_OPS",
    "FileColumn",
    "FileSourceConfig",
    "FileTarget",
    "IDENT_RE",
    "Ident",
    "KinesisSourceConfig",
    "Privacy",
    "Profile",
    "RULE_NAMES",
    "RabbitMQSourceConfig",
    "ReferenceConfig",
    "Rule",
    "ScoringConfig",
    "SecretRef",
    "SourceConfig",
    "StagingConfig",
    "TargetColumn",
    "TargetConfig",
    "TrendConfig",
    "TypeName",
]


@pytest.mark.parametrize("name", NAMES)
def test_every_public_name_imports_from_config_models(name: str) -> None:
    assert name in config.models.__all__ and getattr(config.models, name) is not None


def test_one_helper_collects_the_secrets_and_keys_rules_name() -> None:
    rules = [
        Rule.model_validate(r)
        for r in (
            {"privacy": {"column": "email", "action": "hash", "salt_secret": "email_salt"}},
            {"privacy": {"column": "phone", "action": "encrypt", "key": "analysts"}},
            {"privacy": {"column": "name", "action": "mask", "key": "not_used_by_mask"}},
            {"drop": ["x"]},
        )
    ]
    assert secret_names(rules) == SecretNames(frozenset({"email_salt"}), frozenset({"analysts"}))
    dataset = DatasetConfig.model_validate(
        {"name": "d", "source": {"table": "t", "key_column": "k"}, "target": {"table": "t"}, "rules": rules}
    )
    assert (dataset.secret_names(), dataset.encryption_key_names()) == ({"email_salt"}, {"analysts"})


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE)
    return path


def test_secret_references_and_maps_are_never_read_from_the_environment(profile_path: Path) -> None:
    env = {
        "KEYFLOW_SOURCE_PASSWORD": "hunter2",
        "KEYFLOW_WAREHOUSE_PASSWORD": "{}",
        "KEYFLOW_SECRETS": '{"other": {"env": "X"}}',
        "KEYFLOW_ENCRYPTION_KEYS": "not json",
    }
    prof = load_profile(profile_path, environ=env)
    assert (prof.source_password, prof.warehouse_password, prof.encryption_keys) == (None, None, {})
    assert list(prof.secrets) == ["email_salt"]


def test_only_the_capitalised_variable_counts(profile_path: Path) -> None:
    env = {"keyflow_bucket": "lower", "Keyflow_Bucket": "mixed", "KEYFLOW_bucket": "half"}
    assert load_profile(profile_path, environ=env).bucket == "yaml-bucket"


def test_an_empty_variable_unsets_an_optional_field(profile_path: Path) -> None:
    prof = load_profile(profile_path, environ={"KEYFLOW_AWS_ENDPOINT_URL": "", "KEYFLOW_SOURCE_URL": ""})
    assert (prof.aws_endpoint_url, prof.source_url) == (None, "")


def test_the_environment_is_read_when_a_profile_is_built_not_at_import(
    profile_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYFLOW_BUCKET", "env-bucket")
    monkeypatch.setenv("KEYFLOW_MAX_PARALLEL_KEYS", "3")
    assert load_profile(profile_path).bucket == "env-bucket"
    prof = Profile(source_url="sqlite://", warehouse_url="w.duckdb", bucket="yaml-bucket")  # type: ignore[call-arg]
    assert (prof.bucket, prof.max_parallel_keys) == ("env-bucket", 3)
