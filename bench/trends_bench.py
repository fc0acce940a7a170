"""`make bench-trends`: events per minute through gunzip → parse → join → window → aggregate → score.

Generates (once, cached under .keyflow/bench/trends/) gzip JSON lines files and a user CSV, then runs, in one sitting
and each in its own process (peak RSS sampled over the process tree):
  1. keyflow: the trend flow's counting stream (parallel file readers, one streaming Arrow plan) and its scoring;
  2. the naive baseline: pandas ``read_json(lines=True)`` per file, merge with the users, groupby.
The baseline reads the first ``--baseline-files`` files only (it is slow and memory-hungry); its rate is per event.
Prints a table and ends with one JSON line. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def keyflow_worker(folder: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from trends_data import START

    from tasks.io.archive import event_reader, read_jsonl_gz
    from tasks.transforms.trends import (
        COUNT_INPUT_SCHEMA,
        USER_SCHEMA,
        ScoreParams,
        WindowSpec,
        count_stream,
        score_articles,
        top_n,
    )

    started = time.perf_counter()
    users = pacsv.read_csv(
        folder / "users.csv", convert_options=pacsv.ConvertOptions(column_types=USER_SCHEMA, strings_can_be_null=True)
    )
    files = sorted(folder.glob("part-*.jsonl.gz"))
    openers = [lambda p=p: read_jsonl_gz(pa.OSFile(str(p)), schema=COUNT_INPUT_SCHEMA) for p in files]
    counts, events = count_stream(event_reader(openers, parallel=2), users, WindowSpec())
    counted_at = time.perf_counter()
    minutes = int(os.environ.get("BENCH_MINUTES", "20"))
    scored = score_articles(counts.counts, START + timedelta(minutes=minutes), ScoreParams(), per_audience=20)
    best = top_n(scored, 20)
    done = time.perf_counter()
    return {
        "events": events,
        "counted": counts.counted_events,
        "groups": counts.counts.num_rows,
        "audiences": len(best),
        "count_s": round(counted_at - started, 3),
        "score_s": round(done - counted_at, 3),
        "seconds": round(done - started, 3),
    }


def pandas_worker(folder: Path, limit: int) -> dict[str, Any]:
    import pandas as pd

    started = time.perf_counter()
    users = pd.read_csv(folder / "users.csv", dtype=str)
    parts = []
    events = 0
    for path in sorted(folder.glob("part-*.jsonl.gz"))[:limit]:
        df = pd.read_json(path, lines=True, compression="gzip", dtype={"article_id": str, "user_id": str})
        events += len(df)
        df["window_start"] = pd.to_datetime(df["ts"], utc=True).dt.floor("min")
        df["impressions"] = (df["action"] == "impression").astype("int64")
        df["clicks"] = (df["action"] == "click").astype("int64")
        df = df.merge(users, on="user_id", how="left")
        keys = ["window_start", "gender", "segment_id", "article_id"]
        parts.append(df.groupby(keys, dropna=False)[["impressions", "clicks"]].sum().reset_index())
    merged = pd.concat(parts).groupby(["window_start", "gender", "segment_id", "article_id"], dropna=False).sum()
    done = time.perf_counter()
    return {"events": events, "groups": len(merged), "seconds": round(done - started, 3)}


def run_measured(args: list[str]) -> tuple[dict[str, Any], float]:
    from harness import run_side_by_side

    _, rss, outputs = run_side_by_side([[sys.executable, __file__, *args]])
    lines = [ln for ln in outputs[0].splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"worker {args} failed:\n{outputs[0]}")
    return json.loads(lines[-1]), rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--minutes", type=int, default=20, help="event-time span (the original: 500,000 a minute)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-files", type=int, default=2)
    parser.add_argument("--worker", choices=["keyflow", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "keyflow":
        print(json.dumps(keyflow_worker(args.folder)))
        return
    if args.worker == "pandas":
        print(json.dumps(pandas_worker(args.folder, args.baseline_files)))
        return

    from trends_data import ensure_data

    folder = (
        ROOT
        / ".keyflow"
        / "bench"
        / "trends"
        / f"{args.events}-{args.articles}-{args.users}-{args.files}-{args.minutes}"
    )
    t = time.perf_counter()
    ensure_data(folder, args.events, args.articles, args.users, args.files, args.minutes)
    size = sum(p.stat().st_size for p in folder.glob("part-*.jsonl.gz"))
    print(f"data: {folder} ({size / 1e6:.0f} MB gzip, ready in {time.perf_counter() - t:.1f} s)", flush=True)
    os.environ["BENCH_MINUTES"] = str(args.minutes)

    runs = []
    for i in range(args.runs):
        result, rss = run_measured(["--worker", "keyflow", "--folder", str(folder)])
        runs.append((result["seconds"], rss, result))
        print(f"keyflow run {i + 1}: {result['seconds']:.2f} s, {rss:.0f} MB, {result}", flush=True)
    runs.sort(key=lambda r: r[0])
    seconds, rss, kf = runs[len(runs) // 2]
    base, base_rss = run_measured(
        ["--worker", "pandas", "--folder", str(folder), "--baseline-files", str(args.baseline_files)]
    )
    print(f"pandas baseline: {base['seconds']:.2f} s for {base['events']:,} events, {base_rss:.0f} MB", flush=True)

    per_min = kf["events"] / seconds * 60
    base_per_min = base["events"] / base["seconds"] * 60
    print()
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'':10} {'events':>12} {'seconds':>9} {'events/min':>14} {'peak RSS MB':>12}")
    print(f"{'keyflow':10} {kf['events']:>12,} {seconds:>9.2f} {per_min:>14,.0f} {rss:>12.0f}")
    print(f"{'pandas':10} {base['events']:>12,} {base['seconds']:>9.2f} {base_per_min:>14,.0f} {base_rss:>12.0f}")
    print(f"keyflow: count {kf['count_s']} s, score {kf['score_s']} s; {kf['groups']:,} window groups")
    print(
        json.dumps(
            {
                "events": kf["events"],
                "events_per_min": round(per_min),
                "baseline_events_per_min": round(base_per_min),
                "peak_rss_mb": round(rss),
            }
        )
    )


if __name__ == "__main__":
    main()
