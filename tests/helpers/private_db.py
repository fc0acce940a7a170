"""Database servers of a test's own, on free ports, that the test may stop and restart.

The shared PostgreSQL and MariaDB are never stopped (other tests use them at the same time): a test that restarts a
server mid-run starts one of these, from the binaries the shared services run from, in a temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers.services import free_port


def _as_service_user(user: str) -> dict[str, Any]:
    """Run a server as ``user`` when the tests run as root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def _wait_port(port: int, up: bool, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} still {'down' if up else 'up'} after {seconds} s")


class PrivatePostgres:
    """A PostgreSQL cluster of this test alone (trust auth, user postgres, database ``test``)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="keyflow-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.run_as = _as_service_user("postgres")
        if self.run_as:
            os.chown(self.dir, self.run_as["user"], self.run_as["group"])
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        """Its SQLAlchemy URL (database ``test``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    @property
    def dsn(self) -> str:
        """Its libpq DSN (database ``test``)."""
        return f"host=127.0.0.1 port={self.port} dbname=test user=postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / tool), *args], check=True, capture_output=True, timeout=120, cwd=self.dir, **self.run_as
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        """Stop the server at once (``-m fast``: every session is terminated, as in a failover)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        _wait_port(self.port, up=False)

    def create_database(self) -> None:
        """Create the database ``test``."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE test")
        conn.close()

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError, TimeoutError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateMariaDB:
    """A MariaDB server of this test alone (root without a password, database ``test``)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="keyflow-mariadb-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.socket = self.dir / "mysqld.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_root = ["--user=root"] if os.geteuid() == 0 else []  # mariadbd refuses root unless told
        subprocess.run(
            [
                shutil.which("mariadb-install-db") or "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.data}",
                *self._as_root,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )

    @property
    def url(self) -> str:
        """Its SQLAlchemy URL (database ``test``)."""
        return f"mysql://root@127.0.0.1:{self.port}/test"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.proc = subprocess.Popen(
            [
                mariadbd,
                "--no-defaults",
                f"--datadir={self.data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.socket}",
                f"--pid-file={self.dir / 'mysqld.pid'}",
                *self._as_root,
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                f"--log-error={self.dir / 'error.log'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        """Stop the server (SIGTERM: it ends every session and shuts down)."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
            self.proc = None
        _wait_port(self.port, up=False)

    def create_database(self) -> None:
        """Create the database ``test``."""
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS test")
        conn.close()

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePrefect:
    """A Prefect server of this test alone (its own SQLite database under a temporary PREFECT_HOME), restartable.

    The session's test harness serves every other test: only this one may be stopped.
    """

    def __init__(self, services: bool = False, settings: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="keyflow-prefect-"))
        self.port = free_port()
        self.services = services
        self.settings = settings or {}  # PREFECT_SERVER_… settings of this server (a test's cut-down waits)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its API URL."""
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        """The environment of a process that talks to this server (no other PREFECT_ setting leaks in)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return env | {
            "PREFECT_HOME": str(self.dir),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.dir / 'prefect.db'}",
        }

    def start(self) -> None:
        """Start the server and wait until its API answers."""
        import httpx

        prefect = str(Path(sys.executable).parent / "prefect")
        args = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui"]
        if not self.services:
            args.append("--no-services")
        with open(self.dir / "server.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(args, env=self.env() | self.settings, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.25)
        raise TimeoutError("prefect server did not answer within 120 s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self.proc = None
        _wait_port(self.port, up=False)

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        with contextlib.suppress(TimeoutError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
