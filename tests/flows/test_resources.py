"""A run's resources: every secret resolved once, adapters built once and shared, picklable without clients."""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from typing import Any

import pytest
from pydantic import SecretStr

from config.errors import ConfigError
from config.models import Profile, SecretRef
from tasks import resources as resources_module
from tasks.resources import Resources, resources_for

SOURCE_PW = "s3ntinel-source-pw"
WAREHOUSE_PW = "s3ntinel-warehouse-pw"
SALT = "s3ntinel-salt"


@pytest.fixture()
def resolutions(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every secret resolution, counted by what it was for (the real resolver still answers)."""
    counts: Counter[str] = Counter()
    real = resources_module.resolve_secret

    def counting(ref: SecretRef, what: str, region: str, endpoint_url: str | None = None) -> SecretStr:
        counts[what] += 1
        return real(ref, what, region, endpoint_url)

    monkeypatch.setattr(resources_module, "resolve_secret", counting)
    monkeypatch.setenv("TEST_SOURCE_PW", SOURCE_PW)
    monkeypatch.setenv("TEST_WAREHOUSE_PW", WAREHOUSE_PW)
    monkeypatch.setenv("TEST_SALT", SALT)
    return counts


def profile() -> Profile:
    return Profile(
        name="unit",
        source_url="postgresql+psycopg2://loader@127.0.0.1:1/src",  # engines connect lazily: never here
        source_password=SecretRef(env="TEST_SOURCE_PW"),
        warehouse_kind="postgres",
        warehouse_url="postgresql://loader@127.0.0.1:1/dw",  # never connected to here
        warehouse_password=SecretRef(env="TEST_WAREHOUSE_PW"),
        aws_endpoint_url="http://127.0.0.1:1",
        bucket="unit-bucket",
        secrets={"salt": SecretRef(env="TEST_SALT")},
    )


def test_each_secret_is_resolved_once_per_run(resolutions: Counter[str]) -> None:
    res = resources_for(profile())
    assert not resolutions  # nothing is resolved before a task asks
    for _ in range(3):
        res.source()
        res.rds_writer()  # the same source password
        res.warehouse()
        assert res.salts({"salt"}) == {"salt": SALT.encode()}
    assert resolutions == {"source_password": 1, "warehouse_password": 1, "profile unit: secrets.salt": 1}


def test_adapters_are_built_once_and_shared_by_threads(resolutions: Counter[str]) -> None:
    res = resources_for(profile())
    got: list[Any] = []
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        got.append((res.source(), res.warehouse(), res.object_store(), res.key_store()))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(all(a is b for a, b in zip(g, got[0], strict=True)) for g in got)
    assert resolutions == {"source_password": 1, "warehouse_password": 1}


def test_pickles_without_clients_and_keeps_its_resolved_secrets(resolutions: Counter[str]) -> None:
    res = resources_for(profile())
    source, store = res.source(), res.object_store()  # an engine and a boto3 client: neither pickles
    res.salts({"salt"})
    copy = pickle.loads(pickle.dumps(res))
    assert isinstance(copy, Resources) and copy.profile == res.profile
    assert copy.source() is not source and copy.object_store() is not store  # rebuilt on this side…
    assert copy.salts({"salt"}) == {"salt": SALT.encode()}
    assert resolutions == {"source_password": 1, "profile unit: secrets.salt": 1}  # …without resolving again


def test_secret_values_stay_out_of_reprs(resolutions: Counter[str]) -> None:
    res = resources_for(profile())
    res.source()
    res.warehouse()
    res.salts({"salt"})
    shown = "\n".join([repr(res), str(res), repr(res.__getstate__())])
    assert "unit" in shown
    for value in (SOURCE_PW, WAREHOUSE_PW, SALT):
        assert value not in shown


def test_an_unset_secret_fails_each_time_it_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_SALT", raising=False)
    res = resources_for(profile())
    for _ in range(2):  # a failure is not cached: the next key asks again
        with pytest.raises(ConfigError, match="profile unit: secrets.salt: environment variable TEST_SALT is not set"):
            res.salts({"salt"})
    with pytest.raises(ConfigError, match="profile unit: secrets.other: not defined"):
        res.salts({"other"})


def test_the_env_default_is_read_once_and_absent_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYFLOW_TRENDS_PASSWORD", "first")
    res = resources_for(profile())
    assert res.secret(None, "trends_password", "KEYFLOW_TRENDS_PASSWORD") == SecretStr("first")
    monkeypatch.setenv("KEYFLOW_TRENDS_PASSWORD", "second")
    assert res.secret(None, "trends_password", "KEYFLOW_TRENDS_PASSWORD") == SecretStr("first")
    monkeypatch.delenv("KEYFLOW_BROKER_PASSWORD", raising=False)
    assert res.secret(None, "source.password", "KEYFLOW_BROKER_PASSWORD") is None
