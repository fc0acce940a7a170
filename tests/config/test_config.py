"""Every invalid config case prints its exact message, naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from config.errors import ConfigError
from config.loader import load_dataset, load_profile, load_trends, validate_tree
from flows.cli import app

GOOD_DATASET = """\
name: facts
source: {table: facts, key_column: campaign_key}
target: {table: facts}
"""
GOOD_PROFILE = """\
source_url: postgresql://etl@db:5432/x
warehouse_url: postgresql://loader@wh:5432/y
warehouse_kind: postgres
bucket: my-bucket
"""


def dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").mkdir(exist_ok=True)
    (tmp_path / "datasets" / "facts.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_dataset(tmp_path / "datasets" / "facts.yaml")
    return err.value.problems


F = "datasets/facts.yaml"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            "- cast: {amount: intger}",
            f"{F}: rules[0].cast.amount: unknown type 'intger' (known: bigint, boolean, date, decimal, double, "
            "integer, real, smallint, text, timestamp, timestamptz, varchar)",
        ),
        (
            "- frobnicate: [x]",
            f"{F}: rules[0]: unknown rule 'frobnicate' (known: select, drop, rename, cast, trim, lower, upper, fill, "
            "filter, derive, dedupe, privacy)",
        ),
        (
            "- {trim: [a], lower: [b]}",
            f"{F}: rules[0]: a rule is a mapping with exactly one of: select, drop, rename, cast, trim, lower, upper, "
            "fill, filter, derive, dedupe, privacy; got ['lower', 'trim']",
        ),
        (
            "- filter: {column: x, op: '=~', value: 1}",
            f"{F}: rules[0].filter[0].op: unknown operator '=~' (known: ==, !=, <, <=, >, >=, eq, ne, lt, le, gt, ge, "
            "in, not_in, is_null, not_null)",
        ),
        (
            "- filter: {column: x, op: in, value: 1}",
            f"{F}: rules[0].filter[0]: operator 'in' needs 'values' (a list)",
        ),
        (
            "- derive: {column: y, expr: {pow: [a, 2]}}",
            f"{F}: rules[0].derive.expr: unknown operator 'pow' (known: col, lit, concat, add, sub, mul, div, "
            "coalesce, year, month, day, hour)",
        ),
        (
            "- privacy: {column: phone, action: hash}",
            f"{F}: rules[0].privacy: action 'hash' needs 'salt_secret' (the name of a secret in the profile)",
        ),
        (
            "- select: ['a\"; drop table x; --']",
            f"{F}: rules[0].select[0]: 'a\"; drop table x; --' is not a safe identifier (ASCII letters, digits and _, "
            "not starting with a digit, at most 63 characters)",
        ),
        (
            "- rename: {naïve: plain}",
            f"{F}: rules[0].rename.naïve: 'naïve' is not a safe identifier (ASCII letters, digits and _, "
            "not starting with a digit, at most 63 characters)",
        ),
    ],
)
def test_bad_rule_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rules: str, message: str) -> None:
    assert dataset_error(tmp_path, monkeypatch, GOOD_DATASET + "rules:\n  " + rules + "\n") == [message]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD_DATASET.replace("key_column", "keycolumn"),
            [
                f"{F}: source.key_column: required field is missing",
                f"{F}: source.keycolumn: unknown field (check the spelling)",
            ],
        ),
        (GOOD_DATASET + "extra: 1\n", f"{F}: extra: unknown field (check the spelling)"),
        (
            GOOD_DATASET.replace("table: facts,", "table: facts, query: 'select 1',"),
            f"{F}: source: give exactly one of 'table' or 'query'",
        ),
        (
            GOOD_DATASET.replace("table: facts,", "query: 'select * from t',"),
            f"{F}: source: 'query' must filter on the bound parameter :key",
        ),
        (
            GOOD_DATASET.replace("table: facts,", "query: 'select * from t where k = :key', split_rows: 10,"),
            f"{F}: source: split_rows, split_bytes and split_column apply to a 'table' source only",
        ),
        (
            GOOD_DATASET.replace("table: facts,", "query: 'select * from t where k = :key', split_bytes: 0,"),
            f"{F}: source: split_rows, split_bytes and split_column apply to a 'table' source only",
        ),
        (
            GOOD_DATASET.replace("table: facts,", "table: facts, split_rows: -1,"),
            f"{F}: source.split_rows: Input should be greater than or equal to 0",
        ),
        (
            GOOD_DATASET.replace("table: facts,", "table: facts, split_bytes: -1,"),
            f"{F}: source.split_bytes: Input should be greater than or equal to 0",
        ),
        (
            GOOD_DATASET.replace("target: {table: facts}", "target: {table: facts, load_mode: upsert}"),
            f"{F}: target.load_mode: Input should be 'replace_key', 'replace_table' or 'merge'",
        ),
        (
            "name: t\nsource:\n\ttable: x\n",
            f"{F}: line 3, column 1: while scanning for the next token found "
            "character '\\t' that cannot start any token",
        ),
        ("name: d\nname: e\n", f"{F}: line 2, column 1: duplicate key 'name'"),
        ("a: &x [1, 2]\nb: *x\n", f"{F}: line 2, column 4: aliases (*name) are not allowed in keyflow YAML"),
        ("- just a list\n", f"{F}: (top level): expected a mapping, got list"),
    ],
)
def test_bad_dataset_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str | list[str]
) -> None:
    assert dataset_error(tmp_path, monkeypatch, text) == (message if isinstance(message, list) else [message])


def test_anchor_bomb_is_refused_without_expanding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20)
    )
    (problem,) = dataset_error(tmp_path, monkeypatch, bomb)
    assert problem.endswith("aliases (*name) are not allowed in keyflow YAML")


def profile_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str]) -> list[str]:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "profiles" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profile(path, environ=env)
    return err.value.problems


def test_password_in_url_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD_PROFILE.replace("etl@db", "etl:hunter2@db")
    assert profile_problems(tmp_path, monkeypatch, text, {}) == [
        "profiles/p.yaml: source_url: a password in a URL would live in YAML; remove it and set source_password / "
        "warehouse_password (environment variable, Prefect Secret or AWS Secrets Manager)"
    ]


def test_redshift_needs_an_iam_role(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD_PROFILE.replace("warehouse_kind: postgres", "warehouse_kind: redshift")
    assert profile_problems(tmp_path, monkeypatch, text, {}) == [
        "profiles/p.yaml: (top level): warehouse_kind 'redshift' needs redshift_iam_role (COPY runs with an IAM role)"
    ]


def test_environment_overrides_every_scalar_field(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD_PROFILE)
    env = {
        "KEYFLOW_SOURCE_URL": "mysql+pymysql://reader@rds:3306/m",
        "KEYFLOW_WAREHOUSE_URL": "other/warehouse.duckdb",  # a DuckDB warehouse is a file, never a URL
        "KEYFLOW_WAREHOUSE_KIND": "duckdb",
        "KEYFLOW_AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "KEYFLOW_BUCKET": "other-bucket",
        "KEYFLOW_KEYS_TABLE": "campaigns",
        "KEYFLOW_MAX_PARALLEL_KEYS": "7",
        "KEYFLOW_KEEP_STAGED": "true",
    }
    prof = load_profile(path, environ=env)
    assert (prof.source_url, prof.warehouse_url, prof.warehouse_kind) == (
        "mysql+pymysql://reader@rds:3306/m",
        "other/warehouse.duckdb",
        "duckdb",
    )
    assert (prof.aws_endpoint_url, prof.bucket, prof.keys_table) == (
        "http://127.0.0.1:5000",
        "other-bucket",
        "campaigns",
    )
    assert prof.max_parallel_keys == 7 and prof.keep_staged is True


def test_bad_environment_override_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert profile_problems(tmp_path, monkeypatch, GOOD_PROFILE, {"KEYFLOW_MAX_PARALLEL_KEYS": "many"}) == [
        "profiles/p.yaml: max_parallel_keys: Input should be a valid integer, unable to parse string as an integer "
        "(from $KEYFLOW_MAX_PARALLEL_KEYS)"
    ]


def test_shipped_config_is_valid() -> None:
    checked, problems = validate_tree()
    assert problems == [] and checked >= 4


def test_validate_command_prints_one_line_per_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").mkdir()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "datasets" / "a.yaml").write_text(GOOD_DATASET + "rules:\n  - cast: {x: intger}\n  - drop: []\n")
    (tmp_path / "profiles" / "p.yaml").write_text(GOOD_PROFILE)
    result = CliRunner().invoke(app, ["validate", "--config-dir", "."])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("datasets/a.yaml: rules[0].cast.x: unknown type 'intger'")
    assert lines[1] == "datasets/a.yaml: rules[1].drop: List should have at least 1 item after validation, not 0"
    assert lines[2] == "2 problem(s) in 2 file(s)"
    assert "Traceback" not in result.output


def test_oversize_yaml_is_refused_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (problem,) = dataset_error(tmp_path, monkeypatch, "name: x\n# " + "x" * 1_000_001 + "\n")
    assert problem == f"{F}: file is 1000012 bytes; keyflow YAML is at most 1000000"


def test_undecodable_yaml_names_the_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "facts.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_dataset(tmp_path / "datasets" / "facts.yaml")
    assert err.value.problems == [f"{F}: not UTF-8 text (invalid continuation byte at byte 9)"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: t\nwindow_seconds: 70\n", "t.yaml: window_seconds: 70 does not divide an hour (3600 seconds)"),
        ("name: t\narchive_prefix: ../other\n", "t.yaml: archive_prefix: '../other' must be a relative S3 key"),
        ("name: t\nscoring: {half_life_minutes: 0}\n", "t.yaml: scoring.half_life_minutes: Input should be greater"),
        ("name: t\nscoring: {prior: guess}\n", "t.yaml: scoring.prior: Input should be 'fit' or 'fixed'"),
        ("name: t\ntop: 5\n", "t.yaml: top: unknown field (check the spelling)"),
    ],
)
def test_bad_trend_job_messages(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_trends(path)
    assert str(err.value).startswith(str(path)) and message.split(": ", 1)[1] in str(err.value)
    assert len(err.value.problems) == 1
