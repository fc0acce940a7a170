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

import psycopg2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import moto_server, prefect_server, run_side_by_side, summarize
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
    for t in ("limit_target", "usual_target", "mlimit_target"):
        pg_exec(WH_DB, f"DROP TABLE IF EXISTS {t}", create_table_sql(t).replace(" PRIMARY KEY", ""))


def my_exec(sql: str, db: str = MY_DB) -> str:
    proc = subprocess.run(
        [*MYSQL.split(), "--batch", "--skip-column-names", db, "-e", sql], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"mysql failed: {proc.stderr.strip().splitlines()[-1]} (statement: {sql[:120]}…)")
    return proc.stdout


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


def write_config(folder: Path, endpoint: str, parallel_keys: int = 2) -> dict[str, Path]:
    paths = {}
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
                }
            )
        )
    for name, table, target in (
        ("bench_facts", "bench_src", "facts"),
        ("bench_big", "bench_big", "big_facts"),
        ("bench_my", "bench_src", "my_facts"),
    ):
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(
            yaml.safe_dump(
                {
                    "name": name,
                    "source": {"table": table, "key_column": "campaign_key", "batch_rows": 5000},
                    "rules": BENCH_RULES,
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
    object_store_for(prof).ensure_bucket()
    keys = key_store_for(prof)
    keys.ensure_table()
    for dataset, names in (("bench_facts", KEYS), ("bench_my", KEYS), ("bench_big", ("BIGKEY",))):
        for k in names:
            keys.put_key(CampaignKey(dataset, k, date(2017, 3, 1), date(2017, 3, 31)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the source tables")
    parser.add_argument("--skip", nargs="*", default=[], choices=["usual", "big", "mariadb"])
    parser.add_argument("--parallel-keys", type=int, default=2, help="keyflow's max_parallel_keys (default 2)")
    args = parser.parse_args()
    python = sys.executable
    bindir = Path(python).parent
    ensure_pg_data(args.rebuild)
    if "mariadb" not in args.skip:
        ensure_mysql_data(args.rebuild)
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
        limit = []
        for _ in range(args.runs):
            reset("limit_target")
            cmds = [
                f"{PSQL} -d {SRC_DB} -c \"COPY (SELECT * FROM bench_src WHERE campaign_key = '{k}') TO STDOUT\" | "
                f"{PSQL} -d {WH_DB} -c 'COPY limit_target FROM STDIN'"
                for k in KEYS
            ]
            limit.append(run_side_by_side(cmds)[:2])
        results["limit"] = summarize(limit)
        print(f"limit      {results['limit'][0]:7.2f} s  {results['limit'][1]:7.0f} MB", flush=True)

        # 2. keyflow: the flow, 3 keys active, against the running Prefect server
        runs, key_seconds = [], []
        for _ in range(args.runs):
            reset("keyflow.facts")
            wall, rss, out = run_side_by_side([keyflow("bench_facts", "profile_pg")], env=env)
            Path(tempfile.gettempdir(), "keyflow-bench-last-run.log").write_text(out[0])
            rows = json.loads(next(ln for ln in reversed(out[0].splitlines()) if ln.startswith("[")))
            assert sum(r["rows_loaded"] for r in rows) == 3 * ROWS_PER_KEY, rows
            runs.append((wall, rss))
            key_seconds.append(keys_span(out[0]))
            print("  per key (stage s, load s):", [(r["stage_seconds"], r["load_seconds"]) for r in rows], flush=True)
        results["keyflow"] = summarize(runs)
        results["keyflow_keys_span_s"] = sorted(key_seconds)[len(key_seconds) // 2]
        print(f"keyflow    {results['keyflow'][0]:7.2f} s  {results['keyflow'][1]:7.0f} MB", flush=True)
        startup, _, _ = run_side_by_side([[python, "-c", "import flows.rds_to_redshift"]], env=env)
        results["startup_s"] = startup

        # 3. the usual script: pandas read_sql → CSV → COPY, one process per key
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

        # 4. big key: 10x the rows of one key
        if "big" not in args.skip:
            big = []
            for _ in range(args.runs):
                reset("keyflow.big_facts")
                big.append(run_side_by_side([keyflow("bench_big", "profile_pg")], env=env)[:2])
            results["big"] = summarize(big)
            print(f"big key    {results['big'][0]:7.2f} s  {results['big'][1]:7.0f} MB", flush=True)

        # 5. MariaDB source: keyflow vs mysql --batch --quick piped into COPY
        if "mariadb" not in args.skip:
            mlimit, mkf = [], []
            for _ in range(args.runs):
                reset("mlimit_target")
                cmds = [
                    f'{MYSQL} --batch --quick --skip-column-names {MY_DB} -e "SELECT * FROM bench_src WHERE '
                    f"campaign_key = '{k}'\" | "
                    f"{PSQL} -d {WH_DB} -c \"COPY mlimit_target FROM STDIN WITH (NULL 'NULL')\""
                    for k in KEYS
                ]
                mlimit.append(run_side_by_side(cmds)[:2])
                reset("keyflow.my_facts")
                mkf.append(run_side_by_side([keyflow("bench_my", "profile_my")], env=env)[:2])
            results["mariadb_limit"] = summarize(mlimit)
            results["mariadb_keyflow"] = summarize(mkf)
            print(
                f"mariadb    limit {results['mariadb_limit'][0]:.2f} s, keyflow {results['mariadb_keyflow'][0]:.2f} s",
                flush=True,
            )

    results["parallel_keys"] = args.parallel_keys
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
    print(f"{'contender':<34}{'median s':>10}{'peak RSS MB':>13}")
    print(f"{'limit: COPY TO STDOUT | COPY FROM':<34}{limit_s:>10.2f}{limit_mb:>13.0f}")
    print(f"{'keyflow (flow, S3 staging, rules)':<34}{kf_s:>10.2f}{kf_mb:>13.0f}")
    if "usual" in r:
        print(f"{'usual: pandas read_sql → CSV → COPY':<34}{r['usual'][0]:>10.2f}{r['usual'][1]:>13.0f}")
    if "big" in r:
        print(f"{'keyflow, one key x10 rows':<34}{r['big'][0]:>10.2f}{r['big'][1]:>13.0f}")
    if "mariadb_keyflow" in r:
        print(
            f"{'MariaDB limit: mysql --quick | COPY':<34}{r['mariadb_limit'][0]:>10.2f}{r['mariadb_limit'][1]:>13.0f}"
        )
        print(f"{'keyflow, MariaDB source':<34}{r['mariadb_keyflow'][0]:>10.2f}{r['mariadb_keyflow'][1]:>13.0f}")
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
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
