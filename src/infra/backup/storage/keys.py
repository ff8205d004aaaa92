"""Object keys: relative, ``/``-separated, every segment a safe file name."""

from __future__ import annotations

import re

from src.infra.backup.errors import StorageError

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
# The common case in one match: segments joined by single slashes, optionally ending in one.
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*/?")


def validate_key(key: str) -> list[str]:
    """The segments of ``key``; :class:`StorageError` for anything that could escape the
    store's root (``..``, absolute paths, empty segments, hidden names, odd characters)."""
    if _KEY.fullmatch(key):
        return [part for part in key.split("/") if part]
    parts = key.split("/")
    if not key or not all(_SEGMENT.match(part) for part in parts if part) or "" in parts[:-1]:
        raise StorageError(f"invalid object key {key!r}")
    return [part for part in parts if part]
