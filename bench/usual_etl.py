"""The usual hand-written script, for comparison: pandas read_sql → CSV in memory → COPY, one key per process."""

from __future__ import annotations

import io
import sys

import pandas as pd
import psycopg2
import sqlalchemy as sa


def main(source_url: str, warehouse_dsn: str, source_table: str, target_table: str, key: str) -> None:
    engine = sa.create_engine(source_url)
    with engine.connect() as conn:
        df = pd.read_sql(
            sa.text(f"SELECT * FROM {source_table} WHERE campaign_key = :k"),
            conn,
            params={"k": key},
            dtype_backend="numpy_nullable",  # integers with NULLs stay integers in the CSV
        )
    buf = io.StringIO()
    df.to_csv(buf, index=False, header=False)
    buf.seek(0)
    with psycopg2.connect(warehouse_dsn) as wh, wh.cursor() as cur:
        cur.copy_expert(f"COPY {target_table} FROM STDIN WITH (FORMAT csv)", buf)


if __name__ == "__main__":
    main(*sys.argv[1:6])
