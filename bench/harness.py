"""Benchmark plumbing: time a set of processes run side by side and sample the RSS of their process trees."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from statistics import median

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_rss(procs: Sequence[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            family = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in family:
            with suppress(psutil.NoSuchProcess):
                total += q.memory_info().rss
    return total


def run_side_by_side(
    commands: Sequence[Sequence[str] | str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, float, list[str]]:
    """Start every command at once; return (wall seconds, peak summed RSS of all their trees in MB, outputs)."""
    wall, rss, outputs, _ = run_measured(commands, env, cwd)
    return wall, rss, outputs


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(
    commands: Sequence[Sequence[str] | str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, float, list[str], float]:
    """:func:`run_side_by_side`, plus the CPU seconds (user + system) of the commands' process trees.

    Counted from ``getrusage(RUSAGE_CHILDREN)``: every process of the trees that ended and was waited for (a shell
    pipeline's processes included). Servers they talk to (databases, moto, Prefect) are not counted.
    """
    cpu_before = _children_cpu()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            c,
            shell=isinstance(c, str),
            executable="/bin/bash" if isinstance(c, str) else None,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in commands
    ]
    handles = [psutil.Process(p.pid) for p in procs]
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(handles))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    cpu = _children_cpu() - cpu_before
    for cmd, p, out in zip(commands, procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"benchmark command failed ({p.returncode}): {cmd}\n{out[-3000:]}")
    return wall, peak / 1e6, outputs, cpu


def summarize(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """Median wall seconds and the highest peak RSS over the runs."""
    return median(s[0] for s in samples), max(s[1] for s in samples)


def median_of(values: list[float]) -> float:
    """The median (CPU seconds and the like)."""
    return median(values)


def _wait_http(url: str, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


@contextmanager
def moto_server(python: str) -> Iterator[str]:
    """A moto server in its own process (not counted in keyflow's RSS: it holds staged objects in memory)."""
    port = free_port()
    proc = subprocess.Popen(
        [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/moto-api/")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # busy request threads: it holds only test data
            proc.kill()
            proc.wait(10)


@contextmanager
def prefect_server(prefect: str) -> Iterator[str]:
    """`prefect server start` on a free port with its own PREFECT_HOME; yields its API URL."""
    port = free_port()
    home = tempfile.mkdtemp(prefix="keyflow-bench-prefect-")
    env = os.environ | {
        "PREFECT_HOME": home,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health", 120)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)
