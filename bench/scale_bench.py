"""Fan-out benchmark (`make bench-scale`): thousands of small keys in one run, and a year of backfill.

Builds a narrow table in its own databases (``keyflow_scale_src`` → ``keyflow_scale_wh``), starts its own moto and
Prefect servers (a running local server, as production has), then measures:

- 1,000 and 10,000 active keys × 20 rows in one ``keyflow etl run``: wall seconds, ms per key, task runs created
  (counted through the Prefect API), peak RSS of keyflow's process tree; beside the limit, the same rows moved by
  one ``COPY (SELECT …) TO STDOUT | COPY … FROM STDIN``; and what listing the keys from DynamoDB (moto) costs alone;
- ``keyflow etl backfill`` over 365 days with 100 keys active each day (keys active ten days, ten new ones a day):
  wall seconds, task runs, and the share of wall time outside extraction and loading (from the units' own
  "Loaded … (N s)" log lines: the union of their extract-to-commit spans is the busy time).

Ends with one JSON line. Figures are printed, never asserted; no ERROR line or traceback may appear in keyflow's
output (counted and printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import moto_server, prefect_server, run_side_by_side

PG = "host=127.0.0.1 port=5432 user=postgres"
SRC_DB, WH_DB = "keyflow_scale_src", "keyflow_scale_wh"
PSQL = "psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres"
RUN_DATE = date(2017, 3, 20)
ROWS_PER_KEY = 20
DAYS, KEYS_PER_DAY, KEY_DAYS = 365, 100, 10  # backfill: each key active KEY_DAYS days, KEYS_PER_DAY active a day
FIRST_DAY = date(2016, 1, 1)


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


def scale_keys(n: int) -> list[str]:
    return [f"K{i:05d}" for i in range(n)]


def day_keys() -> list[tuple[str, date, date]]:
    """The backfill's keys: ``KEYS_PER_DAY / KEY_DAYS`` start each day, each active ``KEY_DAYS`` days."""
    per_start = KEYS_PER_DAY // KEY_DAYS
    out = []
    for d in range(-(KEY_DAYS - 1), DAYS):
        start = FIRST_DAY + timedelta(days=d)
        out += [(f"D{d + KEY_DAYS:04d}-{j}", start, start + timedelta(days=KEY_DAYS - 1)) for j in range(per_start)]
    return out


NARROW = "(id bigint primary key, k text not null, d date not null, n int not null, v text)"


