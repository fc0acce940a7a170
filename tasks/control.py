"""Run control through Prefect global concurrency limits (shared by every run that talks to the same server).

- Kill switch: ``keyflow pause etl`` sets the limit ``keyflow-etl-switch`` to 0; runs then start no new key (keys
  already loading finish atomically) and new runs end at once as Cancelled. ``keyflow resume etl`` deletes it.
- Source guard: a profile's ``source_concurrency_limit`` names a limit that every extraction from that source holds
  a slot of, across all runs and machines (created with ``source_max_connections`` slots when missing).

Both checks fail open: when the Prefect API cannot be reached (a server restart, an outage), they try again for a
few seconds, then log a warning and let the run go on, so keys that load fine are never failed by the orchestrator.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound

from config.errors import RetryableError, first_line

T = TypeVar("T")

FAMILIES = ("etl", "trends", "ingest")


def switch_name(family: str) -> str:
    """The name of the global concurrency limit that switches ``family`` on and off."""
    return f"keyflow-{family}-switch"


@contextmanager
def _prefect_api() -> Iterator[SyncPrefectClient]:
    """A client of the Prefect API; a server that cannot be reached is one line naming its URL, not a traceback."""
    try:
        with get_client(sync_client=True) as client:
            yield client
    except httpx.TransportError as exc:
        from prefect.settings import PREFECT_API_URL

        raise RetryableError(
            f"Prefect API at {PREFECT_API_URL.value() or 'the temporary local server'}: cannot connect ({exc})"
        ) from exc


def pause(family: str) -> None:
    """Switch a flow family off.

    Raises:
        RetryableError: the Prefect API cannot be reached.
    """
    with _prefect_api() as client:
        client.upsert_global_concurrency_limit_by_name(switch_name(family), 0)


def resume(family: str) -> bool:
    """Switch a flow family back on; False when it was not paused.

    Raises:
        RetryableError: the Prefect API cannot be reached.
    """
    with _prefect_api() as client:
        try:
            client.delete_global_concurrency_limit_by_name(switch_name(family))
        except ObjectNotFound:
            return False
    return True


API_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Waits (seconds) between the attempts of a check before it fails open: an outage of a few seconds is ridden out."""


def api_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the Prefect API cannot answer now (refused, reset, timed out, a 5xx while it restarts).

    Prefect wraps some of these (``ConcurrencySlotAcquisitionError`` from a refused connection): the causes count.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.TransportError):
            return True
        if isinstance(seen, httpx.HTTPStatusError) and seen.response.status_code >= 500:
            return True
        seen = seen.__cause__
    return False


def _warn(message: str, *args: Any) -> None:
    """A warning in the run's log (the module's logger outside a run)."""
    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger("keyflow.control")
    logger.warning(message, *args)


def _fail_open(what: str, call: Callable[[], T], default: T, consequence: str) -> T:
    """``call()``, tried again while the Prefect API cannot be reached; ``default`` with a warning when it stays down.

    A kill-switch or limit check must not fail keys that are loading fine: a short outage is waited out (the
    delays of :data:`API_RETRY_DELAYS`), a longer one is logged and the run goes on.
    """
    for wait in (*API_RETRY_DELAYS, None):
        try:
            return call()
        except Exception as exc:
            if not api_unreachable(exc):
                raise
            if wait is None:
                _warn("Prefect API unreachable, %s; %s: %s", what, consequence, first_line(exc))
                return default
            time.sleep(wait)
    raise AssertionError("unreachable")


def _read_paused(family: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(switch_name(family))
        except ObjectNotFound:
            return False
    return bool(limit.active) and limit.limit == 0


def is_paused(family: str) -> bool:
    """True while the family's switch limit exists, is active and allows 0 slots.

    When the Prefect API stays unreachable, False with a warning: the run goes on (fails open).
    """
    return _fail_open(f"cannot read the {family} kill switch", lambda: _read_paused(family), False, "going on")


def _ensure(name: str, slots: int) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run may create it between our read and our create: theirs stands, as any existing one does.
            with suppress(ObjectAlreadyExists):
                client.upsert_global_concurrency_limit_by_name(name, max(slots, 1))


def ensure_limit(name: str, slots: int) -> None:
    """Create a global concurrency limit when it does not exist (an existing one is left as its owner set it).

    When the Prefect API stays unreachable, a warning: the run goes on (extractions then take no slot of it).
    """
    _fail_open(f"cannot check the limit {name!r}", lambda: _ensure(name, slots), None, "going on")


@contextmanager
def source_slot(name: str | None) -> Iterator[Any]:
    """Hold one slot of the source's global limit while extracting (no-op when the profile names none).

    When the Prefect API stays unreachable, the extraction goes on without a slot (a warning says so); a lease
    that cannot be renewed or released during an outage does not stop or fail it.
    """
    if not name:
        yield
        return
    guard: Any = None

    def acquire() -> Any:
        held = concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False)
        held.__enter__()
        return held

    guard = _fail_open(f"cannot take a slot of {name!r}", acquire, None, "extracting without one")
    error: tuple[Any, Any, Any] = (None, None, None)
    try:
        yield
    except BaseException:
        error = sys.exc_info()
        raise
    finally:
        if guard is not None:
            try:
                guard.__exit__(*error)
            except Exception as exc:
                if not api_unreachable(exc):
                    raise
                _warn("Prefect API unreachable, the slot of %r stays until its lease expires: %s", name, exc)
