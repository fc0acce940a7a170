"""What the commands share: the common options, reading dates, and checking YAML before Prefect starts."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from config.errors import quoted
from flows.cli.output import fail

if TYPE_CHECKING:
    from config.models import DatasetConfig, EventsConfig, FileSourceConfig, TrendConfig

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="profile name or path (config/profiles/)")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="dataset name or path (config/datasets/)")]
JobOpt = Annotated[str, typer.Option("--job", "-j", help="trend job name or path (config/trends/)")]


def quiet_prefect() -> None:
    """Offline-friendly Prefect defaults, set before Prefect is imported (a user's own settings win)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")


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
    quiet_prefect()
    if preflight:
        from tasks.preflight import problems_before_run

        problems = problems_before_run(job, prof)
        if problems:
            raise ConfigError(problems)
