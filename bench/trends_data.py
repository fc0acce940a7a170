"""Generate the trend benchmark's input: gzip JSON lines event files and a user reference CSV, built in Arrow."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

START = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)


def _text(prefix: str, values: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(pa.scalar(prefix), pc.cast(pa.array(values), pa.string()), "")


def write_users(path: Path, users: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            "user_id": _text("u", np.arange(users)),
            "gender": pa.array(np.array(["f", "m", "x"])[rng.integers(0, 3, users)]),
            "segment_id": _text("s", rng.integers(0, 20, users)),
        }
    )
    pacsv.write_csv(table, path)


def write_events(path: Path, first_id: int, n: int, articles: int, users: int, minutes: int, seed: int) -> None:
    """``n`` events spread over ``minutes`` from :data:`START`; Zipf-like article popularity; 4% clicks; a few
    seconds of arrival delay (5% of unknown users: ids beyond the user file)."""
    rng = np.random.default_rng(seed)
    ts_us = int(START.timestamp() * 1e6) + rng.integers(0, minutes * 60_000_000, n)
    received = ts_us + rng.integers(100_000, 20_000_000, n)
    article = np.minimum(rng.zipf(1.3, n), articles) - 1
    user = rng.integers(0, int(users * 1.05), n)
    action = np.where(rng.random(n) < 0.04, "click", "impression")

    def iso(us: np.ndarray) -> pa.Array:
        return pc.strftime(pa.array(us.astype("datetime64[us]")), format="%Y-%m-%dT%H:%M:%S")

    parts = [
        pa.scalar('{"event_id":"e'),
        pc.cast(pa.array(np.arange(first_id, first_id + n)), pa.string()),
        pa.scalar('","ts":"'),
        iso(ts_us),
        pa.scalar('Z","article_id":"a'),
        pc.cast(pa.array(article), pa.string()),
        pa.scalar('","user_id":"u'),
        pc.cast(pa.array(user), pa.string()),
        pa.scalar('","action":"'),
        pa.array(action),
        pa.scalar('","received_at":"'),
        iso(received),
        pa.scalar('Z"}\n'),
    ]
    lines = pc.binary_join_element_wise(*parts, "")
    offsets, data = lines.buffers()[1], lines.buffers()[2]
    first, last = np.frombuffer(offsets, dtype=np.int32)[[0, len(lines)]]
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(memoryview(data)[int(first) : int(last)])


def ensure_data(folder: Path, events: int, articles: int, users: int, files: int, minutes: int) -> list[Path]:
    """Build the files once per shape; later sittings reuse them."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / ".complete"
    paths = [folder / f"part-{i:03d}.jsonl.gz" for i in range(files)]
    if not done.exists():
        write_users(folder / "users.csv", users)
        per = events // files
        for i, path in enumerate(paths):
            n = per if i < files - 1 else events - per * (files - 1)
            write_events(path, i * per, n, articles, users, minutes, seed=100 + i)
        done.write_text("ok\n")
    return paths
