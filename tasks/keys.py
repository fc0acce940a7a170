"""The keys of a dataset in the profile's key table: add, list, switch on and off (`keyflow keys`)."""

from __future__ import annotations

from datetime import date

from config.models import Profile
from tasks.resources import key_store_for
from tasks.transforms.keys import CampaignKey


def put_key(profile: Profile, key: CampaignKey) -> None:
    """Add or replace a key, creating the key table when missing.

    Raises:
        ValueError: the key's end date is before its start date.
    """
    store = key_store_for(profile)
    store.ensure_table()
    store.put_key(key)


def list_keys(profile: Profile, dataset: str, on: date | None = None) -> list[CampaignKey]:
    """Every key of a dataset, or only those active on ``on``."""
    store = key_store_for(profile)
    return store.active_keys(dataset, on) if on else store.list_keys(dataset)


def set_key_enabled(profile: Profile, dataset: str, key: str, enabled: bool) -> None:
    """Switch a key on or off; it stays in the table either way.

    Raises:
        KeyFailedError: the dataset has no such key.
    """
    key_store_for(profile).set_enabled(dataset, key, enabled)
