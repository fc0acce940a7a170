"""Work units: which active keys share one extraction, one staged object set and one load. Pure.

A run's cost should grow with its rows, not its keys: thousands of small keys are packed, in key order, into units
of a bounded number of expected rows and keys, and a large key keeps a unit of its own. Each key keeps its own date
window inside a shared unit: the unit's predicate groups its keys by window (:func:`key_windows`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from config.errors import clip
from config.models import DatasetConfig
from tasks.transforms.keys import CampaignKey

LABEL_KEY_CHARS = 40  # a key in a unit's label is cut after this many characters


@dataclass(frozen=True)
class KeyWindow:
    """Keys of a unit that share one date window: ``start_date <= date <= end_date``."""

    start_date: date
    end_date: date
    keys: tuple[str, ...]


@dataclass(frozen=True)
class WorkUnit:
    """Keys extracted, staged and loaded together (one key, or many small ones), with their expected rows."""

    keys: tuple[CampaignKey, ...]
    expected_rows: int | None = None  # the keys' rows on the source, as counted when planning (None: not counted)
    dates: tuple[tuple[str, tuple[str, ...]], ...] = ()  # a backfill's: the run dates each key is loaded for

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a work unit holds at least one key")

    @property
    def counted(self) -> bool:
        """Whether its keys are counted and recorded one by one (a shared unit, or any unit of a backfill)."""
        return self.shared or bool(self.dates)

    def dates_of(self, key: str) -> tuple[str, ...]:
        """The run dates the ledger records for ``key`` (empty: the run's own date)."""
        return dict(self.dates).get(key, ())

    @property
    def shared(self) -> bool:
        """Whether several keys share the unit (a one-key unit is loaded as a key always was)."""
        return len(self.keys) > 1

    @property
    def names(self) -> list[str]:
        """The unit's keys, in order."""
        return [k.key for k in self.keys]

    @property
    def label(self) -> str:
        """How logs and the Prefect UI name the unit: ``K0001`` or ``K0001..K0250 (250 keys)``."""
        first = clip(self.keys[0].key, LABEL_KEY_CHARS)
        if not self.shared:
            return first
        return f"{first}..{clip(self.keys[-1].key, LABEL_KEY_CHARS)} ({len(self.keys)} keys)"

    @property
    def digest(self) -> str:
        """A short fingerprint of the unit's keys: its staging folder, unique within a run."""
        h = hashlib.sha1(usedforsecurity=False)
        for k in self.keys:
            h.update(k.key.encode() + b"\0")
        return h.hexdigest()[:16]

    def windows(self) -> list[KeyWindow]:
        """The unit's keys grouped by date window, in order of first appearance."""
        return key_windows(self.keys)


def key_windows(keys: Iterable[CampaignKey]) -> list[KeyWindow]:
    """Keys grouped by their ``(start_date, end_date)``; campaigns often share windows, so the groups are few."""
    groups: dict[tuple[date, date], list[str]] = {}
    for k in keys:
        groups.setdefault((k.start_date, k.end_date), []).append(k.key)
    return [KeyWindow(s, e, tuple(names)) for (s, e), names in groups.items()]


def window_params(windows: Sequence[KeyWindow]) -> dict[str, Any]:
    """The bound values of a keys predicate (:func:`tasks.transforms.sql.render_keys_predicate`).

    ``k<i>_<j>`` is key ``j`` of window ``i``, ``s<i>``/``e<i>`` the window's dates.
    """
    params: dict[str, Any] = {}
    for i, w in enumerate(windows):
        params[f"s{i}"], params[f"e{i}"] = w.start_date, w.end_date
        params.update({f"k{i}_{j}": key for j, key in enumerate(w.keys)})
    return params


def with_dates(units: Sequence[WorkUnit], dates: Mapping[str, Sequence[date]]) -> list[WorkUnit]:
    """The units, each carrying the run dates (ISO) the ledger records for its keys (a backfill over many dates)."""
    return [
        WorkUnit(u.keys, u.expected_rows, tuple((k, tuple(d.isoformat() for d in dates[k])) for k in u.names))
        for u in units
    ]


def plan_units(
    keys: Sequence[CampaignKey],
    expected: Mapping[str, int] | None,
    unit_rows: int,
    max_keys_per_unit: int,
) -> list[WorkUnit]:
    """Pack ``keys`` (in their order) into work units.

    A key expected to have ``unit_rows`` rows or more keeps a unit of its own; the others fill the current shared
    unit until one more would pass ``unit_rows`` expected rows or ``max_keys_per_unit`` keys. Without counts
    (``expected`` None) every key is its own unit: nothing says which keys are small. A key the counts do not know
    has no rows on the source (0).
    """
    if expected is None:
        return [WorkUnit((k,)) for k in keys]
    if max_keys_per_unit <= 1:
        return [WorkUnit((k,), expected.get(k.key, 0)) for k in keys]
    units: list[WorkUnit] = []
    current: list[CampaignKey] = []
    rows = 0

    def close() -> None:
        nonlocal current, rows
        if current:
            units.append(WorkUnit(tuple(current), rows))
        current, rows = [], 0

    for k in keys:
        n = expected.get(k.key, 0)
        if n >= unit_rows:
            units.append(WorkUnit((k,), n))
            continue
        if current and (rows + n > unit_rows or len(current) >= max_keys_per_unit):
            close()
        current.append(k)
        rows += n
    close()
    return units


def count_by_key(column: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """Rows per distinct value of a key column, the values as text (as keys are); nulls counted under ``""``."""
    counts: dict[str, int] = {}
    if len(column) == 0:
        return counts
    for item in pc.value_counts(column).to_pylist():
        value = item["values"]
        name = "" if value is None else str(value)
        counts[name] = counts.get(name, 0) + int(item["counts"])
    return counts


def add_counts(total: dict[str, int], more: Mapping[str, int]) -> None:
    """Add ``more`` into ``total`` in place."""
    for key, n in more.items():
        total[key] = total.get(key, 0) + n


def why_not_shared(dataset: DatasetConfig) -> str | None:
    """Why the dataset's keys cannot share units (each key then is its own), or None when they can.

    A query source names one ``:key``; a ``dedupe`` rule keeps one row per value of its columns across a staging,
    so keys may share one only when those columns hold the key.
    """
    if dataset.source.table is None:
        return "a query source extracts one :key at a time"
    if dataset.source.columns and dataset.source.key_column not in dataset.source.columns:
        return f"source.columns leaves out the key column {dataset.source.key_column!r}"
    keys = {dataset.source.key_column, dataset.target_key_column}
    for i, rule in enumerate(dataset.rules):
        if rule.dedupe is not None and not keys & set(rule.dedupe.on):
            return f"rules[{i}].dedupe is not per key (its 'on' does not name the key column)"
    return None


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill over many dates loads in one run: each key once, recorded for every date it is pending on."""

    active: dict[str, list[str]]  # run date (ISO) → keys active on it
    pending: dict[str, list[str]]  # run date (ISO) → those without a ledger row (all of them when forced)
    keys: list[CampaignKey]  # every key pending on some date, in key order
    dates: dict[str, list[date]]  # key → the dates it is pending on, in order


def plan_backfill(
    keys: Sequence[CampaignKey], days: Sequence[date], done: set[tuple[str, str]], force: bool = False
) -> BackfillPlan:
    """Which keys a backfill over ``days`` loads, and for which dates, given the ledger's ``done`` (key, ISO date).

    A key's rows do not depend on the run date (they are its rows within its own window), so a key pending on many
    dates is extracted and loaded once, and its ledger gets a row for each of them.
    """
    iso = {d: d.isoformat() for d in days}
    active: dict[str, list[str]] = {iso[d]: [] for d in days}
    pending: dict[str, list[str]] = {iso[d]: [] for d in days}
    dates: dict[str, list[date]] = {}
    by_name = {k.key: k for k in keys}
    if not days:
        return BackfillPlan(active, pending, [], dates)
    first, last = min(days), max(days)
    for k in sorted(keys, key=lambda k: k.key):  # each key's own dates: as many steps as (key, date) pairs
        if not k.enabled:
            continue
        day, end = max(k.start_date, first), min(k.end_date, last)
        while day <= end:
            if day in iso:
                active[iso[day]].append(k.key)
                if force or (k.key, iso[day]) not in done:
                    pending[iso[day]].append(k.key)
                    dates.setdefault(k.key, []).append(day)
            day += timedelta(days=1)
    return BackfillPlan(active, pending, [by_name[k] for k in sorted(dates)], dates)
