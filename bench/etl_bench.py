"""ETL benchmark (`make bench`): the raw COPY limit, keyflow, and the usual pandas script, side by side.

Builds the reference workload itself (600 columns, 3 keys × 21,667 rows; a big key of 216,670 rows), in its own
databases, then runs each contender at least 3 times and reports median wall seconds and peak RSS of the measured
process trees. The moto server, the Prefect server and the databases are separate processes and are not counted.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import median_of, moto_server, prefect_server, run_measured, run_side_by_side, summarize
from bench.shape import KEYS, ROWS_PER_KEY, column_names, create_table_sql, pg_fill_sql

PG = "host=127.0.0.1 port=5432 user=postgres"
SRC_DB, WH_DB, MY_DB = "keyflow_bench_src", "keyflow_bench_wh", "keyflow_bench"
BIG_ROWS = ROWS_PER_KEY * 10
RUN_DATE = "2017-03-20"
PSQL = "psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres"
MYSQL = "mysql -h 127.0.0.1 -u root"


def pg_exec(db: str, *sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(f"{PG} dbname={db}")
    conn.autocommit = True
    rows: list[tuple[Any, ...]] = []
    with conn.cursor() as cur:
        for s in sql:
            cur.execute(s)
            if cur.description:
                rows = cur.fetchall()
    conn.close()
    return rows


def ensure_pg_data(rebuild: bool) -> None:
    existing = {r[0] for r in pg_exec("postgres", "SELECT datname FROM pg_database")}
    for db in (SRC_DB, WH_DB):
        if db not in existing:
            pg_exec("postgres", f"CREATE DATABASE {db}")
    for table, keys, rows in (("bench_src", KEYS, ROWS_PER_KEY), ("bench_big", ("BIGKEY",), BIG_ROWS)):
        have = pg_exec(SRC_DB, f"SELECT count(*) FROM pg_tables WHERE tablename = '{table}'")[0][0]
        if have and not rebuild and pg_exec(SRC_DB, f"SELECT count(*) FROM {table}")[0][0] == rows * len(keys):
            continue
        started = time.perf_counter()
        pg_exec(SRC_DB, f"DROP TABLE IF EXISTS {table}", create_table_sql(table))
        for i, key in enumerate(keys):
            pg_exec(SRC_DB, pg_fill_sql(table, key, 1 + i * rows, rows))
        pg_exec(SRC_DB, f"VACUUM ANALYZE {table}")
        print(f"built {table}: {rows * len(keys):,} rows in {time.perf_counter() - started:.1f} s", flush=True)
    # The benchmark's source has pgcrypto, so its salted hash can run there (the salt travels as data, never as SQL).
    pg_exec(SRC_DB, "CREATE EXTENSION IF NOT EXISTS pgcrypto")
    for t in ("limit_target", "usual_target", "mlimit_target", "floor_target"):
        pg_exec(WH_DB, f"DROP TABLE IF EXISTS {t}", create_table_sql(t).replace(" PRIMARY KEY", ""))


def my_exec(sql: str, db: str = MY_DB) -> str:
    proc = subprocess.run(
        [*MYSQL.split(), "--batch", "--skip-column-names", db, "-e", sql], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"mysql failed: {proc.stderr.strip().splitlines()[-1]} (statement: {sql[:120]}…)")
    return proc.stdout


def mariadb_cpu() -> float:
    """CPU seconds (user + system) the MariaDB server has used so far (0 when its process is not visible)."""
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("mariadbd", "mysqld"):
            times = proc.cpu_times()
            return float(times.user + times.system)
    return 0.0


def ensure_mysql_data(rebuild: bool) -> None:
    my_exec(f"CREATE DATABASE IF NOT EXISTS {MY_DB}", db="")
    have = my_exec(
        f"SELECT count(*) FROM information_schema.tables WHERE table_schema='{MY_DB}' AND table_name='bench_src'"
    )
    if (
        have.strip() == "1"
        and not rebuild
        and my_exec("SELECT count(*) FROM bench_src").strip() == str(3 * ROWS_PER_KEY)
    ):
        return
    started = time.perf_counter()
    my_exec("DROP TABLE IF EXISTS bench_src")
    # latin1: 198 VARCHAR(16) columns in utf8mb4 exceed InnoDB's row-size check; the values are ASCII anyway.
    my_exec(create_table_sql("bench_src", "mysql") + " CHARACTER SET latin1")
    for i, key in enumerate(KEYS):
        first = 1 + i * ROWS_PER_KEY
        exprs = [
            "seq",
            f"'{key}'",
            "DATE '2017-03-01'",
            "DATE '2017-03-31'",
            "CONCAT('SKU-', LPAD(MOD(seq, 10000), 5, '0'))",
        ]
        exprs += [f"IF(MOD(seq + {n}, 97) = 0, NULL, MOD(seq * {n + 7}, 1000003))" for n in range(199)]
        exprs += [f"MOD(seq * {n + 3}, 100003) / 7.0e0" for n in range(198)]
        exprs += [f"CONCAT('t{n}-', MOD(seq, {n + 11}))" for n in range(198)]
        my_exec(f"INSERT INTO bench_src SELECT {', '.join(exprs)} FROM seq_{first}_to_{first + ROWS_PER_KEY - 1}")
    print(f"built MariaDB bench_src in {time.perf_counter() - started:.1f} s", flush=True)


def ensure_mysql_decimal_data(rebuild: bool) -> None:
    """``bench_src_dec``: the same rows with the 198 doubles as DECIMAL(18,6), as money columns often are.

    connectorx does not read DECIMAL, so without passthrough this table takes the Python cursor path.
    """
    want = str(3 * ROWS_PER_KEY)
    have = my_exec(
        f"SELECT count(*) FROM information_schema.tables WHERE table_schema='{MY_DB}' AND table_name='bench_src_dec'"
    )
    if have.strip() == "1" and not rebuild and my_exec("SELECT count(*) FROM bench_src_dec").strip() == want:
        return
    started = time.perf_counter()
    my_exec("DROP TABLE IF EXISTS bench_src_dec")
    create = create_table_sql("bench_src_dec", "mysql").replace(" DOUBLE", " DECIMAL(18,6)")
    my_exec(create + " CHARACTER SET latin1")
    my_exec("INSERT INTO bench_src_dec SELECT * FROM bench_src")
    print(f"built MariaDB bench_src_dec in {time.perf_counter() - started:.1f} s", flush=True)


BENCH_RULES: list[dict[str, Any]] = [
    {"rename": {"sku": "product_sku"}},
    {"trim": ["t000", "t001"]},
    {"lower": ["t002"]},
    {"fill": {"t003": "unknown"}},
    {"filter": {"column": "id", "op": ">", "value": 0}},
    {"derive": {"column": "ratio", "expr": {"div": ["i001", "i002"]}, "type": "double"}},
    {"privacy": {"column": "t004", "action": "mask", "keep_last": 2}},
    {"privacy": {"column": "t005", "action": "hash", "salt_secret": "email_salt"}},
]


# The benchmark's rules MariaDB computes exactly (no trim, case mapping or salted hash there): with nothing left for
# the client, MariaDB writes each row as its staged CSV record and the bytes pass through (issue 15).
MARIADB_PUSHED_RULES: list[dict[str, Any]] = [
    r for r in BENCH_RULES if not ({"trim", "lower"} & r.keys() or r.get("privacy", {}).get("action") == "hash")
]

ENCRYPT_RULE: dict[str, Any] = {"privacy": {"column": "t006", "action": "encrypt", "key": "bench_key"}}

# The datasets keyflow runs: the benchmark's eight rules (every one computed by PostgreSQL with pgcrypto, bytes
# passed through), the same with every rule on the client (the earlier design, for a same-sitting comparison), and
# the same plus a column encrypted for a private-key holder (which only the client can do: rows are parsed).
VARIANTS: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "bench_facts": ("facts", BENCH_RULES, {}),
    "bench_client": ("client_facts", BENCH_RULES, {"pushdown": False}),
    "bench_encrypt": ("encrypt_facts", [*BENCH_RULES, ENCRYPT_RULE], {}),
}


def public_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def write_config(folder: Path, endpoint: str, parallel_keys: int = 2) -> dict[str, Path]:
    paths = {}
    pem = public_key_pem()
    for name, url in (
        ("pg", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{SRC_DB}"),
        ("my", f"mysql+pymysql://root@127.0.0.1:3306/{MY_DB}"),
    ):
        paths[f"profile_{name}"] = folder / f"profile_{name}.yaml"
        paths[f"profile_{name}"].write_text(
            yaml.safe_dump(
                {
                    "name": f"bench-{name}",
                    "source_url": url,
                    "warehouse_kind": "postgres",
                    "warehouse_url": f"postgresql://postgres@127.0.0.1:5432/{WH_DB}",
                    "aws_endpoint_url": endpoint,
                    "bucket": "keyflow-bench",
                    "prefix": "staging",
                    "kms_key_id": "alias/keyflow-bench",
                    "keys_table": "keyflow_bench_keys",
                    # On 2 cores a key's streaming work is CPU-bound: a third key at once adds its ~50 MB working
                    # set for the same wall time (BENCHMARKS.md has both). `--parallel-keys 3` to compare.
                    "max_parallel_keys": parallel_keys,
                    "source_max_connections": 3,
                    "secrets": {"email_salt": {"env": "KEYFLOW_EMAIL_SALT"}},
                    "encryption_keys": {"bench_key": {"public_key_pem": pem}},
                }
            )
        )
    datasets = [(name, "bench_src", target, rules, extra) for name, (target, rules, extra) in VARIANTS.items()]
    # The big key whole: split_rows 0, or the default (over split_bytes, 512 MiB) would split it.
    datasets += [("bench_big", "bench_big", "big_facts", BENCH_RULES, {"split_rows": 0})]
    # The same big key cut into as many primary-key ranges as the profile's source_max_connections (3).
    datasets += [("bench_big_split", "bench_big", "big_facts", BENCH_RULES, {"split_rows": -(-BIG_ROWS // 3)})]
    datasets += [("bench_my", "bench_src", "my_facts", BENCH_RULES, {})]
    datasets += [("bench_my_pass", "bench_src", "my_pass_facts", MARIADB_PUSHED_RULES, {})]
    datasets += [("bench_my_dec", "bench_src_dec", "my_dec_facts", MARIADB_PUSHED_RULES, {})]
    for name, table, target, rules, extra in datasets:
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(
            yaml.safe_dump(
                {
                    "name": name,
                    "source": {"table": table, "key_column": "campaign_key", "batch_rows": 5000, **extra},
                    "rules": rules,
                    "staging": {"compression": "zstd", "level": 1},
                    "target": {"schema": "keyflow", "table": target, "distkey": "campaign_key"},
                },
                sort_keys=False,
            )
        )
    return paths


_LOADED = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) .*Loaded key .*\((\d+\.\d+)s\)$")


def keys_span(log: str) -> float:
    """Seconds from the first key's extraction start to the last key's commit, from the flow's own log lines.

    Each "Loaded key … (N s)" line is written when the key commits, N seconds after its extraction began.
    keyflow's overhead is the run's wall time minus this span (keys may wait for a slot inside it).
    """
    starts, ends = [], []
    for line in log.splitlines():
        m = _LOADED.match(line.strip())
        if m:
            end = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
            starts.append(end - float(m[4]))
            ends.append(end)
    return max(ends) - min(starts) if ends else 0.0


def seed_keys(profile: Path) -> None:
    from datetime import date

    from config.loader import load_profile
    from tasks.resources import key_store_for, object_store_for
    from tasks.transforms.keys import CampaignKey

    prof = load_profile(profile, environ={})
    from tasks.io.aws import client

    # The profile's SSE-KMS key: the preflight checks that its alias exists.
    kms = client("kms", "us-east-1", prof.aws_endpoint_url)
    if not any(a["AliasName"] == "alias/keyflow-bench" for a in kms.list_aliases()["Aliases"]):
        key_id = kms.create_key(Description="keyflow bench")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/keyflow-bench", TargetKeyId=key_id)
    object_store_for(prof).ensure_bucket()
    keys = key_store_for(prof)
    keys.ensure_table()
    for dataset, names in [
        *((v, KEYS) for v in VARIANTS),
        ("bench_my", KEYS),
        ("bench_my_pass", KEYS),
        ("bench_my_dec", KEYS),
        ("bench_big", ("BIGKEY",)),
        ("bench_big_split", ("BIGKEY",)),
    ]:
        for k in names:
            keys.put_key(CampaignKey(dataset, k, date(2017, 3, 1), date(2017, 3, 31)))


def print_split() -> None:
    """Where each of the benchmark's rules runs, on this PostgreSQL (pgcrypto installed) and on MariaDB."""
    from config.models import Rule, SourceConfig
    from tasks.io.source import SqlSource
    from tasks.transforms.pushdown import plan_pushdown

    rules = [Rule.model_validate(r) for r in [*BENCH_RULES, ENCRYPT_RULE]]
    for label, url in (
        ("PostgreSQL", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{SRC_DB}"),
        ("MariaDB", f"mysql+pymysql://root@127.0.0.1:3306/{MY_DB}"),
    ):
        try:
            source = SqlSource(url)
            schema = source.source_schema(SourceConfig(table="bench_src", key_column="campaign_key"))
            assert schema is not None
            push = plan_pushdown(rules, schema, source.capabilities())
        except Exception as exc:  # MariaDB skipped and not built: say so, go on
            print(f"rule split on {label}: not available ({str(exc).splitlines()[0][:100]})")
            continue
        print(f"rule split on {label} (the last rule only in bench_encrypt):")
        for p in push.placements:
            print(f"  {p.describe()}")
        source.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the source tables")
    parser.add_argument("--skip", nargs="*", default=[], choices=["usual", "big", "mariadb", "variants"])
    parser.add_argument("--parallel-keys", type=int, default=2, help="keyflow's max_parallel_keys (default 2)")
    args = parser.parse_args()
    python = sys.executable
    bindir = Path(python).parent
    load_before = os.getloadavg()
    ensure_pg_data(args.rebuild)
    if "mariadb" not in args.skip:
        ensure_mysql_data(args.rebuild)
        ensure_mysql_decimal_data(args.rebuild)
    print_split()
    results: dict[str, Any] = {}
    tmp = Path(tempfile.gettempdir(), "keyflow-bench")  # kept after the run, to rerun one contender by hand
    tmp.mkdir(exist_ok=True)
    with moto_server(python) as endpoint, prefect_server(str(bindir / "prefect")) as api:
        os.environ.update(KEYFLOW_AWS_ENDPOINT_URL=endpoint)
        paths = write_config(tmp, endpoint, args.parallel_keys)
        seed_keys(paths["profile_pg"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFLOW_")} | {
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "KEYFLOW_EMAIL_SALT": "bench-salt",
        }

        def keyflow(dataset: str, profile: str) -> list[str]:
            return [
                str(bindir / "keyflow"),
                "etl",
                "run",
                "-d",
                str(paths[dataset]),
                "--date",
                RUN_DATE,
                "-p",
                str(paths[profile]),
                "--json",
            ]

        def reset(*tables: str) -> None:
            pg_exec(
                WH_DB, *[f"DROP TABLE IF EXISTS {t}" if t.startswith("keyflow.") else f"TRUNCATE {t}" for t in tables]
            )

        # 1. the limit: COPY (SELECT …) TO STDOUT | COPY … FROM STDIN, keys in parallel
        limit, limit_cpu = [], []
        for _ in range(args.runs):
            reset("limit_target")
            cmds = [
                f"{PSQL} -d {SRC_DB} -c \"COPY (SELECT * FROM bench_src WHERE campaign_key = '{k}') TO STDOUT\" | "
                f"{PSQL} -d {WH_DB} -c 'COPY limit_target FROM STDIN'"
                for k in KEYS
            ]
            wall, rss, _, cpu = run_measured(cmds)
            limit.append((wall, rss))
            limit_cpu.append(cpu)
        results["limit"] = summarize(limit)
        results["limit_cpu_s"] = median_of(limit_cpu)
        print(f"limit      {results['limit'][0]:7.2f} s  {results['limit'][1]:7.0f} MB", flush=True)

        # 2. the staged floor: COPY TO STDOUT → zstd 1 → S3 PUT → GET → COPY FROM STDIN, keys in parallel, no rules
        floor, floor_cpu = [], []
        for _ in range(args.runs):
            reset("floor_target")
            cmd = [
                python,
                str(Path(__file__).parent / "staged_floor.py"),
                f"{PG} dbname={SRC_DB}",
                f"{PG} dbname={WH_DB}",
                "bench_src",
                "floor_target",
                endpoint,
                "keyflow-bench",
                *KEYS,
            ]
            wall, rss, _, cpu = run_measured([cmd])
            floor.append((wall, rss))
            floor_cpu.append(cpu)
        results["floor"] = summarize(floor)
        results["floor_cpu_s"] = median_of(floor_cpu)
        print(f"floor      {results['floor'][0]:7.2f} s  {results['floor'][1]:7.0f} MB", flush=True)

        # 3. keyflow: the flow, 3 keys active, against the running Prefect server; the variants interleaved
        variants = ["bench_facts"] + ([] if "variants" in args.skip else ["bench_client", "bench_encrypt"])
        samples: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in variants}
        for _ in range(args.runs):
            for v in variants:
                reset(f"keyflow.{VARIANTS[v][0]}")
                wall, rss, out, cpu = run_measured([keyflow(v, "profile_pg")], env=env)
                Path(tempfile.gettempdir(), f"keyflow-bench-last-run-{v}.log").write_text(out[0])
                rows = json.loads(next(ln for ln in reversed(out[0].splitlines()) if ln.startswith("[")))
                assert sum(r["rows_loaded"] for r in rows) == 3 * ROWS_PER_KEY, rows
                samples[v].append((wall, rss, cpu, keys_span(out[0])))
                print(
                    f"  {v}: {wall:.2f} s, {cpu:.2f} CPU-s, per key (stage s, load s):",
                    [(r["stage_seconds"], r["load_seconds"]) for r in rows],
                    flush=True,
                )
        for v in variants:
            got = samples[v]
            results[v] = summarize([(w, r) for w, r, _, _ in got])
            results[f"{v}_cpu_s"] = median_of([c for _, _, c, _ in got])
            results[f"{v}_keys_span_s"] = median_of([k for _, _, _, k in got])
        results["keyflow"] = results["bench_facts"]
        results["keyflow_cpu_s"] = results["bench_facts_cpu_s"]
        results["keyflow_keys_span_s"] = results["bench_facts_keys_span_s"]
        print(f"keyflow    {results['keyflow'][0]:7.2f} s  {results['keyflow'][1]:7.0f} MB", flush=True)
        startup, _, _ = run_side_by_side([[python, "-c", "import flows.rds_to_redshift"]], env=env)
        results["startup_s"] = startup

        # 4. the usual script: pandas read_sql → CSV → COPY, one process per key
        if "usual" not in args.skip:
            usual = []
            for _ in range(args.runs):
                reset("usual_target")
                cmds = [
                    [
                        python,
                        str(Path(__file__).parent / "usual_etl.py"),
                        f"postgresql+psycopg2://postgres@127.0.0.1:5432/{SRC_DB}",
                        f"{PG} dbname={WH_DB}",
                        "bench_src",
                        "usual_target",
                        k,
                    ]
                    for k in KEYS
                ]
                usual.append(run_side_by_side(cmds)[:2])
            results["usual"] = summarize(usual)
            print(f"usual      {results['usual'][0]:7.2f} s  {results['usual'][1]:7.0f} MB", flush=True)

        # 5. big key: 10x the rows of one key, whole and split into 3 ranges, beside its own COPY pipe
        if "big" not in args.skip:
            big, big_pipe, big_split, big_cpu, big_split_cpu, big_pipe_cpu = [], [], [], [], [], []
            for _ in range(args.runs):
                for dataset, samples, cpus in (
                    ("bench_big", big, big_cpu),
                    ("bench_big_split", big_split, big_split_cpu),
                ):
                    reset("keyflow.big_facts")
                    wall, rss, _, cpu = run_measured([keyflow(dataset, "profile_pg")], env=env)
                    samples.append((wall, rss))
                    cpus.append(cpu)
                reset("limit_target")
                pipe = (
                    f"{PSQL} -d {SRC_DB} -c \"COPY (SELECT * FROM bench_big WHERE campaign_key = 'BIGKEY') TO STDOUT\""
                    f" | {PSQL} -d {WH_DB} -c 'COPY limit_target FROM STDIN'"
                )
                wall, rss, _, cpu = run_measured([pipe])
                big_pipe.append((wall, rss))
                big_pipe_cpu.append(cpu)
            results["big"] = summarize(big)
            results["big_split"] = summarize(big_split)
            results["big_pipe"] = summarize(big_pipe)
            results["big_cpu_s"] = median_of(big_cpu)
            results["big_split_cpu_s"] = median_of(big_split_cpu)
            results["big_pipe_cpu_s"] = median_of(big_pipe_cpu)
            print(f"big key    {results['big'][0]:7.2f} s  {results['big'][1]:7.0f} MB", flush=True)
            print(f"big split  {results['big_split'][0]:7.2f} s  {results['big_split'][1]:7.0f} MB", flush=True)

        # 6. MariaDB source: keyflow vs mysql --batch --quick piped into COPY
        if "mariadb" not in args.skip:
            # CPU seconds: the client processes' (getrusage), and MariaDB's own, which renders the passed-through
            # records (the server's CPU time over the run; other clients of the shared server count in it too).
            runs: dict[str, list[tuple[float, float]]] = {
                "mariadb_limit": [],
                "mariadb_keyflow": [],
                "mariadb_pass": [],
                "mariadb_dec": [],
            }
            cpus: dict[str, list[float]] = {k: [] for k in runs}
            server_cpus: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.runs):
                reset("mlimit_target")
                cmds = [
                    f'{MYSQL} --batch --quick --skip-column-names {MY_DB} -e "SELECT * FROM bench_src WHERE '
                    f"campaign_key = '{k}'\" | "
                    f"{PSQL} -d {WH_DB} -c \"COPY mlimit_target FROM STDIN WITH (NULL 'NULL')\""
                    for k in KEYS
                ]
                reset("keyflow.my_facts", "keyflow.my_pass_facts", "keyflow.my_dec_facts")
                for name, run_cmds, run_env in (
                    ("mariadb_limit", cmds, None),
                    ("mariadb_keyflow", [keyflow("bench_my", "profile_my")], env),
                    ("mariadb_pass", [keyflow("bench_my_pass", "profile_my")], env),
                    ("mariadb_dec", [keyflow("bench_my_dec", "profile_my")], env),
                ):
                    server_before = mariadb_cpu()
                    wall, rss, _, cpu = run_measured(run_cmds, env=run_env)
                    runs[name].append((wall, rss))
                    cpus[name].append(cpu)
                    server_cpus[name].append(mariadb_cpu() - server_before)
            for name in runs:
                results[name] = summarize(runs[name])
                results[f"{name}_cpu_s"] = median_of(cpus[name])
                results[f"{name}_server_cpu_s"] = median_of(server_cpus[name])
            print(
                f"mariadb    limit {results['mariadb_limit'][0]:.2f} s, keyflow {results['mariadb_keyflow'][0]:.2f} s, "
                f"5 pushed rules {results['mariadb_pass'][0]:.2f} s, on DECIMAL {results['mariadb_dec'][0]:.2f} s",
                flush=True,
            )

    results["parallel_keys"] = args.parallel_keys
    results["load_before"], results["load_after"] = load_before, os.getloadavg()
    report(results)


