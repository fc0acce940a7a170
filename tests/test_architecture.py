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


def test_a_command_process_runs_arrow_without_pandas_and_the_etls_without_numpy() -> None:
    """PyArrow would import pandas (33 MB) on its first pa.array(list), and numpy (20 MB) with itself; they are refused.

    Everything an ETL run does with Arrow (compute, CSV, Parquet), DuckDB and Prefect's cache policies goes on
    without either; an explicit import fails with one line saying why.
    """
    code = """
import io, sys
from flows.cli import keep_pandas_out
from flows.cli.keep_out import keep_out_what_the_command_does_not_use
keep_pandas_out()
print("refused:", keep_out_what_the_command_does_not_use(["--quiet", "etl", "run", "-d", "x"]))  # twice: one each
import duckdb, pyarrow as pa, pyarrow.compute as pc, pyarrow.csv as csv, pyarrow.parquet as pq
assert pa.array(["a", None]).null_count == 1
table = pa.table({"k": ["x", "x", "y"], "n": [1, 2, 3], "f": [0.5, None, 2.0]})
assert pc.value_counts(table["k"]).to_pylist()[0] == {"values": "x", "counts": 2}
assert pc.sum(pc.divide(table["n"], pc.cast(table["n"], pa.float64()))).as_py() == 3.0
assert pa.schema([("a", pa.int64())]).empty_table().num_rows == 0
text = io.BytesIO()
csv.write_csv(table, text)
assert csv.read_csv(io.BytesIO(text.getvalue())).equals(table)
parquet = io.BytesIO()
pq.write_table(table, parquet, compression="zstd")
assert pq.read_table(io.BytesIO(parquet.getvalue())).equals(table)
con = duckdb.connect()
con.register("t", table)
assert con.execute("SELECT sum(n) FROM t WHERE k = 'x'").fetchall() == [(3,)]
assert con.execute("SELECT k, f FROM t ORDER BY n").fetchall()[1] == ("x", None)
import prefect.cache_policies  # checks for pandas itself
for name in ("pandas", "numpy"):
    try:
        __import__(name)
    except ModuleNotFoundError as exc:
        print("refused:", exc)
print("finders:", sum(type(f).__name__ == "_Without" for f in sys.meta_path))
print("loaded:", "pandas" in sys.modules, "numpy" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "refused: ['pandas', 'numpy']",
        "refused: keyflow's commands run without pandas",
        "refused: keyflow's ETL runs without numpy",
        "finders: 2",
        "loaded: False False",
    ]


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["etl", "run", "-d", "no-such-dataset"], ["numpy", "pandas"]),
        (
            ["--quiet", "etl", "backfill", "-d", "no-such-dataset", "--from", "2017-03-01", "--to", "2017-03-02"],
            ["numpy", "pandas"],
        ),
        (["trends", "run", "-j", "no-such-job"], ["pandas"]),  # the events and trends commands compute with numpy
        (["events", "drain", "-j", "no-such-job"], ["pandas"]),
    ],
)
def test_the_keyflow_command_refuses_what_its_command_never_uses(argv: list[str], refused: list[str]) -> None:
    """`keyflow`'s entry point refuses pandas for every command and numpy for the ETL's only (checked as it exits)."""
    code = f"""
import atexit, sys
sys.argv = ["keyflow", *{argv!r}]
atexit.register(lambda: print("refused:", sorted(f.name for f in sys.meta_path if type(f).__name__ == "_Without")))
from flows.cli import main
main()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KEYFLOW_"))} | {
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": "http://127.0.0.1:9/api",  # never reached: the config check fails first
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 2, done.stderr  # a config error: no such dataset or job
    assert done.stdout.splitlines()[-1] == f"refused: {refused}"
