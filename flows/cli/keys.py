"""`keyflow keys`: add, list, enable, disable and delete the keys (campaigns) of a dataset.

``-d`` names a dataset YAML (a name under config/datasets/ or a path): keys are stored under its ``name:``, the name
`etl run` looks them up by, and an unknown dataset is refused before the key table is touched.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from config.errors import quoted
from flows.cli.common import DatasetOpt, ProfileOpt, dataset_name, parse_date
from flows.cli.output import fail, out, print_keys, reports_errors

keys_app = typer.Typer(help="Manage the keys (campaigns) of a dataset in DynamoDB.", no_args_is_help=True)

KeyOpt = Annotated[str, typer.Option("--key", "-k", help="the key (campaign code)")]


@keys_app.command("put")
@reports_errors
def keys_put(
    dataset: DatasetOpt,
    key: KeyOpt,
    start: Annotated[str, typer.Option("--start", help="first active day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--end", help="last active day, YYYY-MM-DD (inclusive)")],
    disabled: Annotated[bool, typer.Option("--disabled", help="store it switched off")] = False,
    params: Annotated[str | None, typer.Option("--params", help="JSON object of extra query parameters")] = None,
    profile: ProfileOpt = "local",
) -> None:
    """Add or replace a key (1 to 256 characters, no whitespace at either end, no control characters)."""
    from config.loader import load_profile
    from tasks.keys import put_key
    from tasks.transforms.keys import CampaignKey, validate_key

    try:
        validate_key(key)
    except ValueError as exc:
        fail(f"--key: {exc}")
    try:
        extra = json.loads(params) if params else {}
    except ValueError as exc:
        fail(f"--params: not JSON: {exc}")
    if not isinstance(extra, dict):
        fail("--params: expected a JSON object")
    for name, value in extra.items():  # each is bound as one query parameter (:name): no lists or objects
        if isinstance(value, list | dict):
            fail(
                f"--params: {quoted(name)} is a JSON {type(value).__name__}; a parameter is a string, number, "
                "true/false or null"
            )
    prof = load_profile(profile)
    name = dataset_name(dataset)
    first, last = parse_date(start, "--start"), parse_date(end, "--end")
    try:
        put_key(prof, CampaignKey(name, key, first, last, not disabled, extra))
    except ValueError as exc:
        fail(str(exc))
    out.print(f"Stored key {key!r} of {name} ({start} to {end}{', disabled' if disabled else ''}).", highlight=False)


@keys_app.command("list")
@reports_errors
def keys_list(
    dataset: DatasetOpt,
    on: Annotated[str | None, typer.Option("--date", help="only keys active on this day")] = None,
    profile: ProfileOpt = "local",
) -> None:
    """List the keys of a dataset (or those active on a day)."""
    from config.loader import load_profile
    from tasks.keys import list_keys

    prof = load_profile(profile)
    name = dataset_name(dataset)
    print_keys(list_keys(prof, name, parse_date(on, "--date") if on else None))


def _change(dataset: str, key: str, profile: str, verb: str) -> None:
    """Enable, disable or delete one key; a key the dataset lacks is one line and exit 1."""
    from config.loader import load_profile
    from tasks.keys import delete_key, set_key_enabled

    prof = load_profile(profile)
    name = dataset_name(dataset)
    try:
        if verb == "Deleted":
            delete_key(prof, name, key)
        else:
            set_key_enabled(prof, name, key, verb == "Enabled")
    except ValueError as exc:
        fail(f"--key: {exc}")
    out.print(f"{verb} key {key!r} of {name}.", highlight=False)


@keys_app.command("disable")
@reports_errors
def keys_disable(dataset: DatasetOpt, key: KeyOpt, profile: ProfileOpt = "local") -> None:
    """Switch a key off (it stays in the table; `keys enable` switches it back on)."""
    _change(dataset, key, profile, "Disabled")


@keys_app.command("enable")
@reports_errors
def keys_enable(dataset: DatasetOpt, key: KeyOpt, profile: ProfileOpt = "local") -> None:
    """Switch a key back on."""
    _change(dataset, key, profile, "Enabled")


@keys_app.command("delete")
@reports_errors
def keys_delete(dataset: DatasetOpt, key: KeyOpt, profile: ProfileOpt = "local") -> None:
    """Remove a key from the table (`keys disable` keeps it, switched off); exit 1 when there is no such key."""
    _change(dataset, key, profile, "Deleted")
