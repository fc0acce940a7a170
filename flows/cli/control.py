"""`keyflow pause`, `resume`, `serve` and `validate`: operate the scheduled flows and check their YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from config.errors import quoted
from flows.cli.common import quiet_prefect
from flows.cli.output import CONFIG, err, fail, out, reports_errors

FamilyArg = Annotated[str, typer.Argument(help="flow family: etl, trends or ingest")]


def _family(family: str) -> str:
    from tasks.control import FAMILIES

    if family not in FAMILIES:
        fail(f"unknown flow family {quoted(family)} (known: {', '.join(FAMILIES)})")
    quiet_prefect()
    return family


@reports_errors
def serve_cmd(
    file: Annotated[Path, typer.Option("--file", help="deployments file")] = Path("deployments/prefect.yaml"),
    names: Annotated[list[str] | None, typer.Option("--name", help="serve only this deployment (repeatable)")] = None,
) -> None:
    """Serve every deployment's schedule from this one process (Prefect `serve`), for teams without work pools."""
    quiet_prefect()
    from flows.serve import serve_all

    serve_all(file, names)


@reports_errors
def pause_cmd(family: FamilyArg) -> None:
    """Kill switch: runs of the family start no new key from now on; keys already loading finish atomically."""
    from tasks.control import pause

    pause(_family(family))
    out.print(f"Paused the {family} flows (global concurrency limit keyflow-{family}-switch = 0).")


@reports_errors
def resume_cmd(family: FamilyArg) -> None:
    """Switch a paused flow family back on."""
    from tasks.control import resume

    was = resume(_family(family))
    out.print(f"Resumed the {family} flows." if was else f"The {family} flows were not paused.")


@reports_errors
def validate(
    config_dir: Annotated[
        Path | None, typer.Option("--config-dir", help="folder with datasets/, profiles/, trends/, events/, sources/")
    ] = None,
) -> None:
    """Check every YAML (datasets, profiles, trends, events, sources); one line per problem, naming file and field."""
    from config.loader import validate_tree

    checked, problems = validate_tree(config_dir)
    for line in problems:
        err.print(line, highlight=False, soft_wrap=True, markup=False)
    if problems:
        err.print(f"{len(problems)} problem(s) in {checked} file(s)")
        raise typer.Exit(CONFIG)
    out.print(f"{checked} file(s) valid")
