"""64-bit hashes of texts, vectorised over Arrow string arrays. Pure.

Event ids are hashed for deduplication; user and article ids become the integer keys counting joins and groups on.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

HASH_VERSION = "poly64-splitmix-1"
"""Names :func:`hash_ids` where its values are stored (compacted files keep user keys): a change means recompute."""
_P = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)
HASH_LENGTH_SALT = np.uint64(0xD6E8FEB86659FD93)  # the length is mixed in, so a trailing NUL byte changes the hash
_powers_lock = threading.Lock()
_powers: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i modulo 2**64 for i < n (grown on demand, shared by threads)."""
    global _powers
    pw, inv = _powers
    if len(pw) >= n:
        return pw, inv
    with _powers_lock:
        size = max(n, 2 * len(_powers[0]), 1 << 16)
        with np.errstate(over="ignore"):
            one = np.ones(1, np.uint64)
            pw = np.cumprod(np.concatenate((one, np.full(size - 1, _P, np.uint64))), dtype=np.uint64)
            inv = np.cumprod(np.concatenate((one, np.full(size - 1, _P_INV, np.uint64))), dtype=np.uint64)
        _powers = (pw, inv)
    return pw, inv


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each text (a polynomial over its bytes modulo 2**64, then mixed), vectorised.

    Ids are at most 256 characters (longer lines are rejected), where this hash has no known collisions; between
    distinct ids two hashes collide with probability about 2**-64, so an hour of 30 M events mistakes two ids for
    one about once in 40,000 hours.
    """
    if isinstance(ids, pa.ChunkedArray):
        chunks = [hash_ids(c) for c in ids.chunks]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)
    if ids.type != pa.string():
        ids = ids.cast(pa.string())
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.uint64)
    offsets = np.frombuffer(ids.buffers()[1], np.int32, n + 1, ids.offset * 4).astype(np.int64)
    data_buffer = ids.buffers()[2]
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    a, b = int(offsets[0]), int(offsets[-1])
    pw, inv = power_tables(b - a + 1)
    rel = offsets - a
    with np.errstate(over="ignore"):
        prefix = np.zeros(b - a + 1, np.uint64)
        np.cumsum(data[a:b].astype(np.uint64) * pw[: b - a], out=prefix[1:])
        raw = (prefix[rel[1:]] - prefix[rel[:-1]]) * inv[rel[:-1]]
        raw ^= (rel[1:] - rel[:-1]).astype(np.uint64) * HASH_LENGTH_SALT
    return mix64(raw)
