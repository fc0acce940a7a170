"""The ``keyflow`` command: run the ETL, manage keys, validate YAML, run the embedded demo.

One module per command group (``etl``, ``keys``, ``trends``, ``events``, ``files``, ``security``, ``control``,
``demo``); :mod:`flows.cli.output` prints everything and maps errors and flow states to exit codes
(0 ok, 1 a key or file failed, 2 a config or usage problem, 3 paused). Commands call tasks and flows, never adapters.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from contextlib import suppress
from typing import Annotated, NoReturn

import typer

from config.errors import KeyflowError
from flows.cli import check, control, demo, security, setup
from flows.cli.common import Interrupted
from flows.cli.etl import etl_app
from flows.cli.events import events_app
from flows.cli.files import files_app
from flows.cli.keep_out import keep_out_what_the_command_does_not_use, keep_pandas_out
from flows.cli.keys import keys_app
from flows.cli.output import err, fail_with, interrupted, set_debug
from flows.cli.trends import trends_app
from flows.local_server import enable as enable_local_server

__all__ = ["app", "keep_pandas_out", "main"]

app = typer.Typer(
    help="keyflow: key-driven ETL from RDS to Redshift through S3, as Prefect flows.", no_args_is_help=True
)


@app.callback()
def options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="print the traceback of every error (one line each without it) and Prefect's log at DEBUG level",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="print only the summary and errors: no run log (Prefect's log level CRITICAL)"
        ),
    ] = False,
) -> None:
    """keyflow: key-driven ETL from RDS to Redshift through S3, as Prefect flows."""
    set_debug(debug)
    if debug:  # before any command imports Prefect, which reads its logging level once
        os.environ["PREFECT_LOGGING_LEVEL"] = "DEBUG"
    elif quiet:  # the summary and the CLI's own error lines say what a quiet user needs
        os.environ["PREFECT_LOGGING_LEVEL"] = "CRITICAL"


app.add_typer(etl_app, name="etl")
app.add_typer(keys_app, name="keys")
app.add_typer(trends_app, name="trends")
app.add_typer(events_app, name="events")
app.add_typer(files_app, name="files")
app.command("serve")(control.serve_cmd)
app.command("pause")(control.pause_cmd)
app.command("resume")(control.resume_cmd)
app.command("validate")(control.validate)
app.command("demo")(demo.demo)
app.command("keygen")(security.keygen)
app.command("decrypt")(security.decrypt)
app.command("audit")(security.audit_cmd)
app.command("check")(check.check_cmd)
app.command("setup")(setup.setup_cmd)
app.command("cleanup")(setup.cleanup_cmd)


def _bound_malloc_arenas() -> None:
    """Bound malloc arenas: glibc gives each thread its own, and with parallel keys that inflates RSS for nothing."""
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        import ctypes

        with suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX = 2


def _leave(code: int | str | None, join_threads: bool = True) -> NoReturn:
    """Exit without tearing the interpreter down module by module (0.4 s of every command after a flow run).

    What a normal exit does that matters still happens, in the same order: non-daemon threads are waited for and
    threading's exit hooks run (Prefect drains its log and event workers to the API there), then the atexit hooks
    (logging flushes its handlers), then stdout and stderr are flushed. An interrupted command does not wait for
    its threads (a backfill's other dates stop at the staging gate, or with the process).
    """
    if isinstance(code, str):
        err.print(code, markup=False, highlight=False, emoji=False, soft_wrap=True)  # as the interpreter prints it
        code = 1
    if join_threads:
        threading._shutdown()  # type: ignore[attr-defined]  # joins threads, runs threading's exit hooks (Prefect's drains)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code or 0)


def main() -> None:
    """Console-script entry point."""
    _bound_malloc_arenas()
    keep_out_what_the_command_does_not_use(sys.argv[1:])  # pandas for every command, numpy for the ETL's
    enable_local_server()  # flows run against one temporary Prefect server, stopped below, when no API is set
    code: int | str | None = 0
    stopped = False
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    except KeyflowError as exc:  # a user's mistake: one line each, no traceback
        try:
            fail_with(exc)
        except typer.Exit as stop:
            code = stop.exit_code
    except Interrupted as exc:  # SIGINT / SIGTERM during a flow: what it staged is gone; one line, 130 or 143
        from tasks.cleanup import describe, interrupted_runs

        interrupted(describe(interrupted_runs()))
        code, stopped = exc.code, True
    _stop_local_server(quick=stopped)
    _leave(code, join_threads=not stopped)


def _stop_local_server(quick: bool) -> None:
    """Stop the temporary Prefect server, if the command started one, once its flows' task runs are recorded."""
    from flows.local_server import stop_api

    with suppress(Exception, KeyboardInterrupt):  # the server is stopped whatever happened; the code stands
        stop_api(timeout=10, interrupted=True) if quick else stop_api()
