"""Generate the trend benchmark's input: gzip JSON lines event files and a user reference CSV, built in Arrow.

Besides the unique events, each file holds duplicate lines (copies of its own lines and of the previous file's, as
a producer's retries and a file landing twice make them) and malformed lines (cut short, not JSON, an unknown
action), inserted at random places.
"""

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


def event_lines(first_id: int, n: int, articles: int, users: int, minutes: int, seed: int) -> pa.Array:
    """``n`` events spread over ``minutes`` from :data:`START` as JSON lines (each with its newline); Zipf-like
    article popularity; 4% clicks; a few seconds of arrival delay (5% of unknown users: ids beyond the user file)."""
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
    return pc.binary_join_element_wise(*parts, "")


def with_noise(
    lines: pa.Array, previous: pa.Array | None, duplicates: float, malformed: float, seed: int
) -> tuple[pa.Array, int, int]:
    """``lines`` with duplicate and malformed lines added at random places; returns them and how many of each."""
    rng = np.random.default_rng(seed + 1000)
    n = len(lines)
    d, m = int(n * duplicates), int(n * malformed)
    own = lines.take(pa.array(rng.integers(0, n, d - d // 2)))
    other = previous if previous is not None else lines
    theirs = other.take(pa.array(rng.integers(0, len(other), d // 2)))
    picked = lines.take(pa.array(rng.integers(0, n, m)))
    cut, garbage = m // 2, m // 4
    bad = [
        pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(picked.slice(i * cut // 8, cut // 8), 0, 20 + 15 * i), pa.scalar("\n"), ""
        )
        for i in range(8)
    ]
    bad.append(pa.array([f"not json {i}\n" for i in range(garbage)]))
    wrong = picked.slice(cut // 8 * 8, m - cut // 8 * 8 - garbage)
    bad.append(pc.replace_substring(pc.replace_substring(wrong, '"impression"', '"swipe"'), '"click"', '"swipe"'))
    extra = pa.concat_arrays([own, theirs, *bad])
    keys = np.concatenate([np.arange(n, dtype=np.float64), rng.uniform(0, n, len(extra))])
    order = np.argsort(keys, kind="stable")
    return pa.concat_arrays([lines, extra]).take(pa.array(order)), d, sum(len(b) for b in bad)


def write_lines(path: Path, lines: pa.Array) -> None:
    offsets, data = lines.buffers()[1], lines.buffers()[2]
    first, last = np.frombuffer(offsets, dtype=np.int32)[[0, len(lines)]]
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(memoryview(data)[int(first) : int(last)])


def ensure_data(
    folder: Path,
    events: int,
    articles: int,
    users: int,
    files: int,
    minutes: int,
    duplicates: float = 0.01,
    malformed: float = 0.005,
) -> list[Path]:
    """Build the files once per shape; later sittings reuse them."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / ".complete"
    paths = [folder / f"part-{i:03d}.jsonl.gz" for i in range(files)]
    if not done.exists():
        write_users(folder / "users.csv", users)
        per = events // files
        previous = None
        noise = [0, 0]
        for i, path in enumerate(paths):
            n = per if i < files - 1 else events - per * (files - 1)
            lines = event_lines(i * per, n, articles, users, minutes, seed=100 + i)
            noisy, d, m = with_noise(lines, previous, duplicates, malformed, seed=100 + i)
            write_lines(path, noisy.combine_chunks() if isinstance(noisy, pa.ChunkedArray) else noisy)
            previous = lines
            noise[0] += d
            noise[1] += m
        (folder / "noise.txt").write_text(f"{noise[0]} {noise[1]}\n")
        done.write_text("ok\n")
    return paths
