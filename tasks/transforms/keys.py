"""Campaign keys: what one key is and when it is active. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any


@dataclass(frozen=True)
class CampaignKey:
    """One key of a dataset (a marketing campaign), active from ``start_date`` to ``end_date`` inclusive."""

    dataset: str
    key: str
    start_date: date
    end_date: date
    enabled: bool = True
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def is_active(self, on: date) -> bool:
        """Active on ``on``: enabled and ``start_date <= on <= end_date``."""
        return self.enabled and self.start_date <= on <= self.end_date


def validate_key(key: str) -> str:
    """A key is any non-empty text up to 256 characters without control characters; it is always data."""
    if not isinstance(key, str) or not key or len(key) > 256:
        raise ValueError(f"a key is 1 to 256 characters, got {key!r}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise ValueError(f"a key may not contain control characters: {key!r}")
    return key


def active_keys(keys: list[CampaignKey], on: date) -> list[CampaignKey]:
    """The keys active on ``on``, sorted by key so runs are deterministic."""
    return sorted((k for k in keys if k.is_active(on)), key=lambda k: k.key)
