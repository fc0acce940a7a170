"""The temporary Prefect server a command's flows run against when no Prefect API is configured.

Prefect 3.9 without ``PREFECT_API_URL`` starts a temporary server subprocess on a process's first API call and
stops it at interpreter exit. Two things go wrong with that, both seen in a first run:

- The server's task run recorder writes task runs from the events clients send, one event per write by default,
  and lags behind a busy run (about 4 s after a 120-key run, 30 s after a 1,000-key run here). Stopping the
  server cancels it mid-write: ``ERROR … task_run_recorder - Error flushing 1 events`` with two tracebacks, and
  the task runs still queued never reach the database.
- The subprocess is a per-process singleton whose ``start()`` is not thread-safe: two flows started at once from
  two threads (``etl backfill --parallel 2``) each start one, and only the last is stopped at exit.

So a command that runs flows starts one server itself, before any flow (:func:`ensure_api`): every thread, and
every Dask worker process through the environment, uses it. The recorder writes in batches (100 events, flushed
every half second), which keeps it level with a 1,000-key run. At the end (:func:`stop_api`) the client's event
and log workers are drained, the command waits until the task runs of the flow runs it watched are all recorded
in a final state and their counts stay still for a second, and only then stops the server. The server runs in its
own session (a Ctrl-C at the terminal reaches the command, which stops it in order) and is sent SIGTERM by the
kernel if the command dies (Linux), so no server outlives its command.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer

RECORDER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "0.5",
}
"""Batched writes keep the recorder level with a busy run (one write per event falls behind)."""

QUIET_SECONDS = 1.0
"""Counts unchanged for this long, with every task run final: nothing is left to record (> the flush interval)."""

FINAL = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]

# Runs the server with the kernel's promise to SIGTERM it when the command that started it dies (Linux).
_BOOT = (
    "import ctypes, os, runpy, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"  # PR_SET_PDEATHSIG
    "    if os.getppid() != int(os.environ['KEYFLOW_SERVER_PARENT']): sys.exit(0)\n"
    "sys.argv = ['uvicorn', *sys.argv[1:]]\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


_lock = threading.Lock()
_enabled = False
_server: SubprocessASGIServer | None = None
_started = 0.0
_watched: set[UUID] = set()


def enable() -> None:
    """Let :func:`ensure_api` start a server: the ``keyflow`` command does, as it also stops it (:func:`stop_api`).

    Code that calls the commands in-process (tests, scripts) keeps Prefect's own behaviour.
    """
    global _enabled
    _enabled = True


def ensure_api() -> str | None:
    """Start the local server unless a Prefect API is configured (or ephemeral mode is off); its URL, or None.

    Safe to call more than once: the first call starts it, the others return its URL. Does nothing until
    :func:`enable` was called.
    """
    global _server, _started
    with _lock:
        if _server is not None:
            return _server.api_url
        if not _enabled:
            return None
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return None
        started = time.perf_counter()
        server = _local_server(_free_port())
        server.start()
        os.environ["PREFECT_API_URL"] = server.api_url  # threads and Dask worker processes see it too
        os.environ.setdefault("PREFECT_UI_URL", "")  # no "View at" link: the server and its UI end with the command
        import prefect.context

        prefect.context.refresh_global_settings_context()
        _server, _started = server, time.perf_counter() - started
        return server.api_url


def startup_seconds() -> float:
    """How long :func:`ensure_api` took to start the server (0 when none was started)."""
    return _started


def watch(flow_run_id: UUID | str | None) -> None:
    """Wait for this flow run's task runs to be recorded before the server stops."""
    if flow_run_id is not None and _server is not None:
        with _lock:
            _watched.add(UUID(str(flow_run_id)))


def stop_api(timeout: float = 60.0, interrupted: bool = False) -> None:
    """Drain the client's events and logs, wait until the watched runs' task runs are recorded, stop the server.

    An ``interrupted`` command waits only until the counts stop changing (a task run killed with its process
    never reaches a final state), and stops sending logs once drained: flows still ending on other threads must not
    print failed deliveries after the command's last line.
    """
    global _server
    with _lock:
        server, _server = _server, None
        watched = sorted(_watched)
        _watched.clear()
    if server is None:
        return
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogHandler, APILogWorker

        deadline = time.monotonic() + timeout
        EventsWorker.drain_all(timeout=timeout / 2)
        APILogWorker.drain_all(timeout=timeout / 2)
        if interrupted:
            for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
                for handler in list(getattr(logger, "handlers", [])):
                    if isinstance(handler, APILogHandler):
                        logger.removeHandler(handler)
        if watched:
            asyncio.run(_recorded(watched, deadline, require_final=not interrupted))
    finally:
        # PREFECT_API_URL keeps naming the stopped server: a flow still running on another thread (an interrupted
        # backfill's) then fails to reach it, instead of Prefect starting a server of its own that nobody stops.
        server.stop()


async def _recorded(flow_runs: list[UUID], deadline: float, require_final: bool) -> None:
    """Poll the task run counts of ``flow_runs`` until all are final and nothing changed for QUIET_SECONDS."""
    from prefect.client.orchestration import get_client

    flow_filter = {"flow_runs": {"id": {"any_": [str(f) for f in flow_runs]}}}
    final_filter = {**flow_filter, "task_runs": {"state": {"type": {"any_": FINAL}}}}
    last: tuple[int, int] | None = None
    quiet_since = time.monotonic()
    async with get_client() as client:
        while time.monotonic() < deadline:
            total = (await client._client.post("/task_runs/count", json=flow_filter)).json()
            final = (await client._client.post("/task_runs/count", json=final_filter)).json()
            now = time.monotonic()
            if (total, final) != last:
                last, quiet_since = (total, final), now
            elif (final == total or not require_final) and now - quiet_since >= QUIET_SECONDS:
                return
            await asyncio.sleep(0.2)


def _local_server(port: int) -> SubprocessASGIServer:
    """Prefect's temporary server, started in its own session, tied to this process and stopped in order.

    Built here, not at import: importing Prefect's server costs a second that a command with an API URL skips.
    """
    from prefect.server.api.server import SubprocessASGIServer

    class LocalServer(SubprocessASGIServer):
        """See :func:`_local_server`."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
                **RECORDER_SETTINGS,
                "KEYFLOW_SERVER_PARENT": str(os.getpid()),
            }
            env.pop("PREFECT_API_URL", None)
            args = [
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ]
            return subprocess.Popen([sys.executable, "-c", _BOOT, *args], env=env, start_new_session=True)

        def stop(self) -> None:
            """Stop the server (SIGTERM, then SIGKILL after 10 s) and forget it."""
            process, self.server_process = self.server_process, None
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._instances.pop(getattr(self, "_instance_key", self.port), None)
            self.running = False

    return LocalServer(port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
