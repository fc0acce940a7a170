"""Everything the commands print: error lines, tables, JSON, and the exit code a flow's final state maps to.

Exit codes: 0 ok, 1 a key or file failed, 2 a config or usage problem, 3 the flow family is paused. A known error is
one line and no traceback, unless `keyflow --debug` asked for the traceback too (:func:`set_debug`).
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from config.errors import ConfigError, KeyflowError, RunFailedError, first_line

if TYPE_CHECKING:
    from prefect.states import State

    from tasks.audit import Finding
    from tasks.preflight import CheckReport
    from tasks.transforms.keys import CampaignKey

OK, FAILED, CONFIG, PAUSED = 0, 1, 2, 3

out = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


_debug = False


def set_debug(on: bool) -> None:
    """`keyflow --debug`: every error a command reports prints its traceback before its line."""
    global _debug
    _debug = on


def _show_traceback(exc: BaseException | None) -> None:
    if _debug and exc is not None and not isinstance(exc, typer.Exit):
        err.print("".join(traceback.format_exception(exc)).rstrip(), markup=False, highlight=False, soft_wrap=True)


def error(line: str) -> None:
    """Print one ``error:`` line on standard error (every error a command reports goes through here)."""
    err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)


def warning(line: str) -> None:
    """Print one ``warning:`` line on standard error (the command goes on; its exit code is unchanged)."""
    err.print(Text.assemble(("warning:", "yellow"), " ", line), highlight=False, soft_wrap=True)


def fail(*lines: str, code: int = CONFIG, cause: BaseException | None = None) -> NoReturn:
    """Print each line as an error and end the command with ``code`` (2, a usage or config problem, unless told).

    With `--debug`, the traceback of ``cause`` (by default the exception being handled, if any) comes first.
    """
    _show_traceback(cause or sys.exc_info()[1])
    for line in lines:
        error(line)
    raise typer.Exit(code) from None


def exit_code(exc: BaseException) -> int:
    """2 for a config problem, 1 for any other error."""
    return CONFIG if isinstance(exc, ConfigError) else FAILED


def fail_with(exc: KeyflowError) -> NoReturn:
    """A user's mistake or a failed call: one line per problem, no traceback, its exit code."""
    fail(*(exc.problems if isinstance(exc, ConfigError) else [str(exc)]), code=exit_code(exc), cause=exc)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command so that a ``KeyflowError`` it raises is printed by :func:`fail_with` and sets the exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except KeyflowError as exc:
            fail_with(exc)

    return run


@dataclass(frozen=True)
class Outcome:
    """A flow run that went to its end: what it returned and the exit code (0 completed, 1 a key or file failed)."""

    data: Any
    code: int


def finish(
    state: State[Any],
    family: str,
    resume_hint: str = "switches them back on",
    on_paused: Callable[[Any], None] | None = None,
) -> Outcome:
    """Turn a flow's final state into its data and exit code.

    A run that ended in an error prints it (one line each) and exits 1, or 2 for a config error; a run cancelled by
    the kill switch prints how to resume the family, calls ``on_paused`` with what the run returned, and exits 3.
    """
    from flows.local_server import watch

    watch(state.state_details.flow_run_id)  # the local server stops only once this run's task runs are recorded
    result: Any = state.result(raise_on_failure=False)
    if isinstance(result, RunFailedError):  # the run went to its end: its rows say which keys failed
        return Outcome(result.data, FAILED)
    if isinstance(result, BaseException):
        fail(*(str(result).strip() or type(result).__name__).splitlines(), code=exit_code(result), cause=result)
    if state.is_cancelled():
        err.print(f"[yellow]{state.message}[/yellow] (`keyflow resume {family}` {resume_hint})")
        if on_paused is not None:
            on_paused(result)
        raise typer.Exit(PAUSED)
    return Outcome(result, OK if state.is_completed() else FAILED)


def print_json(data: Any) -> None:
    """The command's data as one JSON line on standard output (for scripts)."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")


def human_bytes(n: int) -> str:
    """A byte count in the shortest unit that keeps three significant figures (``0 B``, ``135 KB``, ``1.27 GB``)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            figure = f"{int(size)}" if unit == "B" else f"{size:.3g}" if size < 1000 else f"{size:,.0f}"
            return f"{figure} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def print_summary(rows: list[dict[str, Any]], title: str) -> None:
    """The per-key summary table, narrow enough for an 80-column terminal, then each failed key's whole error.

    The detail column is cut to the width left; ``--json`` and the run's artifact keep every figure and message.
    """
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("key", max_width=16, no_wrap=True, overflow="ellipsis")
    table.add_column("status", no_wrap=True)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("staged", justify="right", no_wrap=True)
    table.add_column("s", justify="right", no_wrap=True)
    # The other columns take at most about 60 characters: the detail gets the rest of the terminal.
    table.add_column("detail", no_wrap=True, overflow="ellipsis", max_width=max(16, out.width - 62))
    failed = []
    for r in rows:
        ok = r["status"] == "loaded"
        if ok:
            detail = f"{r['rows_filtered']:,} filtered" if r["rows_filtered"] else ""
        else:
            detail = first_line(r["error"], r["status"])
            failed.append(r)
        table.add_row(
            r["key"],
            f"[green]{r['status']}[/green]" if ok else f"[red]{r['status']}[/red]",
            f"{r['rows_loaded']:,}" if ok else f"{r['rows_extracted']:,}",
            human_bytes(r["bytes_staged"]),
            f"{r['seconds']:.1f}",
            detail,
        )
    out.print(table)
    for r in failed:
        if r["status"] == "failed":
            message = r["error"] or "failed"
            error(message if repr(r["key"]) in message else f"key {r['key']!r}: {message}")


