"""The keys of a dataset in the profile's key table: add, list, switch on and off, delete (`keyflow keys`).

``dataset`` is always the dataset's ``name:`` (the partition key `etl run` queries), never a path: the CLI resolves
``-d`` through the dataset YAML before calling these.
"""

from __future__ import annotations

from datetime import date

from config.models import Profile
from tasks.resources import key_store_for
from tasks.transforms.keys import CampaignKey, check_lookup_key, validate_key


def put_key(profile: Profile, key: CampaignKey) -> None:
    """Add or replace a key, creating the key table when missing.

    Raises:
        ValueError: the key breaks a rule of :func:`~tasks.transforms.keys.validate_key`, or its end date is before
            its start date (checked before the table is touched).
    """
    validate_key(key.key)
    if key.end_date < key.start_date:
        raise ValueError(f"key {key.key!r}: end_date {key.end_date} is before start_date {key.start_date}")
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
        ValueError: the key is empty or too long to be stored.
        KeyFailedError: the dataset has no such key.
    """
    key_store_for(profile).set_enabled(dataset, check_lookup_key(key), enabled)


def delete_key(profile: Profile, dataset: str, key: str) -> None:
    """Remove a key from the dataset: runs no longer load it (a `replace_table` run then drops its rows).

    Raises:
        ValueError: the key is empty or too long to be stored.
        KeyFailedError: the dataset has no such key.
    """
    key_store_for(profile).delete_key(dataset, check_lookup_key(key))
