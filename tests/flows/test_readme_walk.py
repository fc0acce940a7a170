"""The README's "Run it against your own AWS", walked as a new user would: real `keyflow` processes, an AWS endpoint
that holds nothing but the user's KMS key, fresh PostgreSQL schemas, no Prefect server (the temporary one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3

from tasks.io.emulator import EmbeddedAWS
from tests.helpers.config_files import write_yaml
from tests.helpers.etl import create_pg_source, source_rows, write_dataset
from tests.helpers.services import PG_URL


def _keyflow(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    keyflow = str(Path(sys.executable).parent / "keyflow")
    return subprocess.run([keyflow, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_the_readme_first_run_on_an_empty_aws_endpoint(pg: Any, tmp_path: Path, names: dict[str, str]) -> None:
    create_pg_source(pg, names["src_table"], source_rows(["MCS2017", "VIP17"], per_key=30))
    config = tmp_path / "config"
    write_dataset(config, names)
    with EmbeddedAWS() as aws:
        # What the user has before keyflow: an account with a KMS key for the staging bucket, and nothing else.
        kms = boto3.client(
            "kms",
            region_name="eu-west-1",
            endpoint_url=aws.endpoint_url,
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        key_id = kms.create_key(Description="keyflow staging")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/keyflow-staging", TargetKeyId=key_id)
        # Step 1: a copy of config/profiles/aws.yaml, filled in with the user's own endpoints.
        write_yaml(
            config / "profiles" / "mine.yaml",
            {
                "name": "mine",
                "source_url": PG_URL.replace("+psycopg2", ""),
                "warehouse_kind": "postgres",
                "warehouse_url": PG_URL.replace("+psycopg2", ""),
                "aws_region": "eu-west-1",
                "aws_endpoint_url": aws.endpoint_url,
                "bucket": names["bucket"],
                "prefix": "keyflow",
                "kms_key_id": "alias/keyflow-staging",
                "keys_table": names["keys_table"],
                "max_parallel_keys": 2,
                "source_max_connections": 2,
                "secrets": {"email_salt": {"env": "KEYFLOW_EMAIL_SALT"}},
            },
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYFLOW_", "PREFECT_"))}
        env |= {
            "KEYFLOW_CONFIG_DIR": str(config),
            "KEYFLOW_EMAIL_SALT": "walk-salt",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "COLUMNS": "80",
        }
        steps = [
            ("setup", "-p", "mine"),
            ("check", "-p", "mine", "-d", "facts"),
            (
                "keys",
                "put",
                "-d",
                "facts",
                "-k",
                "MCS2017",
                "--start",
                "2017-03-01",
                "--end",
                "2017-03-31",
                "-p",
                "mine",
            ),
            ("keys", "put", "-d", "facts", "-k", "VIP17", "--start", "2017-03-15", "--end", "2017-04-15", "-p", "mine"),
            ("keys", "list", "-d", "facts", "--date", "2017-03-20", "-p", "mine"),
            ("etl", "run", "-d", "facts", "--date", "2017-03-20", "-p", "mine"),
            ("audit", "-p", "mine"),
        ]
        seen = {}
        for step in steps:
            proc = _keyflow(env, tmp_path, *step)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"keyflow {' '.join(step)} exited {proc.returncode}:\n{output}"
            assert "Traceback" not in output and "| ERROR" not in output, f"keyflow {' '.join(step)}:\n{output}"
            seen[step[0] + (" " + step[1] if step[0] in ("keys", "etl") else "")] = proc.stdout
    assert "2 key(s) loaded" in seen["etl run"]
    assert "MCS2017" in seen["keys list"] and "VIP17" in seen["keys list"]
    with pg.cursor() as cur:
        cur.execute(f"SELECT campaign_key, count(*) FROM {names['wh_schema']}.facts GROUP BY 1 ORDER BY 1")
        assert cur.fetchall() == [("MCS2017", 30), ("VIP17", 30)]
        cur.execute(f"DROP SCHEMA {names['wh_schema']} CASCADE")
        cur.execute(f"DROP TABLE {names['src_table']}")
