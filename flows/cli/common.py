"""What the commands share: the common options, reading dates, and checking YAML before Prefect starts."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from config.errors import quoted
from flows.cli.output import fail

if TYPE_CHECKING:
    from config.models import DatasetConfig, EventsConfig, FileSourceConfig, TrendConfig

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="profile name or path (config/profiles/)")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="dataset name or path (config/datasets/)")]
JobOpt = Annotated[str, typer.Option("--job", "-j", help="trend job name or path (config/trends/)")]


def prefect_defaults() -> None:
    """Offline-friendly Prefect defaults, set before Prefect is imported (a user's own settings win)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")


def quiet_prefect() -> None:
    """Prefect's defaults, then the temporary Prefect server this command's flows run against, if it needs one.

    The server is started only when no Prefect API is configured (see :mod:`flows.local_server`); ``main()`` stops
    it once every task run was recorded.
    """
    prefect_defaults()
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
    """Stop log lines reaching the terminal; they still reach the Prefect API.

    An interrupted command's last line is its own.
    """
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL + 1)


@contextmanager
def interruptible() -> Iterator[None]:
    """Around a flow call: SIGINT and SIGTERM remove what the running ETL runs staged, then end the command.

    The logs are silenced and :class:`Interrupted` raised; ``main()`` prints the one line and exits 130 or 143.
    """
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
        fail(f"{option}: {quoted(text)} is not a date (YYYY-MM-DD)")


def parse_time(text: str, option: str) -> datetime:
    """An ISO date or date-time; UTC unless it names its offset."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option}: {quoted(text)} is not a date or time (YYYY-MM-DD[THH:MM[:SS]][+00:00])")
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def dataset_name(name_or_path: str) -> str:
    """The ``name:`` of the dataset that ``-d`` names (a name under config/datasets/ or a path to its YAML).

    Keys are stored under this name, the one `etl run` looks them up by; an unknown dataset is a ``ConfigError``.
    """
    from config.loader import load_dataset

    return load_dataset(name_or_path).name


def check_config(profile: str, kind: str, name: str, preflight: bool = True) -> None:
    """Load the profile and a job's YAML, then run the job's preflight, before a flow starts.

    A user's mistake is a ``ConfigError`` listing every problem, one line each, not a trace (and the Prefect server
    is not started for it).

    Args:
        profile: profile name or path.
        kind: the job's folder under config/: datasets, events, sources or trends.
        name: the job's name or path.
        preflight: also check the resources the job uses (source, secrets, bucket, tables, broker…).
    """
    from config import loader
    from config.errors import ConfigError

    loaders: dict[str, Callable[[str], DatasetConfig | EventsConfig | FileSourceConfig | TrendConfig]] = {
        "datasets": loader.load_dataset,
        "events": loader.load_events,
        "sources": loader.load_file_source,
        "trends": loader.load_trends,
    }
    load = loaders[kind]
    prof = loader.load_profile(profile)
    job = load(name)
    prefect_defaults()
    if preflight:
        from tasks.preflight import problems_before_run

        problems = problems_before_run(job, prof)
        if problems:
            raise ConfigError(problems)
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