def ensure_data(keys: int, rebuild: bool) -> None:
    """``scale_src``: ``keys`` keys × 20 rows within March 2017; ``days_src``: the backfill's keys × 20 rows."""
    existing = {r[0] for r in pg_exec("postgres", "SELECT datname FROM pg_database")}
    for db in (SRC_DB, WH_DB):
        if db not in existing:
            pg_exec("postgres", f"CREATE DATABASE {db}")
    want = {"scale_src": keys * ROWS_PER_KEY, "days_src": len(day_keys()) * ROWS_PER_KEY}
    for table, rows in want.items():
        have = pg_exec(SRC_DB, f"SELECT count(*) FROM pg_tables WHERE tablename = '{table}'")[0][0]
        if have and not rebuild and pg_exec(SRC_DB, f"SELECT count(*) FROM {table}")[0][0] == rows:
            continue
        started = time.perf_counter()
        pg_exec(SRC_DB, f"DROP TABLE IF EXISTS {table}", f"CREATE TABLE {table} {NARROW}")
        if table == "scale_src":
            pg_exec(
                SRC_DB,
                f"INSERT INTO {table} SELECT g, 'K' || lpad((g / {ROWS_PER_KEY})::text, 5, '0'), "
                f"DATE '2017-03-01' + (g % 28), g % 1000, md5(g::text) "
                f"FROM generate_series(0, {rows - 1}) AS g",
            )
        else:
            conn = psycopg2.connect(f"{PG} dbname={SRC_DB}")
            with conn, conn.cursor() as cur:
                from psycopg2.extras import execute_values

                values = [
                    (i * ROWS_PER_KEY + j, k, s + timedelta(days=j % KEY_DAYS), j, f"{k}/{j}")
                    for i, (k, s, _) in enumerate(day_keys())
                    for j in range(ROWS_PER_KEY)
                ]
                execute_values(cur, f"INSERT INTO {table} VALUES %s", values, page_size=10_000)
            conn.close()
        pg_exec(SRC_DB, f"CREATE INDEX ON {table} (k, d)", f"VACUUM ANALYZE {table}")
        print(f"built {table}: {rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)


def write_config(folder: Path, endpoint: str, parallel_keys: int) -> dict[str, Path]:
    paths = {"profile": folder / "profile.yaml"}
    paths["profile"].write_text(
        yaml.safe_dump(
            {
                "name": "bench-scale",
                "source_url": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{SRC_DB}",
                "warehouse_kind": "postgres",
                "warehouse_url": f"postgresql://postgres@127.0.0.1:5432/{WH_DB}",
                "aws_endpoint_url": endpoint,
                "bucket": "keyflow-scale",
                "prefix": "staging",
                "keys_table": "keyflow_scale_keys",
                "max_parallel_keys": parallel_keys,
                "source_max_connections": 3,
            }
        )
    )
    for name, table in (("scale_1k", "scale_src"), ("scale_10k", "scale_src"), ("scale_days", "days_src")):
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(
            yaml.safe_dump(
                {
                    "name": name,
                    "source": {"table": table, "key_column": "k", "date_column": "d", "batch_rows": 20_000},
                    "rules": [{"filter": {"column": "n", "op": ">=", "value": 0}}],
                    "staging": {"compression": "zstd", "level": 1},
                    "target": {"schema": "keyflow", "table": name},
                },
                sort_keys=False,
            )
        )
    return paths


def seed_keys(profile: Path, sizes: list[int]) -> None:
    """Every dataset's keys, written with BatchWriteItem (25 an item batch)."""
    from config.loader import load_profile
    from tasks.io.aws import client
    from tasks.resources import key_store_for, object_store_for

    prof = load_profile(profile, environ={})
    object_store_for(prof).ensure_bucket()
    key_store_for(prof).ensure_table()
    ddb = client("dynamodb", prof.aws_region, prof.aws_endpoint_url)
    wanted: list[tuple[str, str, date, date]] = [
        (f"scale_{'1k' if n == 1000 else '10k'}", k, date(2017, 3, 1), date(2017, 3, 31))
        for n in sizes
        for k in scale_keys(n)
    ]
    wanted += [("scale_days", k, s, e) for k, s, e in day_keys()]
    started = time.perf_counter()
    items = [
        {
            "PutRequest": {
                "Item": {
                    "dataset": {"S": ds},
                    "key": {"S": k},
                    "start_date": {"S": s.isoformat()},
                    "end_date": {"S": e.isoformat()},
                    "enabled": {"BOOL": True},
                }
            }
        }
        for ds, k, s, e in wanted
    ]
    for i in range(0, len(items), 25):
        pending: dict[str, Any] = {prof.keys_table: items[i : i + 25]}
        while pending:
            pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
    print(f"seeded {len(items):,} keys in {time.perf_counter() - started:.1f} s", flush=True)


def listing_seconds(profile: Path, dataset: str) -> tuple[float, int]:
    """How long listing a dataset's active keys from DynamoDB (moto) takes, alone."""
    from config.loader import load_profile
    from tasks.resources import key_store_for

    store = key_store_for(load_profile(profile, environ={}))
    started = time.perf_counter()
    n = len(store.active_keys(dataset, RUN_DATE))
    return time.perf_counter() - started, n


def task_run_count(api: str) -> int:
    """Task runs the Prefect server holds (``POST /task_runs/count``)."""
    req = urllib.request.Request(
        f"{api}/task_runs/count", data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return int(json.loads(resp.read()))


_LOADED = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) .*Loaded (?:key|unit) .*\((\d+\.\d+)s\)$")


def busy_seconds(log: str) -> float:
    """The union of every key's or unit's extract-to-commit span, from its "Loaded … (N s)" log line."""
    spans = []
    for line in log.splitlines():
        m = _LOADED.match(line.strip())
        if m:
            end = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
            spans.append((end - float(m[4]), end))
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end <= reach:
            continue
        busy += end - max(start, reach)
        reach = end
    return busy


def problems(log: str) -> list[str]:
    """ERROR lines and tracebacks in keyflow's output."""
    return [ln for ln in log.splitlines() if " ERROR " in ln or "| ERROR" in ln or ln.startswith("Traceback")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="*", default=[1000, 10_000], choices=[1000, 10_000])
    parser.add_argument("--days", type=int, default=DAYS, help="backfill days (0 skips the backfill)")
    parser.add_argument("--parallel-keys", type=int, default=8, help="keyflow's max_parallel_keys (default 8)")
    parser.add_argument("--backfill-parallel", type=int, default=2, help="backfill dates at once (default 2)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the source tables")
    args = parser.parse_args()
    python = sys.executable
    bindir = Path(python).parent
    ensure_data(max(args.keys, default=1000), args.rebuild)
    tmp = Path(tempfile.gettempdir(), "keyflow-bench-scale")  # kept: a contender can be rerun by hand
    tmp.mkdir(exist_ok=True)
    results: dict[str, Any] = {"runs": {}}
    with moto_server(python) as endpoint, prefect_server(str(bindir / "prefect")) as api:
        paths = write_config(tmp, endpoint, args.parallel_keys)
        seed_keys(paths["profile"], args.keys)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYFLOW_", "PREFECT_"))} | {
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # this checkout's code, whatever is installed
        }
        keyflow = str(bindir / "keyflow")
        for n in args.keys:
            dataset = f"scale_{'1k' if n == 1000 else '10k'}"
            listed_s, listed = listing_seconds(paths["profile"], dataset)
            pg_exec(WH_DB, f"DROP TABLE IF EXISTS limit_{n}", f"CREATE TABLE limit_{n} {NARROW}")
            last = f"K{n - 1:05d}"
            limit_s, _, _ = run_side_by_side(
                [
                    f"{PSQL} -d {SRC_DB} -c \"COPY (SELECT * FROM scale_src WHERE k <= '{last}' AND d >= "
                    f"'2017-03-01' AND d <= '2017-03-31' AND n >= 0) TO STDOUT\" | "
                    f"{PSQL} -d {WH_DB} -c 'COPY limit_{n} FROM STDIN'"
                ]
            )
            pg_exec(WH_DB, f"DROP TABLE IF EXISTS keyflow.{dataset}")
            before = task_run_count(api)
            cmd = [keyflow, "etl", "run", "-d", str(paths[dataset]), "--date", RUN_DATE.isoformat()]
            wall, rss, out = run_side_by_side([[*cmd, "-p", str(paths["profile"]), "--json"]], env=env)
            Path(tmp, f"{dataset}.log").write_text(out[0])
            task_runs = task_run_count(api) - before
            rows = json.loads(next(ln for ln in reversed(out[0].splitlines()) if ln.startswith("[")))
            loaded = sum(r["rows_loaded"] for r in rows)
            assert len(rows) == n and loaded == n * ROWS_PER_KEY, (len(rows), loaded)
            bad = problems(out[0])
            results["runs"][n] = {
                "wall_s": wall,
                "rss_mb": rss,
                "task_runs": task_runs,
                "limit_s": limit_s,
                "listing_s": listed_s,
                "busy_s": busy_seconds(out[0]),
                "problems": len(bad),
            }
            print(
                f"{n:>6} keys: {wall:6.2f} s, {1000 * wall / n:5.2f} ms/key, {task_runs} task runs, "
                f"{rss:4.0f} MB peak RSS; limit {limit_s:.2f} s; listing {listed:,} keys from DynamoDB "
                f"{listed_s:.2f} s; units busy {results['runs'][n]['busy_s']:.2f} s; "
                f"{len(bad)} ERROR/traceback line(s)",
                flush=True,
            )
            for line in bad[:5]:
                print("   ", line[:200])

        if args.days:
            last_day = FIRST_DAY + timedelta(days=args.days - 1)
            pg_exec(WH_DB, "DROP TABLE IF EXISTS keyflow.scale_days")
            pg_exec(WH_DB, "DELETE FROM keyflow.keyflow_loads WHERE dataset = 'scale_days'")
            before = task_run_count(api)
            cmd = [keyflow, "etl", "backfill", "-d", str(paths["scale_days"]), "-p", str(paths["profile"])]
            cmd += ["--from", FIRST_DAY.isoformat(), "--to", last_day.isoformat()]
            cmd += ["--parallel", str(args.backfill_parallel)]
            wall, rss, out = run_side_by_side([cmd], env=env)
            Path(tmp, "backfill.log").write_text(out[0])
            busy = busy_seconds(out[0])
            bad = problems(out[0])
            loaded = pg_exec(
                WH_DB,
                "SELECT count(*), count(DISTINCT run_date) FROM keyflow.keyflow_loads WHERE dataset = 'scale_days'",
            )[0]
            results["backfill"] = {
                "days": args.days,
                "wall_s": wall,
                "rss_mb": rss,
                "task_runs": task_run_count(api) - before,
                "busy_s": busy,
                "ledger_rows": loaded[0],
                "dates": loaded[1],
                "problems": len(bad),
            }
            b = results["backfill"]
            print(
                f"backfill {args.days} days x {KEYS_PER_DAY} keys: {wall:.1f} s, {b['task_runs']} task runs, "
                f"{rss:.0f} MB; extraction+loading busy {busy:.1f} s, outside {wall - busy:.1f} s "
                f"({100 * (wall - busy) / wall:.0f} %); ledger {loaded[0]:,} rows over {loaded[1]} dates; "
                f"{len(bad)} ERROR/traceback line(s)",
                flush=True,
            )
            for line in bad[:5]:
                print("   ", line[:200])
    report(results, args)


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    import prefect

    print()
    print(
        f"machine: {os.cpu_count()} cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"Python {platform.python_version()}, Prefect {prefect.__version__}, "
        f"PostgreSQL {pg_exec('postgres', 'SHOW server_version')[0][0]}; max_parallel_keys {args.parallel_keys}"
    )
    top = max(r["runs"]) if r["runs"] else None
    main_run = r["runs"].get(top, {})
    b = r.get("backfill", {})
    line = {
        "keys": top,
        "wall_s": round(main_run["wall_s"], 2) if main_run else None,
        "ms_per_key": round(1000 * main_run["wall_s"] / top, 2) if main_run else None,
        "task_runs": main_run.get("task_runs"),
        "peak_rss_mb": round(main_run["rss_mb"]) if main_run else None,
        "limit_s": round(main_run["limit_s"], 2) if main_run else None,
        "backfill_days": b.get("days"),
        "backfill_s": round(b["wall_s"], 1) if b else None,
        "backfill_outside_share": round((b["wall_s"] - b["busy_s"]) / b["wall_s"], 2) if b else None,
        "backfill_task_runs": b.get("task_runs"),
        "listing_s": round(main_run["listing_s"], 2) if main_run else None,
        "runs": {
            n: {k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()} for n, m in r["runs"].items()
        },
        "error_lines": sum(m["problems"] for m in r["runs"].values()) + b.get("problems", 0),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
