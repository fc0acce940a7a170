"""The staged floor (issue 15): the least any staged ETL can do, per key in parallel, no rules, no Prefect.

``COPY (SELECT * … WHERE key = …) TO STDOUT`` (CSV with a header) → zstd level 1 into a local file → S3 PUT on the
benchmark's moto server → GET → zstd decompression → ``COPY … FROM STDIN`` into the warehouse. One thread per key
(psycopg2 and zstandard release the GIL while they work).

Usage: staged_floor.py SOURCE_DSN WAREHOUSE_DSN SOURCE_TABLE TARGET_TABLE ENDPOINT BUCKET KEY [KEY …]
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

import boto3
import psycopg2
import zstandard


def one_key(source_dsn: str, warehouse_dsn: str, table: str, target: str, s3: object, bucket: str, key: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part.csv.zst"
        query = f"COPY (SELECT * FROM {table} WHERE campaign_key = %s) TO STDOUT WITH (FORMAT csv, HEADER true)"
        with (
            psycopg2.connect(source_dsn) as src,
            src.cursor() as cur,
            path.open("wb") as raw,
            zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False) as out,
        ):
            cur.copy_expert(cur.mogrify(query, (key,)).decode(), out, size=1 << 20)
        name = f"floor/{key}/part-00000.csv.zst"
        with path.open("rb") as body:
            s3.put_object(Bucket=bucket, Key=name, Body=body)  # type: ignore[attr-defined]
    got = s3.get_object(Bucket=bucket, Key=name)["Body"]  # type: ignore[attr-defined]
    with psycopg2.connect(warehouse_dsn) as wh, wh.cursor() as cur:
        reader = zstandard.ZstdDecompressor().stream_reader(got)
        cur.copy_expert(f"COPY {target} FROM STDIN WITH (FORMAT csv, HEADER true)", reader, size=1 << 20)


def main(source_dsn: str, warehouse_dsn: str, table: str, target: str, endpoint: str, bucket: str, *keys: str) -> None:
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    failures: list[BaseException] = []

    def run(key: str) -> None:
        try:
            one_key(source_dsn, warehouse_dsn, table, target, s3, bucket, key)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


if __name__ == "__main__":
    main(*sys.argv[1:])
