"""Parquet against CSV staging on the ETL benchmark's workload: bytes staged and keyflow's CPU seconds.

Stages the 3 keys of `make bench`'s 600-column table (built by bench/etl_bench.py when missing) through keyflow's own
staging step — source cursor, the benchmark's rules, the part writer, upload to a moto server — once per format per
run, the formats interleaved. CPU is this process's (every thread's) user+system time around each key. The load
differs only in Redshift, which does not run here: no load time is measured. Figures are printed, never asserted.

    python bench/staging_formats.py [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.etl_bench import BENCH_RULES, RUN_DATE, SRC_DB, ensure_pg_data
from bench.harness import moto_server
from bench.shape import KEYS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("KEYFLOW_EMAIL_SALT", "bench-salt")
    ensure_pg_data(rebuild=False)

    import tasks.etl
    from config.loader import load_dataset, load_profile
    from tasks.resources import object_store_for, resources_for
    from tasks.transforms.keys import CampaignKey
    from tasks.transforms.plan import plan_table

    tasks.etl.PROGRESS_SECONDS = 1e9  # no Prefect run here: no progress lines
    day = dt.date.fromisoformat(RUN_DATE)
    with moto_server(sys.executable) as endpoint, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        profile_path = folder / "profile.yaml"
        profile_path.write_text(
            yaml.safe_dump(
                {
                    "name": "bench-staging",
                    "source_url": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{SRC_DB}",
                    "warehouse_kind": "redshift",
                    "redshift_iam_role": "arn:aws:iam::123456789012:role/bench",
                    "redshift": {"mode": "data_api", "workgroup": "bench", "database": "dev"},
                    "aws_endpoint_url": endpoint,
                    "bucket": "keyflow-bench-staging",
                    "prefix": "staging",
                    "secrets": {"email_salt": {"env": "KEYFLOW_EMAIL_SALT"}},
                }
            )
        )
        profile = load_profile(profile_path, environ={})
        object_store_for(profile).ensure_bucket()
        figures: dict[str, list[tuple[float, int]]] = {"csv": [], "parquet": []}
        for run in range(args.runs):
            for fmt in ("csv", "parquet") if run % 2 == 0 else ("parquet", "csv"):
                dataset_path = folder / f"bench_{fmt}.yaml"
                dataset_path.write_text(
                    yaml.safe_dump(
                        {
                            "name": f"bench_{fmt}",
                            "source": {"table": "bench_src", "key_column": "campaign_key", "batch_rows": 5000},
                            "rules": BENCH_RULES,
                            "staging": {"format": fmt, "compression": "zstd", "level": 1},
                            "target": {"schema": "keyflow", "table": "facts", "distkey": "campaign_key"},
                        },
                        sort_keys=False,
                    )
                )
                dataset = load_dataset(dataset_path)
                resources = resources_for(profile)
                spec = plan_table(dataset, resources.source().source_schema(dataset.source), dataset.file)
                cpu, size = 0.0, 0
                for key in KEYS:
                    campaign = CampaignKey(dataset.name, key, day, day, True)
                    started = time.process_time()
                    staged = tasks.etl.stage_rows(campaign, dataset, resources, spec, f"run{run}", day)
                    cpu += time.process_time() - started
                    size += staged.bytes_staged
                figures[fmt].append((cpu, size))
                print(f"run {run + 1} {fmt:8s} cpu {cpu:6.2f} s  staged {size / 1e6:7.2f} MB", flush=True)
        print()
        for fmt, rows in figures.items():
            cpu = statistics.median(r[0] for r in rows)
            size = statistics.median(r[1] for r in rows)
            print(f"{fmt:8s} median over {len(rows)} run(s): cpu {cpu:.2f} s for 3 keys, staged {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
