"""The main job's test data and steps, shared by the flow, CLI, control, security, backfill and schedule tests:
a PostgreSQL source of awkward values, its dataset YAML, its keys, and the warehouse read back."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

from flows.rds_to_redshift import rds_to_redshift
from tests.helpers.config_files import write_yaml

D1 = dt.date(2017, 3, 20)  # K1, K2 and EVIL active
D2 = dt.date(2017, 3, 28)  # K1 and K2 active
EVIL = "x'); drop table t; --"
KEYS = [
    ("K1", "2017-03-01", "2017-03-31", True),
    ("K2", "2017-03-15", "2017-04-15", True),
    (EVIL, "2017-03-10", "2017-03-25", True),
    ("OLD", "2016-01-01", "2016-12-31", True),
    ("OFF", "2017-03-01", "2017-03-31", False),
]
AWKWARD = [
    None,
    "",
    "a,b",
    'say "hi"',
    "tab\there",
    "line\nbreak",
    "cr\r\nlf",
    "back\\slash",
    "ünïcødé ✓ 日本 🎉",
    EVIL,
    "\\N",
    "NULL",
    " padded ",
]
COLUMNS = "id, campaign_key, event_date, label, amount, ratio, flag, created_at, phone"


def source_rows(key_names: list[str], per_key: int = 40) -> list[tuple[Any, ...]]:
    """``per_key`` source rows per key, cycling through awkward text, extreme numbers, nulls and phones."""
    rows = []
    n = 0
    for key in key_names:
        for i in range(per_key):
            n += 1
            rows.append(
                (
                    n,
                    key,
                    dt.date(2017, 3, 1) + dt.timedelta(days=i % 28),
                    AWKWARD[i % len(AWKWARD)],
                    [
                        Decimal("1234567890123456789012345678.1234567890"),
                        Decimal("-0.0000000001"),
                        None,
                        Decimal("42"),
                    ][i % 4],
                    [0.1, 1e300, -2.5e-300, None, 3.0][i % 5],
                    [True, False, None][i % 3],
                    dt.datetime(2017, 3, 1, 12, 30, 45, 123456) + dt.timedelta(hours=i),
                    None if i % 7 == 0 else f"+3361234{n:04d}",
                )
            )
    return rows


def masked(phone: str | None) -> str | None:
    """A phone as the dataset's privacy rule masks it: all but the last two characters starred."""
    return None if phone is None else "*" * max(len(phone) - 2, 0) + phone[-2:]


def expected(rows: list[tuple[Any, ...]], keys: set[str]) -> list[tuple[Any, ...]]:
    """The warehouse rows the dataset should give for the source ``rows`` of ``keys``."""
    return [(*r[:8], masked(r[8])) for r in rows if r[1] in keys]


