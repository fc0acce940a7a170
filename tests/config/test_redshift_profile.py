"""The profile's ``redshift:`` block: each wrong combination is one line naming the field, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.loader import load_profile

BASE = """\
source_url: postgresql://etl@db:5432/x
warehouse_kind: redshift
redshift_iam_role: arn:aws:iam::123456789012:role/copy
bucket: my-bucket
"""


def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "profiles" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(BASE + text)
    with pytest.raises(ConfigError) as err:
        load_profile(path, environ={})
    return err.value.problems


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "p.yaml"
    path.write_text(BASE + text)
    return load_profile(path, environ={})


def test_serverless_data_api_needs_no_url_and_no_password(tmp_path: Path) -> None:
    profile = load(tmp_path, "redshift: {mode: data_api, workgroup: analytics, database: dev}\n")
    assert profile.redshift.workgroup == "analytics" and profile.warehouse_url == ""  # type: ignore[attr-defined]
    load(tmp_path, "redshift: {mode: data_api, cluster_id: prod-1, database: dev, db_user: etl_loader}\n")
    load(tmp_path, "warehouse_url: postgresql://x@h:5439/dev\nredshift: {iam_auth: true, workgroup: analytics}\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "redshift: {mode: data_api, database: dev}\n",
            "redshift: mode data_api needs cluster_id (provisioned) or workgroup (Serverless)",
        ),
        (
            "redshift: {mode: data_api, workgroup: analytics}\n",
            "redshift: mode data_api needs database",
        ),
        (
            "redshift: {mode: data_api, cluster_id: c1, workgroup: analytics, database: dev}\n",
            "redshift: give cluster_id (provisioned) or workgroup (Serverless), not both",
        ),
        (
            "redshift: {mode: data_api, cluster_id: c1, database: dev}\n",
            "redshift: mode data_api on a cluster needs exactly one of secret_arn or db_user",
        ),
        (
            "redshift: {mode: data_api, workgroup: analytics, database: dev, db_user: u}\n",
            "redshift: db_user is for a provisioned cluster; a Serverless workgroup uses secret_arn or the caller's "
            "IAM identity",
        ),
        (
            "warehouse_url: postgresql://x@h:5439/dev\nredshift: {iam_auth: true, cluster_id: c1}\n",
            "redshift: iam_auth on a cluster needs db_user (GetClusterCredentials)",
        ),
        (
            "warehouse_url: postgresql://x@h:5439/dev\nredshift: {iam_auth: true}\n",
            "redshift: iam_auth needs cluster_id and db_user (provisioned) or workgroup (Serverless)",
        ),
        (
            "warehouse_url: postgresql://x@h:5439/dev\nredshift: {cluster_id: c1}\n",
            "redshift: cluster_id, workgroup and db_user are used by mode data_api or iam_auth: set one",
        ),
        (
            "redshift: {mode: direct}\n",
            "(top level): warehouse_kind 'redshift' needs warehouse_url",
        ),
        (
            "warehouse_url: postgresql://x@h:5439/dev\nwarehouse_password: {env: PW}\n"
            "redshift: {iam_auth: true, workgroup: analytics}\n",
            "(top level): warehouse_password is not used with redshift iam_auth; remove it",
        ),
        (
            "redshift: {mode: data_api, workgroup: analytics, database: dev, poll_max_seconds: 0}\n",
            "redshift.poll_max_seconds: Input should be greater than or equal to 0.05",
        ),
        (
            "redshift: {mode: data_api, workgroup: Analytics_1, database: dev}\n",
            "redshift.workgroup: String should match pattern '^[a-z0-9-]{3,63}$'",
        ),
    ],
)
def test_wrong_combinations_are_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    assert problems(tmp_path, monkeypatch, text) == [f"profiles/p.yaml: {message}"]


def test_merge_needs_a_primary_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from config.loader import load_dataset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").mkdir()
    path = tmp_path / "datasets" / "facts.yaml"
    path.write_text("name: facts\nsource: {table: t, key_column: k}\ntarget: {table: f, load_mode: merge}\n")
    with pytest.raises(ConfigError) as err:
        load_dataset(path)
    assert err.value.problems == [
        "datasets/facts.yaml: target: load_mode merge needs primary_key (the columns that identify a row)"
    ]
