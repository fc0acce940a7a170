"""The object store unreachable mid-upload, on the real moto server: every key still loads within the same run.

moto keeps its buckets in memory, so the test does not restart it: a TCP proxy of the test's own
(tests/helpers/tcp_proxy.py) stands between keyflow and moto, and is cut while a key's part is being uploaded —
that upload's connection is reset after its headers, new connections are refused for a few seconds, then accepted
again. This is what keyflow sees of an S3 outage or a dropped route, with moto's state kept. botocore's own retries
(8 attempts, backoff) ride out a cut this short; a longer one raises a connection error that keyflow classifies as
transient, so the key's step retries within the profile's window (tests/io/test_error_classes.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.faults.test_dropped_connections import (
    ACTIVE,
    PER_KEY,
    RIDE_OUT,
    assert_every_key_loaded,
    staged_left,
    warehouse_rows,
)
from tests.helpers.etl import D1, KEYS, create_pg_source, expected, put_keys, run, source_rows, write_dataset
from tests.helpers.faults import slow_pg_view
from tests.helpers.services import PG_DSN
from tests.helpers.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture()
def proxy(aws_endpoint: str) -> Iterator[CuttableProxy]:
    """A cuttable path to the session's moto server."""
    port = urlparse(aws_endpoint).port
    assert port is not None
    with CuttableProxy(port) as p:
        yield p


def test_the_object_store_cut_mid_upload_is_ridden_out(
    pg: Any,
    proxy: CuttableProxy,
    tmp_path: Path,
    names: dict[str, str],
    make_profile: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from config.loader import load_profile
    from tasks.resources import object_store_for

    rows = source_rows([k[0] for k in KEYS], per_key=PER_KEY)
    base, helpers = names["src_table"] + "_base", names["src_table"] + "_f"
    create_pg_source(pg, base, rows)
    slow_pg_view(pg, helpers, base, names["src_table"], 0.01)
    profile = make_profile(aws_endpoint_url=proxy.url, **RIDE_OUT)
    put_keys(profile)
    dataset = write_dataset(tmp_path, names)
    part = f"PUT /{names['bucket']}/staging/".encode()
    proxy.cut_when(lambda data: data.startswith(part) and b"/part-" in data.split(b"\r\n", 1)[0], down_seconds=4)
    caplog.set_level(logging.INFO)
    try:
        state, results = run(dataset, profile, D1)
        assert len(proxy.cuts) == 1, "no part upload was cut: the fault never landed"
        assert_every_key_loaded(state, results)
        assert warehouse_rows(PG_DSN, names["wh_schema"]) == expected(rows, ACTIVE)
        assert staged_left(profile) == []
        store = object_store_for(load_profile(profile, environ={}))
        assert list(store.incomplete_uploads("staging/")) == []  # type: ignore[attr-defined]
        assert "Traceback" not in caplog.text
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP VIEW IF EXISTS {names['src_table']}")
            cur.execute(f"DROP TABLE IF EXISTS {base}")
            for schema in (helpers, names["wh_schema"]):
                cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
