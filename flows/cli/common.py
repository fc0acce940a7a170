"""What the commands share: the common options, reading dates, and checking YAML before Prefect starts."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from types import FrameType
from typing import Annotated

import typer

from flows.cli.output import fail

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="profile name or path (config/profiles/)")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="dataset name or path (config/datasets/)")]
JobOpt = Annotated[str, typer.Option("--job", "-j", help="trend job name or path (config/trends/)")]


def quiet_prefect() -> None:
    """Offline-friendly Prefect defaults, set before Prefect is imported (a user's own settings win); then, when no
    Prefect API is configured, the one temporary server this command's flows run against (see
    :mod:`flows.local_server`; ``main()`` stops it once every task run was recorded)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    from flows.local_server import ensure_api

    ensure_api()


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped a command that runs flows; it ends with one line and exit code 128 + the signal.

    A ``BaseException``, so neither the flow's nor the command's error handling takes it for a failure.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.code = 128 + signum
        super().__init__(signal.Signals(signum).name)


def mute_console_logs() -> None:
    """Stop log lines reaching the terminal (they still reach the Prefect API): an interrupted command's last
    line is its own."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL + 1)


@contextmanager
def interruptible() -> Iterator[None]:
    """Around a flow call: SIGINT and SIGTERM remove what the running ETL runs staged, silence the logs and end
    the command with :class:`Interrupted` (``main()`` prints the one line and exits 130 or 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from tasks.cleanup import on_interrupt, remove_active_runs

    on_interrupt(mute_console_logs)  # a SIGTERM reaches the flow through Prefect first: silence what it logs next

    def handle(signum: int, frame: FrameType | None) -> None:
        mute_console_logs()
        remove_active_runs()  # runs on other threads (a backfill's dates) have no handler of their own
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def parse_date(text: str, option: str) -> date:
    """A YYYY-MM-DD option value, or the command ends with exit code 2."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(f"{option}: {text!r} is not a date (YYYY-MM-DD)")


def parse_time(text: str, option: str) -> datetime:
    """An ISO date or date-time; UTC unless it names its offset."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option}: {text!r} is not a date or time (YYYY-MM-DD[THH:MM[:SS]][+00:00])")
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def check_config(profile: str, kind: str, name: str) -> None:
    """Load the profile and a job's YAML before Prefect starts, so a user's mistake is a ``ConfigError``, not a trace.

    Args:
        profile: profile name or path.
        kind: the job's folder under config/: datasets, events, sources or trends.
        name: the job's name or path.
    """
    from config import loader

    load = {
        "datasets": loader.load_dataset,
        "events": loader.load_events,
        "sources": loader.load_file_source,
        "trends": loader.load_trends,
    }[kind]
    loader.load_profile(profile)
    load(name)
    quiet_prefect()


def parse_duration(text: str, option: str) -> timedelta:
    """A duration such as ``90s``, ``30m``, ``24h`` or ``7d`` (``0`` alone is allowed); else exit code 2."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if text.strip() == "0":
        return timedelta(0)
    if not match:
        fail(f"{option}: {text!r} is not a duration (a number and s, m, h or d: 30m, 24h, 7d)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
    return timedelta(**{unit: float(match[1])})
