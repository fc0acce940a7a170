"""The one-way import rule, held by reading the source: flows → tasks → tasks/io + tasks/transforms → config."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDKS = {"boto3", "botocore", "sqlalchemy", "psycopg2", "pymysql", "duckdb", "moto", "pika", "zstandard"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
            found.add(node.module)
    return found


def rel(path: Path) -> str:
    """A test id: the file's path in the repo."""
    return path.relative_to(ROOT).as_posix()


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("flows"), ids=rel)
def test_flows_import_no_sdk(path: Path) -> None:
    assert not imports(path) & SDKS


@pytest.mark.parametrize("path", files("tasks/transforms"), ids=rel)
def test_transforms_are_pure(path: Path) -> None:
    found = imports(path)
    assert not found & (SDKS | {"prefect", "os", "requests", "socket"})
    assert not {m for m in found if m.startswith("tasks.io") or m.startswith("flows")}


@pytest.mark.parametrize("path", files("config"), ids=rel)
def test_config_imports_nothing_above_it(path: Path) -> None:
    found = imports(path)
    assert not found & (SDKS | {"prefect", "tasks", "flows"})


@pytest.mark.parametrize("path", files("tasks/io"), ids=rel)
def test_adapters_do_not_import_prefect_or_flows(path: Path) -> None:
    found = imports(path)
    assert "flows" not in found
    assert "prefect" not in found or path.name == "secrets.py"  # a Prefect Secret block is an adapter's source


@pytest.mark.parametrize("path", [p for p in files("tasks") if "io" not in p.parts], ids=rel)
def test_only_adapters_import_sdks(path: Path) -> None:
    assert not imports(path) & SDKS


def imported_modules(path: Path) -> set[str]:
    """Full module names, counting ``from tasks import resources`` as ``tasks.resources``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("path", files("flows/cli"), ids=rel)
def test_the_cli_calls_tasks_and_flows_not_adapters(path: Path) -> None:
    adapters = {m for m in imported_modules(path) if m.split(".")[:2] in (["tasks", "io"], ["tasks", "resources"])}
    assert not adapters


def test_only_the_composition_root_resolves_secrets() -> None:
    """Tasks get secrets through their run's Resources (tasks/resources.py), which resolves each one once."""
    users = {
        p.relative_to(ROOT).as_posix() for d in ("flows", "tasks") for p in files(d) if "tasks.io.secrets" in imports(p)
    }
    assert users == {"tasks/resources.py"}


def test_database_connections_are_opened_in_one_module() -> None:
    """Engines and psycopg2 connections are made in tasks/io/databases.py, with its error mapping."""
    openers = ("psycopg2.connect(", "create_engine(")
    found = {
        p.relative_to(ROOT).as_posix()
        for d in ("flows", "tasks", "config")
        for p in files(d)
        if any(o in p.read_text() for o in openers)
    }
    assert found == {"tasks/io/databases.py"}


def loaded_after(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``modules`` (what a command pays for at start-up)."""
    code = f"import sys\nfor m in {list(modules)!r}: __import__(m)\nprint('\\n'.join(sys.modules))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return set(done.stdout.split())


# Loaded only by the function or adapter that needs it: a key-driven ETL run from PostgreSQL with no encrypt rule
# and a CSV stage uses none of them, and each costs start-up time and resident memory in every run (BENCHMARKS.md).
NOT_ON_THE_ETL_PATH = {
    "pandas": "the trend and usual-script paths only",
    "duckdb": "the DuckDB warehouse adapter",
    "polars": "not a dependency of the ETL",
    "dask": "the Dask task runner, when a profile asks for it",
    "distributed": "the Dask task runner, when a profile asks for it",
    "prefect_dask": "the Dask task runner, when a profile asks for it",
    "hypothesis": "tests only",
    "pytest": "tests only",
    "moto": "tests and the demo only",
    "pika": "the RabbitMQ event broker adapter",
    "pymysql": "a MySQL/MariaDB source, through SQLAlchemy's dialect when its URL asks for it",
    "cryptography": "an encrypt rule, keygen and decrypt (7 MB of OpenSSL bindings)",
    "pyarrow.parquet": "a Parquet stage, compaction and archives (8 MB)",
    "pyarrow.dataset": "not used by the ETL",
    "prefect.server": "the temporary local server, built only when no Prefect API is set",
    "uvicorn": "the temporary local server's subprocess",
}


def test_the_etl_command_imports_only_what_it_uses() -> None:
    """`keyflow etl run` imports the CLI, its etl group and the flow: none of the lazily loaded modules come along."""
    loaded = loaded_after("flows.cli", "flows.cli.etl", "flows.rds_to_redshift")
    assert "flows.rds_to_redshift" in loaded and "pyarrow" in loaded  # the probe imported what it should
    pulled = {m: why for m, why in NOT_ON_THE_ETL_PATH.items() if m in loaded}
    assert not pulled, f"imported at start-up, needed only by: {pulled}"


def test_the_command_line_loads_no_engine_before_a_command_needs_it() -> None:
    """`keyflow --help`, `validate` and a typo answer without loading Prefect, Arrow, SQLAlchemy or boto3."""
    loaded = loaded_after("flows.cli")
    heavy = {"prefect", "pyarrow", "sqlalchemy", "boto3", "botocore", "psycopg2", "numpy"} & loaded
    assert not heavy


def test_a_command_process_runs_arrow_without_pandas() -> None:
    """PyArrow would import pandas (33 MB) on its first pa.array(list); the command's process tells it there is none.

    Arrow, DuckDB and Prefect's run machinery go on without it; an explicit `import pandas` fails with one line.
    """
    code = """
import sys
from flows.cli import keep_pandas_out
keep_pandas_out()
keep_pandas_out()  # twice: one finder
import duckdb, pyarrow as pa, pyarrow.compute as pc
assert pa.array(["a", None]).null_count == 1
table = pa.table({"k": ["x", "x", "y"], "n": [1, 2, 3]})
assert pc.value_counts(table["k"]).to_pylist()[0] == {"values": "x", "counts": 2}
assert pa.schema([("a", pa.int64())]).empty_table().num_rows == 0
con = duckdb.connect()
con.register("t", table)
assert con.execute("SELECT sum(n) FROM t WHERE k = 'x'").fetchall() == [(3,)]
import prefect.cache_policies  # checks for pandas itself
try:
    import pandas
except ModuleNotFoundError as exc:
    print("refused:", exc)
print("finders:", sum(type(f).__name__ == "_WithoutPandas" for f in sys.meta_path))
print("loaded:", "pandas" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "refused: keyflow's commands run without pandas",
        "finders: 1",
        "loaded: False",
    ]
