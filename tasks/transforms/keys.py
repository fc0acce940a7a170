"""Campaign keys: what one key is and when it is active. Pure."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from config.errors import quoted


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


MAX_KEY_CHARS = 256


def validate_key(key: str) -> str:
    """A key is 1 to 256 characters of text, not blank, without leading or trailing whitespace or control characters.

    Whitespace at either end is refused rather than stripped: ``"MCS2017 "`` and ``"MCS2017"`` would otherwise be two
    keys that look alike in every listing. Anything else (quotes, SQL, slashes, non-ASCII) is plain data.

    Raises:
        ValueError: one line saying which rule the key breaks; a long key is echoed cut (:func:`config.errors.quoted`).
    """
    if key == "":
        raise ValueError("a key may not be empty")
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
        got = quoted(key) if isinstance(key, str) else type(key).__name__
        raise ValueError(f"a key is 1 to {MAX_KEY_CHARS} characters, got {got}")
    if not key.strip():
        raise ValueError(f"a key may not be blank (only whitespace), got {quoted(key)}")
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise ValueError(f"a key may not contain control characters, got {quoted(key)}")
    if key != key.strip():
        raise ValueError(f"a key may not start or end with whitespace, got {quoted(key)}")
    return key


def check_lookup_key(key: str) -> str:
    """A key named to enable, disable or delete: any text a key table can hold.

    So a key stored before the rules of :func:`validate_key` (say with a trailing space) can still be switched off
    and removed.

    Raises:
        ValueError: the key is empty or longer than any stored key can be.
    """
    if not key:
        raise ValueError("a key may not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"a key is 1 to {MAX_KEY_CHARS} characters, got {quoted(key)}")
    return key


def active_keys(keys: list[CampaignKey], on: date) -> list[CampaignKey]:
    """The keys active on ``on``, sorted by key so runs are deterministic."""
    return sorted((k for k in keys if k.is_active(on)), key=lambda k: k.key)
