"""Field-level encryption end to end, KMS envelope mode, and `keyflow audit` against the moto server."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
import zstandard
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers.config_files import write_yaml
from tests.helpers.etl import D1, EVIL, create_pg_source, put_keys, run, source_rows, write_dataset

runner = CliRunner()


def keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path / name), "--bits", "2048"])
    assert result.exit_code == 0, result.output
    return tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"


def encrypting_dataset(tmp_path: Path, names: dict[str, str]) -> Path:
    path = write_dataset(tmp_path, names)
    ds = yaml.safe_load(path.read_text())
    ds["rules"][1] = {"privacy": {"column": "phone", "action": "encrypt", "key": "phone_key"}}
    return write_yaml(path, ds)


def export_csv(pg: Any, names: dict[str, str], path: Path) -> list[dict[str, str]]:
    with pg.cursor() as cur:
        buf = io.StringIO()
        cur.copy_expert(
            f"COPY (SELECT id, campaign_key, phone FROM {names['wh_schema']}.facts ORDER BY id) "
            "TO STDOUT WITH (FORMAT csv, HEADER true)",
            buf,
        )
    path.write_text(buf.getvalue())
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


@pytest.mark.usefixtures("prefect_harness")
def test_encrypted_column_is_ciphertext_everywhere_and_decrypts_with_the_key(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any
) -> None:
    private, public = keypair(tmp_path, "phone")
    rows = source_rows(["K1", "K2", EVIL], per_key=20)
    create_pg_source(pg, names["src_table"], rows)
    try:
        profile = make_profile(keep_staged=True, encryption_keys={"phone_key": {"public_key_file": str(public)}})
        put_keys(profile)
        state, _ = run(encrypting_dataset(tmp_path, names), profile, D1)
        assert state.is_completed(), state.message

        phones = {r[8] for r in rows if r[8]}
        exported = export_csv(pg, names, tmp_path / "export.csv")
        assert exported and all(r["phone"] == "" or r["phone"].startswith("kf1:") for r in exported)
        assert not phones & {r["phone"] for r in exported}

        from config.loader import load_profile
        from tasks.resources import object_store_for

        store = object_store_for(load_profile(profile, environ={}))
        staged = b"".join(
            zstandard.ZstdDecompressor().stream_reader(io.BytesIO(store.get_bytes(k))).read()
            for k in store.list_keys("staging/")
            if ".csv.zst" in k
        )
        assert staged and not any(p.encode() in staged for p in phones)

        ok = runner.invoke(app, ["decrypt", str(tmp_path / "export.csv"), "-c", "phone", "-k", str(private), "--raw"])
        assert ok.exit_code == 0, ok.output
        decrypted = {int(r["id"]): r["phone"] or None for r in csv.DictReader(io.StringIO(ok.stdout))}
        assert decrypted == {r[0]: r[8] for r in rows if r[1] in {"K1", "K2", EVIL}}

        other, _ = keypair(tmp_path, "other")
        denied = runner.invoke(app, ["decrypt", str(tmp_path / "export.csv"), "-c", "phone", "-k", str(other)])
        assert denied.exit_code == 1 and "no private key for key id" in denied.output
        assert not phones & set(denied.stdout.split())
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


@pytest.mark.usefixtures("prefect_harness")
def test_kms_envelope_mode_round_trips(
    pg: Any, tmp_path: Path, names: dict[str, str], make_profile: Any, kms_key_id: str
) -> None:
    rows = source_rows(["K1"], per_key=10)
    create_pg_source(pg, names["src_table"], rows)
    try:
        profile = make_profile(encryption_keys={"phone_key": {"kms_key_id": kms_key_id}})
        put_keys(profile)
        state, _ = run(encrypting_dataset(tmp_path, names), profile, D1)
        assert state.is_completed(), state.message
        exported = export_csv(pg, names, tmp_path / "export.csv")
        assert all(r["phone"] == "" or r["phone"].startswith(f"kf1:kms={kms_key_id}:") for r in exported)
        ok = runner.invoke(app, ["decrypt", str(tmp_path / "export.csv"), "-c", "phone", "--kms", "-p", str(profile)])
        assert ok.exit_code == 0, ok.output
        # Without --raw the output is guarded for spreadsheets: "+336…" would run as a formula.
        want = [None if r[8] is None else "'" + r[8] for r in rows]
        assert [r["phone"] or None for r in csv.DictReader(io.StringIO(ok.stdout))] == want
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_encrypt_rule_needs_a_defined_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from config.errors import ConfigError
    from config.loader import load_profile
    from tasks.resources import data_keys_for

    path = write_yaml(
        tmp_path / "p.yaml",
        {
            "source_url": "sqlite:///x.db",
            "warehouse_url": "w.duckdb",
            "bucket": "bkt",
            "encryption_keys": {"k": {"public_key_file": "nope.pem"}},
        },
    )
    prof = load_profile(path, environ={})
    with pytest.raises(ConfigError, match="encryption_keys.k: public_key_file: no such file 'nope.pem'"):
        data_keys_for(prof, {"k"})
    with pytest.raises(ConfigError, match="encryption_keys.missing: not defined"):
        data_keys_for(prof, {"missing"})


def test_audit_passes_on_what_keyflow_creates_and_fails_on_what_it_should(
    tmp_path: Path, make_profile: Any, names: dict[str, str], aws_endpoint: str
) -> None:
    from config.loader import load_profile
    from tasks.io.aws import client
    from tasks.resources import object_store_for

    good = make_profile()
    clean = runner.invoke(app, ["audit", "-p", str(good)])
    assert clean.exit_code == 0, clean.output
    store = object_store_for(load_profile(good, environ={}))
    store.put_bytes(b"x", "staging/facts/run-1/K1/part-00000.csv.zst")  # written by keyflow: with SSE
    assert runner.invoke(app, ["audit", "-p", str(good)]).exit_code == 0
    stale = runner.invoke(app, ["audit", "-p", str(good), "--max-age-hours", "0"])
    assert stale.exit_code == 1 and "leftover staged file" in stale.output

    # A bucket with no default encryption, a key table without SSE and an object stored in the clear.
    s3 = client("s3", "us-east-1", aws_endpoint)
    ddb = client("dynamodb", "us-east-1", aws_endpoint)
    s3.create_bucket(Bucket=names["bucket"] + "-plain")
    s3.put_object(Bucket=names["bucket"] + "-plain", Key="staging/x.csv", Body=b"secret")
    ddb.create_table(
        TableName=names["keys_table"] + "_plain",
        AttributeDefinitions=[
            {"AttributeName": "dataset", "AttributeType": "S"},
            {"AttributeName": "key", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "dataset", "KeyType": "HASH"}, {"AttributeName": "key", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )
    bad_profile = write_yaml(
        tmp_path / "bad.yaml",
        {
            **yaml.safe_load(good.read_text()),
            "bucket": names["bucket"] + "-plain",
            "keys_table": names["keys_table"] + "_plain",
        },
    )
    bad = runner.invoke(app, ["audit", "-p", str(bad_profile)])
    assert bad.exit_code == 1
    for problem in ("no default encryption configured", "SSE off", "stored without server-side encryption"):
        assert problem in bad.output

    # SSE-S3 where the profile asks for a KMS key is a finding too.
    s3.create_bucket(Bucket=names["bucket"] + "-s3")
    s3.put_bucket_encryption(
        Bucket=names["bucket"] + "-s3",
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    weak = write_yaml(tmp_path / "weak.yaml", {**yaml.safe_load(good.read_text()), "bucket": names["bucket"] + "-s3"})
    result = runner.invoke(app, ["audit", "-p", str(weak)])
    assert result.exit_code == 1 and "AES256, but the profile names a KMS key" in result.output


SENTINELS = {
    "KEYFLOW_SOURCE_PASSWORD": "s3ntinel-source-pw",
    "KEYFLOW_WAREHOUSE_PASSWORD": "s3ntinel-warehouse-pw",
    "KEYFLOW_EMAIL_SALT": "s3ntinel-salt",
}


@pytest.mark.usefixtures("prefect_harness")
def test_sentinel_secrets_never_reach_logs_artifacts_errors_or_staged_files(
    pg: Any,
    tmp_path: Path,
    names: dict[str, str],
    make_profile: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import logging

    from prefect.client.orchestration import get_client

    for var, value in SENTINELS.items():
        monkeypatch.setenv(var, value)  # PostgreSQL here trusts loopback: the passwords travel but do not matter
    caplog.set_level(logging.DEBUG)
    create_pg_source(pg, names["src_table"], source_rows(["K1", "K2"], per_key=15))
    try:
        profile = make_profile(keep_staged=True)
        put_keys(profile)
        path = write_dataset(tmp_path, names)
        ds = yaml.safe_load(path.read_text())
        ds["rules"].append({"privacy": {"column": "title", "action": "hash", "salt_secret": "email_salt"}})
        write_yaml(path, ds)
        assert run(path, profile, D1)[0].is_completed()
        with pg.cursor() as cur:  # a failing key: its exception message travels to logs, state and artifact
            cur.execute(
                f"ALTER TABLE {names['wh_schema']}.facts ADD CONSTRAINT no_k2 CHECK (campaign_key <> 'K2') NOT VALID"
            )
        state, results = run(path, profile, D1)
        assert state.is_failed()

        with get_client(sync_client=True) as client:
            artifacts = json.dumps([a.data for a in client.read_artifacts()], default=str)
        from config.loader import load_profile
        from tasks.resources import object_store_for

        store = object_store_for(load_profile(profile, environ={}))
        staged = b"".join(store.get_bytes(k) for k in store.list_keys("staging/"))
        staged += b"".join(
            zstandard.ZstdDecompressor().stream_reader(io.BytesIO(store.get_bytes(k))).read()
            for k in store.list_keys("staging/")
            if ".csv.zst" in k
        )
        out, errs = capfd.readouterr()
        seen = "\n".join([caplog.text, out, errs, artifacts, str(state.message), json.dumps(results)])
        assert "K2" in seen and "previous rows kept" in seen  # the failure itself is reported…
        for value in SENTINELS.values():  # …but no secret anywhere
            assert value not in seen
            assert value.encode() not in staged
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {names['src_table']}")
            cur.execute(f"DROP SCHEMA IF EXISTS {names['wh_schema']} CASCADE")


def test_secrets_resolve_from_aws_secrets_manager(aws_endpoint: str) -> None:
    from config.errors import ConfigError
    from config.models import SecretRef
    from tasks.io.aws import client
    from tasks.io.secrets import resolve_secret

    sm = client("secretsmanager", "us-east-1", aws_endpoint)
    sm.create_secret(Name="keyflow/test-rds", SecretString=json.dumps({"password": "from-sm"}))
    ref = SecretRef(aws_secret="keyflow/test-rds", aws_secret_field="password")
    assert resolve_secret(ref, "source_password", "us-east-1", aws_endpoint).get_secret_value() == "from-sm"
    with pytest.raises(ConfigError, match="source_password: AWS secret 'keyflow/test-rds' has no JSON field 'pw'"):
        resolve_secret(
            SecretRef(aws_secret="keyflow/test-rds", aws_secret_field="pw"),
            "source_password",
            "us-east-1",
            aws_endpoint,
        )
    with pytest.raises(ConfigError, match="source_password: AWS secret 'nope': ResourceNotFoundException"):
        resolve_secret(SecretRef(aws_secret="nope"), "source_password", "us-east-1", aws_endpoint)
    with pytest.raises(ConfigError, match="environment variable KEYFLOW_NOT_SET is not set"):
        resolve_secret(SecretRef(env="KEYFLOW_NOT_SET"), "x", "us-east-1")


@pytest.mark.usefixtures("prefect_harness")
def test_secrets_resolve_from_a_prefect_secret_block() -> None:
    from prefect.blocks.system import Secret

    from config.models import SecretRef
    from tasks.io.secrets import resolve_secret

    Secret(value="from-block").save("keyflow-test-salt", overwrite=True)
    assert resolve_secret(SecretRef(prefect_secret="keyflow-test-salt"), "salt", "us-east-1").get_secret_value() == (
        "from-block"
    )
