"""Object keys built from names that come from outside (landing files, keys): never escape their prefix. Pure."""

from __future__ import annotations

import posixpath


class UnsafePathError(ValueError):
    """A name would leave its prefix or is not a plain relative path."""


def join_under(prefix: str, name: str) -> str:
    """``prefix/name`` for a relative ``name``; refuse ``..``, absolute paths, backslashes and control characters."""
    if not name or len(name) > 1024:
        raise UnsafePathError(f"file name must be 1 to 1024 characters, got {len(name)}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise UnsafePathError(f"file name {name!r} contains control characters")
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise UnsafePathError(f"file name {name!r} is absolute; names are relative to the landing prefix")
    parts = name.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise UnsafePathError(f"file name {name!r} has '..', '.' or empty segments")
    base = prefix.strip("/")
    joined = posixpath.join(base, name) if base else name
    if base and not joined.startswith(base + "/"):  # pragma: no cover - guarded above, kept as the invariant
        raise UnsafePathError(f"file name {name!r} leaves the prefix {prefix!r}")
    return joined


def relative_to(prefix: str, key: str) -> str:
    """The part of a listed object key below ``prefix``, checked with :func:`join_under`'s rules."""
    base = prefix.strip("/")
    if base and not key.startswith(base + "/"):
        raise UnsafePathError(f"object {key!r} is not under {prefix!r}")
    rest = key[len(base) + 1 :] if base else key
    join_under(prefix, rest)
    return rest
