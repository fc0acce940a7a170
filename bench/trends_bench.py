"""`make bench-trends`: events per minute through gunzip → parse and check → dedup → join → window → aggregate → score.

Generates (once, cached under .keyflow/bench/trends/) gzip JSON lines files with 1 % duplicate lines and 0.5 %
malformed lines beside the unique events, and a user CSV; compacts that hour once with keyflow's own compaction
(Parquet, each event once) into a second folder. Then runs, in one sitting and each in its own process (peak RSS
sampled over the process tree):
  1. keyflow on gzip JSON lines: the trend flow's scan (2 files at once, each inflated and parsed in a worker
     process, every line checked, each event id once per hour) → one streaming Arrow plan → scoring;
  2. keyflow on the compacted Parquet files of the same hour, the same way;
  3. keyflow on the gzip files read in threads of one process instead (``file_processes: false``, as before
     2026-11-29; ``--skip jsonl-threads`` leaves it out);
  4. the naive baseline: pandas ``read_json(lines=True)`` per file, merge with the users, groupby (it stops at the
     first malformed line, so it reads the clean files of the same shape; no dedup).
The baseline reads the first ``--baseline-files`` files only (it is slow and memory-hungry); its rate is per event.
Prints a table and ends with one JSON line. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


KEYFLOW_VARIANTS = {"jsonl": "keyflow gzip", "parquet": "keyflow parquet", "jsonl-threads": "gzip, threads"}
"""The keyflow contenders: gzip JSON lines read in worker processes (the flow's default), the compacted Parquet
copy, and gzip JSON lines read in threads of one process (``file_processes: false``, as before 2026-11-29)."""


class LocalSource:
    """Archive files on local disk (keys are paths under ``root``), read the way the flow reads S3 objects."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root

    def stream(self, key: str) -> Any:
        import pyarrow as pa

        return pa.OSFile(str(self.root / key if self.root else key))

    def random_access(self, key: str, size: int) -> Any:
        import pyarrow as pa

        return pa.memory_map(str(self.root / key if self.root else key))


class LocalStore:
    """Just enough of an object store on a local folder for keyflow's compaction to run on it unchanged."""

    bucket = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key

    def list_objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        for p in sorted(self.root.rglob("*")):
            key = p.relative_to(self.root).as_posix()
            if p.is_file() and key.startswith(prefix):
                stat = p.stat()
                yield {"Key": key, "Size": stat.st_size, "LastModified": datetime.fromtimestamp(stat.st_mtime, UTC)}

    def list_keys(self, prefix: str) -> Iterator[str]:
        return (o["Key"] for o in self.list_objects(prefix))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open(self, key: str) -> IO[bytes]:
        return self._path(key).open("rb")

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self._path(key).open("rb") as f:
            f.seek(start)
            return f.read(end - start)

    def head(self, key: str) -> dict[str, Any]:
        return {"ContentLength": self._path(key).stat().st_size}

    def put_bytes(self, data: bytes, key: str, content_type: str = "") -> None:
        self._path(key).parent.mkdir(parents=True, exist_ok=True)
        self._path(key).write_bytes(data)

    def put_file(self, path: Path, key: str) -> None:
        self._path(key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, self._path(key))

    def delete_keys(self, keys: Sequence[str]) -> int:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        return len(keys)


def hour_files(folder: Path, compacted: bool) -> list[Any]:
    from trends_data import START

    from tasks.io.archive import ArchiveFile, list_hour

    if not compacted:
        return [ArchiveFile(str(p), p.stat().st_size, None, START) for p in sorted(folder.glob("part-*.jsonl.gz"))]
    store = LocalStore(folder / "compacted")
    listing = list_hour(store, "archive", START)  # type: ignore[arg-type]
    return [ArchiveFile(str(store.root / f.key), f.size, None, START, compacted=True) for f in listing.files]


def ensure_compacted(folder: Path) -> dict[str, Any]:
    """Compact the generated hour once with keyflow's compaction (the gzip files are linked, never moved)."""
    from trends_data import START

    from tasks.io.archive import hour_prefix
    from tasks.io.compaction import ArchivePlaces, compact_hour

    done = folder / "compacted" / ".complete"
    if done.exists():
        return dict(json.loads(done.read_text()))
    root = folder / "compacted"
    shutil.rmtree(root, ignore_errors=True)
    hour = root / hour_prefix("archive", START)
    hour.mkdir(parents=True)
    for p in sorted(folder.glob("part-*.jsonl.gz")):
        os.link(p, hour / p.name)
    started = time.perf_counter()
    result = compact_hour(
        LocalStore(root),  # type: ignore[arg-type]
        ArchivePlaces("archive", "rejected", "quarantine"),
        START,
        source=LocalSource(root),
    )
    row = result.as_row() | {"seconds": round(time.perf_counter() - started, 1)}
    done.write_text(json.dumps(row))
    return row


def _cpu_now() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its ended children (the line reader processes)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def keyflow_worker(folder: Path, compacted: bool, processes: bool) -> dict[str, Any]:
    import pyarrow.acero  # noqa: F401  # imported by counting on first use; outside the clock, as in earlier sittings
    import pyarrow.csv as pacsv
    from trends_data import START

    from tasks.io.archive import ArchiveScan
    from tasks.transforms.trends import USER_SCHEMA, ScoreParams, WindowSpec, count_stream, score_articles, top_n

    started, cpu = time.perf_counter(), _cpu_now()
    scan = ArchiveScan(LocalSource(), hour_files(folder, compacted), parallel=2, processes=processes)
    stream = scan.reader()  # as the flow does: its worker processes start while the user file is read
    users = pacsv.read_csv(
        folder / "users.csv", convert_options=pacsv.ConvertOptions(column_types=USER_SCHEMA, strings_can_be_null=True)
    )
    counts, events = count_stream(stream, users, WindowSpec(), names=scan.names)
    counted_at = time.perf_counter()
    minutes = int(os.environ.get("BENCH_MINUTES", "20"))
    scored = score_articles(counts.counts, START + timedelta(minutes=minutes), ScoreParams(), per_audience=20)
    best = top_n(scored, 20)
    done = time.perf_counter()
    invalid = sum(r.invalid for r in scan.reports.values())
    return {
        "lines": events + scan.duplicates + invalid,
        "events": events,
        "counted": counts.counted_events,
        "duplicates": scan.duplicates,
        "invalid": invalid,
        "groups": counts.counts.num_rows,
        "audiences": len(best),
        "count_s": round(counted_at - started, 3),
        "score_s": round(done - counted_at, 3),
        "seconds": round(done - started, 3),
        "cpu_s": round(sum(_cpu_now()) - sum(cpu), 3),
        "cpu_main_s": round(_cpu_now()[0] - cpu[0], 3),
        "cpu_workers_s": round(_cpu_now()[1] - cpu[1], 3),
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
    """One contender in its own process: its result, and its process tree's peak RSS in MB.

    The result gains ``tree_cpu_s`` (the whole process tree, start-up and imports included) and ``load`` (the
    1-minute load average when it ended).
    """
    from harness import run_measured as run_tree

    _, rss, outputs, tree_cpu = run_tree([[sys.executable, __file__, *args]])
    lines = [ln for ln in outputs[0].splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"worker {args} failed:\n{outputs[0]}")
    return json.loads(lines[-1]) | {"tree_cpu_s": round(tree_cpu, 3), "load": round(os.getloadavg()[0], 2)}, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--minutes", type=int, default=20, help="event-time span (the original: 500,000 a minute)")
    parser.add_argument("--duplicates", type=float, default=0.01, help="duplicate lines, a share of the events")
    parser.add_argument("--malformed", type=float, default=0.005, help="malformed lines, a share of the events")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-files", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=[*KEYFLOW_VARIANTS, "pandas"])
    parser.add_argument("--worker", choices=[*KEYFLOW_VARIANTS, "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker in KEYFLOW_VARIANTS:
        result = keyflow_worker(args.folder, compacted=args.worker == "parquet", processes=args.worker == "jsonl")
        print(json.dumps(result))
        return
    if args.worker == "pandas":
        print(json.dumps(pandas_worker(args.folder, args.baseline_files)))
        return

    from trends_data import ensure_data

    base = ROOT / ".keyflow" / "bench" / "trends"
    shape = f"{args.events}-{args.articles}-{args.users}-{args.files}-{args.minutes}"
    folder = base / f"{shape}-d{args.duplicates:g}-m{args.malformed:g}"
    clean = base / shape
    t = time.perf_counter()
    ensure_data(
        folder, args.events, args.articles, args.users, args.files, args.minutes, args.duplicates, args.malformed
    )
    size = sum(p.stat().st_size for p in folder.glob("part-*.jsonl.gz"))
    print(f"data: {folder} ({size / 1e6:.0f} MB gzip, ready in {time.perf_counter() - t:.1f} s)", flush=True)
    compaction = ensure_compacted(folder)
    parquet_size = sum(f.size for f in hour_files(folder, compacted=True))
    print(f"compacted: {compaction} ({parquet_size / 1e6:.0f} MB Parquet)", flush=True)
    os.environ["BENCH_MINUTES"] = str(args.minutes)

    results: dict[str, tuple[float, float, dict[str, Any]]] = {}
    variants = [v for v in KEYFLOW_VARIANTS if v not in args.skip]
    runs: dict[str, list[tuple[float, float, dict[str, Any]]]] = {v: [] for v in variants}
    for i in range(args.runs):  # interleaved, so a drifting machine weighs on both alike
        for variant in variants:
            result, rss = run_measured(["--worker", variant, "--folder", str(folder)])
            runs[variant].append((result["seconds"], rss, result))
            print(f"{variant} run {i + 1}: {result['seconds']:.2f} s, {rss:.0f} MB, {result}", flush=True)
    for variant, measured in runs.items():
        measured.sort(key=lambda r: r[0])
        results[variant] = measured[len(measured) // 2]
    base_result: dict[str, Any] | None = None
    if "pandas" not in args.skip:
        ensure_data(clean, args.events, args.articles, args.users, args.files, args.minutes, 0.0, 0.0)
        base_result, base_rss = run_measured(
            ["--worker", "pandas", "--folder", str(clean), "--baseline-files", str(args.baseline_files)]
        )
        print(f"pandas baseline: {base_result['seconds']:.2f} s for {base_result['events']:,} events", flush=True)

    print()
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'':16} {'lines':>12} {'events':>12} {'seconds':>9} {'events/min':>14} {'lines/min':>14} {'peak MB':>8}")
    summary: dict[str, Any] = {}
    for variant, (seconds, rss, r) in results.items():
        per_min, lines_per_min = r["events"] / seconds * 60, r["lines"] / seconds * 60
        name = KEYFLOW_VARIANTS[variant]
        print(
            f"{name:16} {r['lines']:>12,} {r['events']:>12,} {seconds:>9.2f} {per_min:>14,.0f} {lines_per_min:>14,.0f} "
            f"{rss:>8.0f}"
        )
        all_runs = runs[variant]
        cpu_runs = [m[2]["cpu_s"] for m in all_runs]
        print(
            f"{'':16} count {r['count_s']} s, score {r['score_s']} s, {r['cpu_s']} CPU-s ({r['tree_cpu_s']} for the "
            f"process tree with start-up); {r['counted']:,} counted, {r['duplicates']:,} duplicates, "
            f"{r['invalid']:,} invalid; {r['groups']:,} window groups"
        )
        print(
            f"{'':16} runs: seconds {[m[0] for m in all_runs]}, CPU-s {cpu_runs} (median {median(cpu_runs)}), "
            f"peak MB {[round(m[1]) for m in all_runs]}, load {[m[2]['load'] for m in all_runs]}"
        )
        summary[variant] = {
            "events_per_min": round(per_min),
            "lines_per_min": round(lines_per_min),
            "peak_rss_mb": round(rss),
            "cpu_s": r["cpu_s"],
            "cpu_s_median": median(cpu_runs),
            "counted": r["counted"],
            "duplicates": r["duplicates"],
            "load": r["load"],
        }
    if base_result is not None:
        per_min = base_result["events"] / base_result["seconds"] * 60
        n, secs = base_result["events"], base_result["seconds"]
        print(f"{'pandas':16} {n:>12,} {n:>12,} {secs:>9.2f} {per_min:>14,.0f} {'':>14} {base_rss:>8.0f}")
        summary["pandas"] = {"events_per_min": round(per_min), "peak_rss_mb": round(base_rss)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