def report(r: dict[str, Any]) -> None:
    import prefect
    import pyarrow

    limit_s, limit_mb = r["limit"]
    kf_s, kf_mb = r["keyflow"]
    print()
    print(
        f"machine: {os.cpu_count()} cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"Python {platform.python_version()}, Prefect {prefect.__version__}, pyarrow {pyarrow.__version__}, "
        f"PostgreSQL {pg_exec('postgres', 'SHOW server_version')[0][0]}"
    )
    print(
        f"workload: {len(column_names())} columns, {len(KEYS)} keys x {ROWS_PER_KEY:,} rows; the limit and the usual "
        f"script run every key at once, keyflow {r['parallel_keys']} keys at once (max_parallel_keys)"
    )
    print(
        f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in r['load_before'])} before, "
        f"{', '.join(f'{x:.2f}' for x in r['load_after'])} after"
    )
    print(f"{'contender':<44}{'median s':>10}{'CPU s':>8}{'peak RSS MB':>13}")
    print(f"{'limit: COPY TO STDOUT | COPY FROM':<44}{limit_s:>10.2f}{r['limit_cpu_s']:>8.2f}{limit_mb:>13.0f}")
    fl_s, fl_mb = r["floor"]
    print(f"{'staged floor: COPY → zstd → S3 → COPY':<44}{fl_s:>10.2f}{r['floor_cpu_s']:>8.2f}{fl_mb:>13.0f}")
    for v, label in (
        ("bench_facts", "keyflow, 8 rules (all on the source)"),
        ("bench_client", "keyflow, 8 rules, pushdown off"),
        ("bench_encrypt", "keyflow, 8 rules + encrypt (client)"),
    ):
        if v in r:
            print(f"{label:<44}{r[v][0]:>10.2f}{r[f'{v}_cpu_s']:>8.2f}{r[v][1]:>13.0f}")
    if "usual" in r:
        print(f"{'usual: pandas read_sql → CSV → COPY':<44}{r['usual'][0]:>10.2f}{'':>8}{r['usual'][1]:>13.0f}")
    if "big" in r:
        print(f"{'keyflow, one key x10 rows':<44}{r['big'][0]:>10.2f}{r['big_cpu_s']:>8.2f}{r['big'][1]:>13.0f}")
        print(
            f"{'keyflow, the same key split in 3 ranges':<44}{r['big_split'][0]:>10.2f}{r['big_split_cpu_s']:>8.2f}"
            f"{r['big_split'][1]:>13.0f}"
        )
        print(f"{'its own COPY pipe':<44}{r['big_pipe'][0]:>10.2f}{r['big_pipe_cpu_s']:>8.2f}{r['big_pipe'][1]:>13.0f}")
    if "mariadb_keyflow" in r:
        for name, label in (
            ("mariadb_limit", "MariaDB limit: mysql --quick | COPY"),
            ("mariadb_keyflow", "keyflow, MariaDB source, 8 rules"),
            ("mariadb_pass", "keyflow, MariaDB, 5 pushed rules"),
            ("mariadb_dec", "the same, doubles as DECIMAL(18,6)"),
        ):
            print(
                f"{label:<44}{r[name][0]:>10.2f}{r[f'{name}_cpu_s']:>8.2f}{r[name][1]:>13.0f}"
                f"   (MariaDB server CPU s {r[f'{name}_server_cpu_s']:.2f})"
            )
    overhead = kf_s - r["keyflow_keys_span_s"]
    print(
        f"keyflow overhead (process start {r['startup_s']:.1f} s, Prefect runs, key lookup, manifests): "
        f"{overhead:.2f} s "
        f"of {kf_s:.2f} s; first key's start to last key's commit {r['keyflow_keys_span_s']:.2f} s"
    )
    print(
        f"ratio keyflow/limit {kf_s / limit_s:.2f}"
        + (f", usual/keyflow {r['usual'][0] / kf_s:.2f}" if "usual" in r else "")
    )
    line = {
        "limit_s": round(limit_s, 2),
        "keyflow_s": round(kf_s, 2),
        "usual_s": round(r["usual"][0], 2) if "usual" in r else None,
        "ratio_to_limit": round(kf_s / limit_s, 2),
        "speedup_vs_usual": round(r["usual"][0] / kf_s, 2) if "usual" in r else None,
        "peak_rss_mb": round(kf_mb),
        "big_key_rss_mb": round(r["big"][1]) if "big" in r else None,
        "overhead_s": round(overhead, 2),
        "parallel_keys": r["parallel_keys"],
        "mariadb_keyflow_s": round(r["mariadb_keyflow"][0], 2) if "mariadb_keyflow" in r else None,
        "mariadb_ratio_to_limit": round(r["mariadb_keyflow"][0] / r["mariadb_limit"][0], 2)
        if "mariadb_keyflow" in r
        else None,
        **(
            {
                f"{name}_{what}": round(r[f"{name}_{what}"], 2)
                for name in ("mariadb_limit", "mariadb_keyflow", "mariadb_pass", "mariadb_dec")
                for what in ("cpu_s", "server_cpu_s")
            }
            | {
                "mariadb_pass_s": round(r["mariadb_pass"][0], 2),
                "mariadb_pass_ratio_to_limit": round(r["mariadb_pass"][0] / r["mariadb_limit"][0], 2),
                "mariadb_dec_s": round(r["mariadb_dec"][0], 2),
                "mariadb_dec_rss_mb": round(r["mariadb_dec"][1]),
            }
            if "mariadb_keyflow" in r
            else {}
        ),
        "keyflow_cpu_s": round(r["keyflow_cpu_s"], 2),
        "limit_cpu_s": round(r["limit_cpu_s"], 2),
        "floor_s": round(r["floor"][0], 2),
        "floor_cpu_s": round(r["floor_cpu_s"], 2),
        "cpu_ratio_to_floor": round(r["keyflow_cpu_s"] / r["floor_cpu_s"], 2),
        "ratio_to_floor": round(kf_s / r["floor"][0], 2),
        "big_key_ratio_to_pipe": round(r["big"][0] / r["big_pipe"][0], 2) if "big" in r else None,
    }
    if "big" in r:
        line["big_key_cpu_s"] = round(r["big_cpu_s"], 2)
        line["big_split_s"] = round(r["big_split"][0], 2)
        line["big_split_cpu_s"] = round(r["big_split_cpu_s"], 2)
        line["big_split_rss_mb"] = round(r["big_split"][1])
        line["big_split_ratio_to_pipe"] = round(r["big_split"][0] / r["big_pipe"][0], 2)
    for v in ("bench_client", "bench_encrypt"):
        if v in r:
            line[f"{v}_s"] = round(r[v][0], 2)
            line[f"{v}_cpu_s"] = round(r[f"{v}_cpu_s"], 2)
            line[f"{v}_rss_mb"] = round(r[v][1])
    print(json.dumps(line))


if __name__ == "__main__":
    main()
