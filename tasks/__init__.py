"""Prefect tasks of keyflow, their adapters (``tasks.io``) and pure transforms (``tasks.transforms``).

Arrow allocates through jemalloc here unless ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise: on the ETL benchmark
it ran faster and peaked lower than the default mimalloc (12.3 s / 422 MB against 13.3 s / 454 MB, same sitting),
and trend counting went from 10.9 s to 8.7 s (BENCHMARKS.md).
"""

from __future__ import annotations

import os


def _arrow_memory_pool() -> None:
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return  # the user's choice wins
    try:
        import pyarrow as pa

        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (ImportError, NotImplementedError):  # a pyarrow built without jemalloc keeps its default
        pass


_arrow_memory_pool()
