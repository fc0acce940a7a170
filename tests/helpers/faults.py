"""Faults injected into real services at a chosen moment of a run: a watcher that waits for a statement, then acts.

The moment is found the way an operator would see it: a statement running in the server's process list (the
extraction's ``COPY (SELECT … FROM <source>)``, the load's ``COPY <target> … FROM STDIN``). Sources and targets are
slowed by a server-side sleep per row, so a run spends seconds where the fault is aimed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2


class WhenRunning(threading.Thread):
    """Call ``act`` once, the first time ``running()`` sees the statement; give up after ``seconds``."""

    def __init__(self, running: Callable[[], Any], act: Callable[[Any], None], seconds: float = 120) -> None:
        super().__init__(name="keyflow-fault", daemon=True)
        self.running = running
        self.act = act
        self.seconds = seconds
        self.fired_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Poll until the statement runs, then inject the fault."""
        deadline = time.monotonic() + self.seconds
        try:
            while time.monotonic() < deadline:
                found = self.running()
                if found:
                    self.fired_at = time.monotonic()
                    self.act(found)
                    return
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test through `check`
            self.error = exc

    def check(self) -> None:
        """Fail the test when the fault was never injected (the run was too quick) or injecting it failed."""
        self.join(timeout=120)
        if self.error is not None:
            raise AssertionError(f"injecting the fault failed: {self.error!r}") from self.error
        assert self.fired_at is not None, "the statement never ran while the fault waited for it"


def pg_backends(dsn: str, pattern: str) -> Callable[[], list[int]]:
    """A probe: the pids of active backends (other than its own) whose query matches the LIKE ``pattern``."""

    def probe() -> list[int]:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() "
                    "AND query ILIKE %s",
                    (pattern,),
                )
                return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()

    return probe


def pg_terminate(dsn: str) -> Callable[[list[int]], None]:
    """An action: ``pg_terminate_backend`` on the pids found (what an administrator or a failover does to them)."""

    def act(pids: list[int]) -> None:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for pid in pids:
                    cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            conn.close()

    return act


def restart(server: Any, down_seconds: float) -> Callable[[Any], None]:
    """An action: stop ``server`` (a private one), leave it down ``down_seconds``, start it again."""

    def act(_: Any) -> None:
        server.stop()
        time.sleep(down_seconds)
        server.start()

    return act


PG_SLOW_READ = """
CREATE OR REPLACE FUNCTION {schema}.keyflow_slow(seconds double precision) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM nextval('{schema}.keyflow_rows_read'); PERFORM pg_sleep(seconds);
RETURN true; END $$
"""
PG_SLOW_WRITE = """
CREATE OR REPLACE FUNCTION {schema}.keyflow_slow_row() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(TG_ARGV[0]::double precision); RETURN NEW; END $$
"""


def slow_pg_view(conn: Any, schema: str, table: str, view: str, seconds: float) -> None:
    """``view``: the rows of ``table``, each read sleeping ``seconds`` and counted in ``schema.keyflow_rows_read``."""
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        cur.execute(f"CREATE SEQUENCE IF NOT EXISTS {schema}.keyflow_rows_read")
        cur.execute(PG_SLOW_READ.format(schema=schema))
        cur.execute(f"CREATE VIEW {view} AS SELECT * FROM {table} WHERE {schema}.keyflow_slow({seconds})")


def rows_read(conn: Any, schema: str) -> int:
    """How many source rows the slow view has given out so far."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {schema}.keyflow_rows_read")
        return int(cur.fetchone()[0])


def slow_pg_inserts(conn: Any, schema: str, table: str, seconds: float) -> None:
    """Each row inserted into ``schema.table`` sleeps ``seconds`` (a load that takes a while)."""
    with conn.cursor() as cur:
        cur.execute(PG_SLOW_WRITE.format(schema=schema))
        cur.execute(
            f"CREATE TRIGGER keyflow_slow BEFORE INSERT ON {schema}.{table} FOR EACH ROW "
            f"EXECUTE FUNCTION {schema}.keyflow_slow_row('{seconds}')"
        )