def create_pg_source(pg: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Create the PostgreSQL source ``table`` and insert ``rows``."""
    with pg.cursor() as cur:
        cur.execute(
            f"""CREATE TABLE {table} (id bigint primary key, campaign_key text not null, event_date date,
                label text, amount numeric(38,10), ratio double precision, flag boolean,
                created_at timestamp(6), phone text)"""
        )
        cur.executemany(f"INSERT INTO {table} VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows)


# How a key's rows travel (issue 15), each giving the same warehouse: every rule on the source and the COPY bytes
# staged unparsed; rules on the source and one left for the client (a dedupe on the primary key changes nothing);
# every rule on the client.
PATHS = {
    "passthrough": ({}, []),
    "pushed-and-client": ({}, [{"dedupe": {"on": ["id"]}}]),
    "client": ({"pushdown": False}, []),
}


def write_dataset(
    tmp_path: Path,
    names: dict[str, str],
    staging: dict[str, Any] | None = None,
    path: str = "passthrough",
    units: dict[str, Any] | None = None,
    rules: list[dict[str, Any]] | None = None,
    **target: Any,
) -> Path:
    """The dataset YAML for this test's source table and warehouse schema (``staging`` and ``target`` override).

    ``path`` is one of :data:`PATHS`: where the rules run (the warehouse rows are the same on each); ``units``
    the work-unit settings (``{"max_keys_per_unit": 1}``: every key a branch of its own); ``rules`` more rules,
    after the rename and the mask.
    """
    source, more_rules = PATHS[path]
    return write_yaml(
        tmp_path / "datasets" / "facts.yaml",
        {
            "name": "facts",
            **({"units": units} if units else {}),
            "source": {"table": names["src_table"], "key_column": "campaign_key", "batch_rows": 100, **source},
            "rules": [
                {"rename": {"label": "title"}},
                {"privacy": {"column": "phone", "action": "mask", "keep_last": 2}},
                *(rules or []),
                *more_rules,
            ],
            "staging": {"compression": "zstd", "part_rows": 1000} | (staging or {}),
            "target": {"schema": names["wh_schema"], "table": "facts", "distkey": "campaign_key", **target},
        },
    )


def put_keys(profile_path: Path, dataset: str = "facts") -> None:
    """Put ``KEYS`` into the profile's key table for ``dataset``."""
    from config.loader import load_profile
    from tasks.resources import key_store_for
    from tasks.transforms.keys import CampaignKey

    store = key_store_for(load_profile(profile_path, environ={}))
    for key, start, end, enabled in KEYS:
        store.put_key(CampaignKey(dataset, key, dt.date.fromisoformat(start), dt.date.fromisoformat(end), enabled))


def warehouse(pg: Any, names: dict[str, str]) -> list[tuple[Any, ...]]:
    """Every loaded row of this test's warehouse table, in ``id`` order."""
    with pg.cursor() as cur:
        cur.execute(f"SELECT {COLUMNS.replace('label', 'title')} FROM {names['wh_schema']}.facts ORDER BY id")
        return [tuple(r) for r in cur.fetchall()]


def run(dataset: Path, profile: Path, day: dt.date) -> tuple[Any, list[dict[str, Any]]]:
    """Run the main flow for ``day``: its final state and its per-key results."""
    from config.errors import RunFailedError

    state = rds_to_redshift(dataset=str(dataset), run_date=day, profile=str(profile), return_state=True)
    result = state.result(raise_on_failure=False)
    return state, result.data if isinstance(result, RunFailedError) else result


# -- many keys (issue 16): a narrow table, thousands of keys with windows of their own, written in bulk ----------------

WINDOWS = [  # every one holds D1; keys cycle through them, so a shared unit has keys of several windows
    (dt.date(2017, 3, 1), dt.date(2017, 3, 31)),
    (dt.date(2017, 3, 15), dt.date(2017, 4, 15)),
    (dt.date(2017, 3, 20), dt.date(2017, 3, 20)),
]


def many_keys(n: int, prefix: str = "K") -> list[tuple[str, dt.date, dt.date]]:
    """``n`` keys ``K0000``… (name, start, end), each with one of :data:`WINDOWS`."""
    width = max(4, len(str(n - 1)))
    return [(f"{prefix}{i:0{width}d}", *WINDOWS[i % len(WINDOWS)]) for i in range(n)]


def narrow_rows(keys: list[str], per_key: int = 6) -> list[tuple[Any, ...]]:
    """Rows ``(id, k, d, n, v)``: key ``i`` has ``i % per_key`` rows (some none), spread over 2017-03-01…04-09.

    Some fall outside their key's window (never extracted) and every fifth has ``n = -1`` (filtered by the rule).
    """
    rows = []
    for i, key in enumerate(keys):
        for j in range(i % per_key):
            rows.append(
                (
                    len(rows) + 1,
                    key,
                    dt.date(2017, 3, 1) + dt.timedelta(days=(i + j * 7) % 40),
                    -1 if j == 4 else j,
                    f"{key}/{j}",
                )
            )
    return rows


def narrow_expected(
    rows: list[tuple[Any, ...]], keys: list[tuple[str, dt.date, dt.date]]
) -> dict[str, list[tuple[Any, ...]]]:
    """Per key, the rows the narrow dataset loads: within the key's window, ``n >= 0``, in ``id`` order."""
    window = {k: (s, e) for k, s, e in keys}
    out: dict[str, list[tuple[Any, ...]]] = {k: [] for k, _, _ in keys}
    for r in rows:
        if r[1] in window and window[r[1]][0] <= r[2] <= window[r[1]][1] and r[3] >= 0:
            out[r[1]].append(r)
    return out


def create_narrow_pg_source(pg: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    """The narrow PostgreSQL source ``table`` with ``rows``."""
    from psycopg2.extras import execute_values

    with pg.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id bigint primary key, k text not null, d date not null, n int, v text)")
        cur.execute(f"CREATE INDEX ON {table} (k, d)")
        execute_values(cur, f"INSERT INTO {table} VALUES %s", rows, page_size=5000)
        cur.execute(f"ANALYZE {table}")


def write_narrow_dataset(tmp_path: Path, names: dict[str, str], **units: Any) -> Path:
    """The narrow dataset: key ``k`` within its dates on ``d``, rows with ``n < 0`` filtered out."""
    return write_yaml(
        tmp_path / "datasets" / "narrow.yaml",
        {
            "name": "narrow",
            "source": {"table": names["src_table"], "key_column": "k", "date_column": "d", "batch_rows": 1000},
            "rules": [{"filter": {"column": "n", "op": ">=", "value": 0}}],
            "staging": {"compression": "zstd", "part_rows": 1000},
            "units": units,
            "target": {"schema": names["wh_schema"], "table": "narrow"},
        },
    )


def put_many_keys(profile_path: Path, keys: list[tuple[str, dt.date, dt.date]], dataset: str = "narrow") -> None:
    """Write ``keys`` into the profile's key table with BatchWriteItem (25 a call), as a bulk import would."""
    from config.loader import load_profile
    from tasks.io.aws import client

    prof = load_profile(profile_path, environ={})
    ddb = client("dynamodb", prof.aws_region, prof.aws_endpoint_url)
    items = [
        {
            "PutRequest": {
                "Item": {
                    "dataset": {"S": dataset},
                    "key": {"S": k},
                    "start_date": {"S": s.isoformat()},
                    "end_date": {"S": e.isoformat()},
                    "enabled": {"BOOL": True},
                }
            }
        }
        for k, s, e in keys
    ]
    for start in range(0, len(items), 25):
        pending: dict[str, Any] = {prof.keys_table: items[start : start + 25]}
        while pending:
            pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}


def narrow_warehouse(pg: Any, names: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """The narrow target's rows per key, in ``id`` order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with pg.cursor() as cur:
        cur.execute(f"SELECT id, k, d, n, v FROM {names['wh_schema']}.narrow ORDER BY id")
        for r in cur.fetchall():
            out.setdefault(r[1], []).append(tuple(r))
    return out
