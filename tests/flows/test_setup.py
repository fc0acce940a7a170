"""`keyflow setup` on the moto server: creates what a profile and its jobs name, once; a dry run creates nothing;
what it creates reads back as asked and passes `keyflow audit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers.config_files import write_yaml

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def setup_config(
    tmp_path: Path, names: dict[str, str], aws_endpoint: str, kms_key_id: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A config dir with one events and one trends job (fresh table names) and a profile naming fresh resources;
    nothing created yet."""
    root = tmp_path / "config"
    events = yaml.safe_load((ROOT / "config" / "events" / "activity.yaml").read_text())
    events["reference"]["table"] = names["keys_table"] + "_articles"
    trends = yaml.safe_load((ROOT / "config" / "trends" / "trending.yaml").read_text())
    trends["serving_table"] = names["keys_table"] + "_trending"
    write_yaml(root / "events" / "activity.yaml", events)
    write_yaml(root / "trends" / "trending.yaml", trends)
    profile = write_yaml(
        root / "profiles" / "aws.yaml",
        {
            "name": "aws",
            "source_url": "postgresql://etl@127.0.0.1:5432/test",
            "warehouse_kind": "postgres",
            "warehouse_url": "postgresql://etl@127.0.0.1:5432/test",
            "aws_region": "eu-west-1",
            "aws_endpoint_url": aws_endpoint,
            "bucket": names["bucket"],
            "prefix": "keyflow",
            "kms_key_id": kms_key_id,
            "keys_table": names["keys_table"],
        },
    )
    monkeypatch.setenv("KEYFLOW_CONFIG_DIR", str(root))
    monkeypatch.setenv("COLUMNS", "250")
    return {
        "profile": str(profile),
        "bucket": names["bucket"],
        "tables": [names["keys_table"], events["reference"]["table"], trends["serving_table"]],
        "kms": kms_key_id,
    }


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_setup_creates_everything_once_and_a_dry_run_creates_nothing(
    setup_config: dict[str, Any], aws_endpoint: str
) -> None:
    from tasks.io.aws import client

    s3 = client("s3", "eu-west-1", aws_endpoint)
    ddb = client("dynamodb", "eu-west-1", aws_endpoint)
    bucket, kms = setup_config["bucket"], setup_config["kms"]
    keys, articles, trending = setup_config["tables"]

    dry = runner.invoke(app, ["setup", "-p", setup_config["profile"], "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert lines(dry.output) == [
        f"would create bucket s3://{bucket}: region eu-west-1",
        f"would create default encryption of s3://{bucket}: SSE-KMS with {kms}",
        f"would create public access block of s3://{bucket}: all public access blocked",
        f"would create lifecycle rule keyflow-staged-keyflow of s3://{bucket}: objects under keyflow/ expire after "
        "7 days, incomplete uploads are aborted after 1 day",
        f"would create key table {keys}: SSE-KMS ({kms})",
        f"would create article table {articles}: SSE-KMS ({kms}), events job activity",
        f"would create trend serving table {trending}: SSE-KMS ({kms}), TTL on expires_at, trends job trending",
    ]
    assert bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert not set(setup_config["tables"]) & set(ddb.list_tables()["TableNames"])

    first = runner.invoke(app, ["setup", "-p", setup_config["profile"]])
    assert first.exit_code == 0, first.output
    assert [line.replace("would create", "created     ") for line in lines(dry.output)] == lines(first.output)

    again = runner.invoke(app, ["setup", "-p", setup_config["profile"]])
    assert again.exit_code == 0, again.output
    assert lines(again.output) == [
        f"exists       bucket s3://{bucket}",
        f"exists       default encryption of s3://{bucket}",
        f"exists       public access block of s3://{bucket}",
        f"exists       lifecycle rule keyflow-staged-keyflow of s3://{bucket}",
        f"exists       key table {keys}",
        f"exists       article table {articles}",
        f"exists       trend serving table {trending}",
    ]

    # What was created reads back as asked.
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms}
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    [lifecycle] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle["Filter"] == {"Prefix": "keyflow/"} and lifecycle["Status"] == "Enabled"
    assert lifecycle["Expiration"]["Days"] == 7
    assert lifecycle["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    for table in setup_config["tables"]:
        assert ddb.describe_table(TableName=table)["Table"]["SSEDescription"]["Status"] == "ENABLED"
    ttl = ddb.describe_time_to_live(TableName=trending)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}

    audit = runner.invoke(app, ["audit", "-p", setup_config["profile"]])
    assert audit.exit_code == 0, audit.output


def test_setup_keeps_what_the_bucket_had_and_names_an_encryption_that_audit_would_refuse(
    setup_config: dict[str, Any], aws_endpoint: str
) -> None:
    """An existing bucket: its own lifecycle rules stay beside keyflow's; SSE-S3 where the profile names a KMS key
    is not silently replaced but reported (exit 1)."""
    from tasks.io.aws import client

    s3 = client("s3", "eu-west-1", aws_endpoint)
    bucket = setup_config["bucket"]
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    theirs = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [theirs]})

    result = runner.invoke(app, ["setup", "-p", setup_config["profile"], "-j", "activity"])
    assert result.exit_code == 1, result.output
    assert (
        f"differs      default encryption of s3://{bucket}: AES256, but the profile names KMS key "
        f"{setup_config['kms']} (`keyflow audit` will fail): change the bucket's default encryption or the profile"
    ) in lines(result.output)
    assert f"exists       bucket s3://{bucket}" in result.output
    assert "article table" in result.output and "trend serving table" not in result.output  # -j picks the job
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [r["ID"] for r in rules] == ["logs", "keyflow-staged-keyflow"]
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert encryption["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_setup_refuses_a_job_it_does_not_know(setup_config: dict[str, Any]) -> None:
    result = runner.invoke(app, ["setup", "-p", setup_config["profile"], "-j", "nosuch"])
    assert result.exit_code == 2
    assert lines(result.output)[0].startswith("error: -j nosuch: not an events or trends job (looked in ")
    assert "Traceback" not in result.output
