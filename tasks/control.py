"""Run control through Prefect global concurrency limits (shared by every run that talks to the same server).

- Kill switch: ``keyflow pause etl`` sets the limit ``keyflow-etl-switch`` to 0; runs then start no new key (keys
  already loading finish atomically) and new runs end at once as Cancelled. ``keyflow resume etl`` deletes it.
- Source guard: a profile's ``source_concurrency_limit`` names a limit that every extraction from that source holds
  a slot of, across all runs and machines (created with ``source_max_connections`` slots when missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from config.errors import RetryableError

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


def is_paused(family: str) -> bool:
    """True while the family's switch limit exists, is active and allows 0 slots."""
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(switch_name(family))
        except ObjectNotFound:
            return False
    return bool(limit.active) and limit.limit == 0


def ensure_limit(name: str, slots: int) -> None:
    """Create a global concurrency limit when it does not exist (an existing one is left as its owner set it)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run may create it between our read and our create: theirs stands, as any existing one does.
            with suppress(ObjectAlreadyExists):
                client.upsert_global_concurrency_limit_by_name(name, max(slots, 1))


@contextmanager
def source_slot(name: str | None) -> Iterator[Any]:
    """Hold one slot of the source's global limit while extracting (no-op when the profile names none)."""
    guard = concurrency(name, occupy=1, strict=True) if name else nullcontext()
    with guard:
        yield
