"""Malformed input for the decoder: the internal error and the payload shape checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NoReturn


class _CorruptError(Exception):
    """Internal: a payload is malformed."""


def _corrupt(message: str) -> NoReturn:
    raise _CorruptError(message)


def _as_list(value: object, what: str) -> list[Any]:
    if type(value) is not list:
        _corrupt(f"{what} payload is not an array")
    return value


def _pairs(value: object, what: str) -> Iterator[tuple[Any, Any]]:
    flat = _as_list(value, what)
    if len(flat) % 2:
        _corrupt(f"{what} payload has an odd number of items")
    it = iter(flat)
    return zip(it, it, strict=True)
