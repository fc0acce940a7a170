"""`keyflow keys`: add, list, enable and disable the keys (campaigns) of a dataset."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flows.cli.common import DatasetOpt, ProfileOpt, parse_date
from flows.cli.output import fail, out, print_keys, reports_errors

keys_app = typer.Typer(help="Manage the keys (campaigns) of a dataset in DynamoDB.", no_args_is_help=True)

KeyOpt = Annotated[str, typer.Option("--key", "-k")]


@keys_app.command("put")
@reports_errors
def keys_put(
    dataset: DatasetOpt,
    key: Annotated[str, typer.Option("--key", "-k", help="the key (campaign code)")],
    start: Annotated[str, typer.Option("--start", help="first active day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--end", help="last active day, YYYY-MM-DD (inclusive)")],
    disabled: Annotated[bool, typer.Option("--disabled", help="store it switched off")] = False,
    params: Annotated[str | None, typer.Option("--params", help="JSON object of extra query parameters")] = None,
    profile: ProfileOpt = "local",
) -> None:
    """Add or replace a key."""
    from config.loader import load_profile
    from tasks.keys import put_key
    from tasks.transforms.keys import CampaignKey

    try:
        extra = json.loads(params) if params else {}
    except ValueError as exc:
        fail(f"--params: not JSON: {exc}")
    if not isinstance(extra, dict):
        fail("--params: expected a JSON object")
    prof = load_profile(profile)
    first, last = parse_date(start, "--start"), parse_date(end, "--end")
    try:
        put_key(prof, CampaignKey(dataset, key, first, last, not disabled, extra))
    except ValueError as exc:
        fail(str(exc))
    out.print(f"Stored key {key!r} of {dataset} ({start} to {end}{', disabled' if disabled else ''}).")


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
    print_keys(list_keys(prof, dataset, parse_date(on, "--date") if on else None))


def _set_enabled(dataset: str, key: str, profile: str, enabled: bool) -> None:
    from config.loader import load_profile
    from tasks.keys import set_key_enabled

    set_key_enabled(load_profile(profile), dataset, key, enabled)
    out.print(f"{'Enabled' if enabled else 'Disabled'} key {key!r} of {dataset}.")


@keys_app.command("disable")
@reports_errors
def keys_disable(dataset: DatasetOpt, key: KeyOpt, profile: ProfileOpt = "local") -> None:
    """Switch a key off (it stays in the table; `keys enable` switches it back on)."""
    _set_enabled(dataset, key, profile, False)


@keys_app.command("enable")
@reports_errors
def keys_enable(dataset: DatasetOpt, key: KeyOpt, profile: ProfileOpt = "local") -> None:
    """Switch a key back on."""
    _set_enabled(dataset, key, profile, True)
