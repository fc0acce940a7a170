"""What an ETL run leaves behind, and who removes it.

- While a run stages and loads, :func:`staged_run` keeps a lease object fresh under its run prefix
  (``<prefix>/<dataset>/<run_id>/_lease.json``, renewed every 30 s by a thread of the flow's process). When SIGINT
  or SIGTERM interrupts the run, it removes what the run staged before the interrupt goes on: the staging gate
  closes (uploads in flight finish, no new one starts), the run prefix is deleted, the local part folders go. Then
  Prefect reports the run (Cancelled when a worker cancelled it, else Crashed) and the CLI exits 130 or 143.
- What a killed run left (SIGKILL, a lost machine) is found by :func:`find_leftovers` for ``keyflow cleanup``: a run
  is removed only when its lease is stale (no process renewed it for :data:`LEASE_SECONDS`, or the process holding
  it on this host is gone) and nothing under it is younger than ``--older-than``. A run that is still loading keeps
  renewing its lease, however long the load takes.
- The next ETL run of the same dataset sweeps such runs at its start (:func:`sweep_dead_runs`), without waiting for
  ``--older-than``: a run whose lease is stale or whose holder on this host is gone, with its incomplete uploads
  and the local part folders of dead processes. A run with a fresh lease (a live run), a run without a lease
  (``keep_staged``) and a run whose Data API load is still pending in the statement ledger are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from config.errors import KeyflowError
from config.models import Profile
from tasks.io.objectstore import ObjectStore
from tasks.io.stager import GATE, LOCAL_PREFIX
from tasks.resources import Resources, object_store_for
from tasks.transforms.paths import join_under
from tasks.transforms.staging import LEASE, StagedRun, lease_record, run_of, run_prefix, staged_runs

HEARTBEAT_SECONDS = 30.0
"""How often a running ETL run renews its lease."""

LEASE_SECONDS = 300.0
"""A lease not renewed for this long belongs to a dead process (ten missed renewals: room for clock skew)."""

GATE_SECONDS = 30.0
"""On an interrupt, how long uploads in flight may take to finish before the run prefix is deleted anyway."""

log = logging.getLogger("keyflow")


# --- a running run: its lease, and its removal on SIGINT / SIGTERM


class RunLease:
    """The lease of one running ETL run: written now, renewed by a daemon thread, deleted when the run ends."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        run_id: str,
        heartbeat: float = HEARTBEAT_SECONDS,
        seconds: float = LEASE_SECONDS,
    ) -> None:
        self.store = store
        self.key = prefix + LEASE
        self.run_id = run_id
        self.heartbeat = heartbeat
        self.seconds = seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write the lease (before anything is staged), then keep renewing it."""
        self.renew()
        self._thread = threading.Thread(target=self._keep, name=f"keyflow-lease-{self.run_id}", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Write the lease again, unless the process is being interrupted."""
        with GATE.upload():
            self.store.put_bytes(
                lease_record(self.run_id, self.owner, datetime.now(UTC), self.seconds), self.key, "application/json"
            )

    def halt(self) -> None:
        """Stop renewing (the lease is left to expire, or to go with its run prefix)."""
        self._stop.set()

    def release(self) -> None:
        """Stop renewing and delete the lease: the run is over."""
        self.halt()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.store.delete(self.key)
        except KeyflowError as exc:  # the run's result stands; a stale lease only delays `keyflow cleanup`
            log.warning("Could not delete the lease %s: %s", self.key, exc)

    def _keep(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.renew()
            except KeyflowError as exc:
                if GATE.closed:
                    return
                log.warning("Could not renew the lease %s: %s", self.key, exc)


@dataclass(frozen=True)
class RemovedRun:
    """What an interrupt removed of one run: its id, where it staged, and how many objects were there."""

    run_id: str
    uri: str
    objects: int
    error: str = ""


@dataclass
class _Active:
    store: ObjectStore
    prefix: str
    run_id: str
    lease: RunLease


_lock = threading.Lock()
_active: dict[str, _Active] = {}
_removed: list[RemovedRun] = []
_hooks: list[Callable[[], None]] = []


@contextmanager
def staged_run(resources: Resources, dataset: str, run_id: str) -> Iterator[None]:
    """While an ETL run stages and loads: keep its lease fresh; if the run is interrupted, remove what it staged.

    An interrupt reaches the flow's thread as an exception: ``KeyboardInterrupt`` (SIGINT), Prefect's
    ``TerminationSignal`` (SIGTERM: Prefect's own handler, which a worker's cancellation needs in place), or the
    CLI's ``Interrupted``. Any ``BaseException`` that is not an ``Exception`` leaving the block removes the runs,
    then goes on. A flow on another thread (a backfill's dates) is reached through :func:`remove_active_runs` by
    the CLI's handler.
    """
    store = resources.object_store()
    prefix = run_prefix(resources.profile.prefix, dataset, run_id)
    lease = RunLease(store, prefix, run_id)
    lease.start()
    with _lock:
        _active[prefix] = _Active(store, prefix, run_id, lease)
    try:
        yield
    except Exception:
        raise
    except BaseException as exc:
        _interrupted(exc)
        raise
    finally:
        with _lock:
            active = _active.pop(prefix, None)
        if active is not None:  # not removed by an interrupt: the run ended, its lease goes
            lease.release()


def _interrupted(exc: BaseException) -> None:
    with _lock:
        hooks = list(_hooks)
    for hook in hooks:  # first: the CLI silences the terminal before the tasks fail at the closed gate
        hook()
    removed = remove_active_runs()
    if removed:
        logger: Any
        try:
            logger = get_run_logger()
        except MissingContextError:
            logger = log
        logger.warning("Interrupted (%s): %s", type(exc).__name__, describe(removed))


def remove_active_runs(timeout: float = GATE_SECONDS) -> list[RemovedRun]:
    """Stop staging in this process and delete everything its running runs staged, and the local part folders.

    Idempotent: a second call finds nothing left. Every removal is remembered for :func:`interrupted_runs`.
    """
    drained = GATE.close(timeout)
    with _lock:
        runs = list(_active.values())
        _active.clear()
    removed = []
    for run in runs:
        run.lease.halt()
        uri = f"s3://{run.store.bucket}/{run.prefix}"
        try:
            n = run.store.delete_prefix(run.prefix)
            removed.append(RemovedRun(run.run_id, uri, n, "" if drained else "an upload was still running"))
        except KeyflowError as exc:
            removed.append(RemovedRun(run.run_id, uri, 0, str(exc)))
    GATE.remove_folders()
    with _lock:
        _removed.extend(removed)
    return removed


def interrupted_runs() -> list[RemovedRun]:
    """Every run an interrupt removed in this process, in order."""
    with _lock:
        return list(_removed)


def on_interrupt(hook: Callable[[], None]) -> None:
    """Call ``hook()`` when a run is interrupted, first (before staging stops and the runs are removed)."""
    with _lock:
        if hook not in _hooks:
            _hooks.append(hook)


def describe(removed: list[RemovedRun]) -> str:
    """One line: ``removed 16 staged object(s) of run 2017-03-20-…`` (or what could not be removed)."""
    if not removed:
        return "no run had staged anything"
    n = sum(r.objects for r in removed)
    runs = ", ".join(r.run_id for r in removed)
    line = f"removed {n} staged object(s) of run{'s' if len(removed) > 1 else ''} {runs}"
    errors = [r.error for r in removed if r.error]
    return line + (f" ({errors[0]}; `keyflow cleanup` removes what is left)" if errors else "")


# --- what a killed run left: `keyflow cleanup`


@dataclass(frozen=True)
class LocalFolder:
    """A local part folder of a process that is gone."""

    path: Path
    pid: int


@dataclass(frozen=True)
class Leftovers:
    """What ``keyflow cleanup`` found: runs to remove, runs kept (and why), incomplete uploads, local folders."""

    bucket: str
    remove: list[StagedRun] = field(default_factory=list)
    keep: list[tuple[StagedRun, str]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    folders: list[LocalFolder] = field(default_factory=list)


def find_leftovers(
    profile: Profile,
    older_than: timedelta = timedelta(hours=24),
    now: datetime | None = None,
    lease_seconds: float = LEASE_SECONDS,
) -> Leftovers:
    """What ``keyflow cleanup`` would remove under the profile's staging prefix, and what it keeps and why.

    A run goes when its lease is stale and its newest object older than ``older_than``; its incomplete uploads go
    with it; so do the local part folders of dead processes.
    """
    now = now or datetime.now(UTC)
    store = object_store_for(profile)
    prefix = profile.prefix.strip("/") + "/"
    runs = staged_runs(profile.prefix, store.list_objects(prefix))
    found = Leftovers(store.bucket)
    for run in runs:
        if run.live(now, lease_seconds) and not _holder_gone(store, run):
            age = (now - run.lease_renewed).total_seconds() if run.lease_renewed else 0.0
            found.keep.append((run, f"running: its lease was renewed {age:.0f} s ago"))
        elif now - run.newest < older_than:
            found.keep.append((run, f"written {_ago(now - run.newest)} ago, younger than {_ago(older_than)}"))
        else:
            found.remove.append(run)
    kept = {run.prefix for run, _ in found.keep}
    for upload in store.incomplete_uploads(prefix):
        owner = run_of(profile.prefix, str(upload["Key"]))
        if owner is not None and owner not in kept and now - upload["Initiated"] >= older_than:
            found.uploads.append(upload)
    found.folders.extend(_dead_folders())
    return found


def remove_leftovers(profile: Profile, found: Leftovers) -> int:
    """Delete the runs, abort the uploads and remove the local folders ``found`` lists; returns objects deleted."""
    store = object_store_for(profile)
    deleted = sum(store.delete_prefix(run.prefix) for run in found.remove)
    for upload in found.uploads:
        store.abort_upload(str(upload["Key"]), str(upload["UploadId"]))
    for folder in found.folders:
        shutil.rmtree(folder.path, ignore_errors=True)
    return deleted


# --- what killed runs of a dataset left, swept by its next run


@dataclass(frozen=True)
class Swept:
    """What :func:`sweep_dead_runs` removed: the dead runs, objects deleted, uploads aborted, local folders."""

    runs: tuple[str, ...] = ()
    objects: int = 0
    uploads: int = 0
    folders: int = 0

    def line(self, dataset: str) -> str:
        """One log line naming what went."""
        what = []
        if self.runs:
            runs = f"run{'s' if len(self.runs) > 1 else ''} {', '.join(self.runs)}"
            what.append(f"{self.objects} staged object(s) of {runs}")
        if self.uploads:
            what.append(f"{self.uploads} incomplete upload(s)")
        if self.folders:
            what.append(f"{self.folders} local part folder(s) of dead processes")
        return f"Swept what killed runs of {dataset} left: " + "; ".join(what)


def dead_runs(
    resources: Resources, dataset: str, now: datetime | None = None, lease_seconds: float = LEASE_SECONDS
) -> list[StagedRun]:
    """Runs of ``dataset`` that a killed process left: a lease no one renews, or whose holder on this host is gone.

    Never a run with a fresh lease held by a live process (it is loading), nor a run without a lease (its staged
    files were kept on purpose, or its removal failed after a load: `keyflow cleanup` decides), nor a run whose
    Data API load is pending in the statement ledger (the next load of its key waits for that statement).
    """
    now = now or datetime.now(UTC)
    store, prof = resources.object_store(), resources.profile
    runs = staged_runs(prof.prefix, store.list_objects(join_under(prof.prefix, dataset) + "/"))
    pending = _pending_loads(store, prof.prefix, dataset)
    return [
        run
        for run in runs
        if run.lease_renewed is not None
        and run.run_id not in pending
        and (not run.live(now, lease_seconds) or _holder_gone(store, run))
    ]


def _pending_loads(store: ObjectStore, prefix: str, dataset: str) -> set[str]:
    """Run ids whose Data API load of some key was submitted and not yet resolved (``tasks/io/redshift.py``)."""
    runs = set()
    for key in store.list_keys(join_under(prefix, f"_loads/{dataset}") + "/"):
        if key.endswith("/statement.json"):
            try:
                runs.add(str(json.loads(store.get_bytes(key)).get("run_id", "")))
            except (KeyflowError, ValueError, AttributeError):
                continue
    return runs


@task(name="sweep_dead_runs")
def sweep_dead_runs(resources: Resources, dataset: str) -> Swept:
    """Before a run stages: remove what killed runs of ``dataset`` left, and say so in one line.

    Best effort: a failure is a warning (``keyflow cleanup`` removes the rest later), never a failed run.
    """
    logger = get_run_logger()
    store, prof = resources.object_store(), resources.profile
    runs: list[StagedRun] = []
    deleted = aborted = 0
    try:
        for run in dead_runs(resources, dataset):
            deleted += store.delete_prefix(run.prefix)
            runs.append(run)
        gone = {run.prefix for run in runs}
        if gone:  # a killed multipart upload's parts are not objects yet: only the upload listing shows them
            for upload in store.incomplete_uploads(join_under(prof.prefix, dataset) + "/"):
                if run_of(prof.prefix, str(upload["Key"])) in gone:
                    store.abort_upload(str(upload["Key"]), str(upload["UploadId"]))
                    aborted += 1
    except KeyflowError as exc:
        logger.warning("Leftovers of killed runs not all swept (`keyflow cleanup` removes the rest): %s", exc)
    folders = _dead_folders()
    for folder in folders:
        shutil.rmtree(folder.path, ignore_errors=True)
    swept = Swept(tuple(run.run_id for run in runs), deleted, aborted, len(folders))
    if runs or folders:
        logger.info("%s", swept.line(dataset))
    return swept


def _holder_gone(store: ObjectStore, run: StagedRun) -> bool:
    """Whether a fresh lease belongs to a process of this host that is gone (killed): no need to wait it out."""
    try:
        owner = str(json.loads(store.get_bytes(run.prefix + LEASE)).get("owner", ""))
    except (KeyflowError, ValueError, AttributeError):
        return False
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _dead_folders() -> list[LocalFolder]:
    folders = []
    for path in sorted(Path(tempfile.gettempdir()).glob(f"{LOCAL_PREFIX}*")):
        pid_text = path.name[len(LOCAL_PREFIX) :].split("-", 1)[0]
        if path.is_dir() and pid_text.isdigit() and not _alive(int(pid_text)):
            folders.append(LocalFolder(path, int(pid_text)))
    return folders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _ago(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