def print_dates(results: Iterable[Any], title: str) -> None:
    """One row per run date of an ETL backfill."""
    table = Table(title=title, title_justify="left")
    for col in ("date", "status", "keys", "detail"):
        table.add_column(col)
    for r in results:
        color = {"loaded": "green", "skipped": "cyan", "nothing": "cyan", "paused": "yellow"}.get(r.status, "red")
        table.add_row(str(r.run_date), f"[{color}]{r.status}[/{color}]", str(r.keys), r.message)
    out.print(table)


def print_hours(rows: Iterable[dict[str, Any]], title: str) -> None:
    """One row per hour of a trends backfill."""
    figures = ("files", "events", "counted", "late", "invalid", "duplicates", "rows")
    table = Table(title=title, title_justify="left")
    for col in ("hour", *figures):
        table.add_column(col, justify="left" if col == "hour" else "right")
    for r in rows:
        table.add_row(str(r["start"])[:16].replace("T", " "), *(f"{r[c]:,}" for c in figures))
    out.print(table)


def print_compaction(rows: Iterable[dict[str, Any]], title: str) -> None:
    """One row per hour of a trends compaction."""
    figures = ("files_in", "files_out", "events", "duplicates", "invalid")
    table = Table(title=title, title_justify="left")
    for col in ("hour", *figures, "note"):
        table.add_column(col, justify="right" if col in figures else "left")
    for r in rows:
        note = r.get("reason") or f"generation {r['generation']}, {r['bytes_out']:,} bytes"
        table.add_row(str(r["hour"])[:16].replace("T", " "), *(f"{r.get(c, 0):,}" for c in figures), note)
    out.print(table)


def print_ranking(ranking: Iterable[dict[str, Any]], title: str) -> None:
    """The top articles of one audience, best first."""
    table = Table(title=title, title_justify="left")
    for col in ("rank", "article", "score", "ctr", "impressions", "clicks", "velocity", "age min"):
        table.add_column(col, justify="left" if col == "article" else "right")
    for i, r in enumerate(ranking, 1):
        table.add_row(
            str(i),
            str(r["article_id"]),
            f"{r['score']:.4f}",
            f"{r['ctr']:.4f}",
            f"{r['impressions']:,}",
            f"{r['clicks']:,}",
            f"{r['velocity']:.2f}",
            f"{r['age_minutes']:.0f}",
        )
    out.print(table)


def print_files(rows: Iterable[dict[str, Any]], title: str) -> None:
    """One row per landing file of an ingestion run."""
    table = Table(title=title, title_justify="left")
    for col in ("file", "status", "rows in", "loaded", "rejected", "reason"):
        table.add_column(col, justify="right" if col in ("rows in", "loaded", "rejected") else "left", overflow="fold")
    for r in rows:
        table.add_row(
            r["file"],
            r["status"],
            f"{r['rows_in']:,}",
            f"{r['rows_loaded']:,}",
            f"{r['rows_rejected']:,}",
            r["reason"],
        )
    out.print(table)


def print_keys(keys: Iterable[CampaignKey]) -> None:
    """The keys of a dataset."""
    table = Table("key", "start", "end", "enabled", "params")
    for k in keys:
        table.add_row(k.key, str(k.start_date), str(k.end_date), "yes" if k.enabled else "no", json.dumps(k.params))
    out.print(table)


def print_findings(findings: Iterable[Finding]) -> None:
    """One greppable line per audit finding."""
    for f in findings:
        mark = "[green]ok  [/green]" if f.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {f.check}: {f.target}: {f.detail}", highlight=False, soft_wrap=True)


def print_check(report: CheckReport) -> None:
    """A checked job: one ``ok`` line with what was looked at and how long, else one error line per problem."""
    if report.ok:
        out.print(
            f"[green]ok[/green] {report.kind} {report.name} ({report.file}): {', '.join(report.checked)} "
            f"({report.seconds:.2f} s)",
            highlight=False,
            soft_wrap=True,
        )
        return
    for line in report.problems:
        error(line)


STATUS_COLORS = {"created": "green", "removed": "green", "exists": "cyan", "kept": "cyan", "differs": "red"}


def print_status(rows: Iterable[tuple[str, str]]) -> None:
    """One line per resource: a status (``created``, ``exists``, ``would create``, ``removed``…) and what."""
    for status, what in rows:
        color = STATUS_COLORS.get(status, "yellow")
        out.print(f"[{color}]{status:<12}[/{color}] {escape(what)}", highlight=False, soft_wrap=True)


def hint(line: str) -> None:
    """A line telling the user what to run next, on standard error."""
    err.print(line, highlight=False, soft_wrap=True, markup=False)


def interrupted(line: str) -> None:
    """The one line an interrupted command ends with: ``interrupted: removed 16 staged object(s) of run …``."""
    err.print(f"interrupted: {line}", highlight=False, soft_wrap=True, markup=False)
