"""Describing values for people: type names, paths in messages, why a value is refused."""

from __future__ import annotations

import collections
import datetime as _dt
import json
import pathlib
from collections.abc import Iterator
from typing import Final

from src.infra.backup.format.values.codes import _MAX_CONTAINER_DEPTH, _MAX_EXT_DEPTH

_GENERIC_HINT: Final = (
    "supported are None, bool, int, float, complex, str, bytes, list, tuple, dict, set, "
    "frozenset, OrderedDict, datetime/date/time/timedelta, Decimal, Fraction, UUID, Enum "
    "members, pathlib paths, numpy arrays/scalars and pandas DataFrame/Series/Index"
)


class _RefusalError(Exception):
    """Internal: a value cannot be encoded; ``reason`` says why and what to do."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _refusal_reason(obj: object) -> str:
    """Why ``obj`` (of a type the codec does not handle at all) is refused, with a hint."""
    import dataclasses

    name = _type_name(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        hint = "convert the dataclass with dataclasses.asdict(...)"
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        hint = "convert the namedtuple with ._asdict() or tuple(...)"
    elif isinstance(obj, collections.defaultdict | collections.Counter):
        hint = "convert it with dict(...)"
    elif isinstance(obj, dict):
        hint = "dict subclasses are not stored; convert it with dict(...)"
    elif isinstance(obj, list):
        hint = "list subclasses are not stored; convert it with list(...)"
    elif isinstance(obj, tuple):
        hint = "tuple subclasses are not stored; convert it with tuple(...)"
    elif isinstance(obj, set | frozenset):
        hint = "set subclasses are not stored; convert it with set(...) or frozenset(...)"
    elif isinstance(obj, str):
        hint = "str subclasses (other than Enum members) are not stored; convert it with str(...)"
    elif isinstance(obj, bool | int):
        hint = "int subclasses (other than Enum members) are not stored; convert it with int(...)"
    elif isinstance(obj, float):
        hint = "float subclasses are not stored; convert it with float(...)"
    elif isinstance(obj, bytes):
        hint = "bytes subclasses are not stored; convert it with bytes(...)"
    elif isinstance(obj, _dt.datetime):
        hint = "datetime subclasses are not stored; convert it to datetime.datetime"
        if hasattr(obj, "to_pydatetime"):
            hint += " with .to_pydatetime()"
    elif isinstance(obj, _dt.date | _dt.time | _dt.timedelta):
        hint = "subclasses of datetime types are not stored; convert it to the base type"
    elif isinstance(obj, pathlib.PurePath):
        hint = "path subclasses are not stored; convert it with pathlib.Path(...) or str(...)"
    elif isinstance(obj, Iterator):
        hint = "iterators and generators are not stored; materialize it with list(...)"
    elif isinstance(obj, type) or callable(obj):
        hint = "functions, methods and classes cannot be stored"
    elif hasattr(obj, "__dict__"):
        hint = "objects are not stored; store a dict of their fields instead (e.g. vars(obj))"
    else:
        hint = _GENERIC_HINT
    return f"unsupported type {name}; {hint}"


def _format_error(path: str, reason: str) -> str:
    return f"cannot store {path}: {reason}"


def _key_repr(key: object) -> str:
    if type(key) is str:
        # lone surrogates are shown escaped, so the message itself stays valid UTF-8
        text = json.dumps(key, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()
    else:
        try:
            text = repr(key)
        except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
            text = f"<{_type_name(key)}>"
    if len(text) > 80:
        text = text[:77] + "..."
    return text


def _str_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_SURROGATE_REASON: Final = (
    "str contains lone surrogates, which UTF-8 cannot hold; "
    "fix the text or store it as bytes (e.g. s.encode('utf-8', 'surrogateescape'))"
)

_TOO_DEEP: Final = (
    f"nested too deeply: at most {_MAX_CONTAINER_DEPTH} levels of list/dict and at most "
    f"{_MAX_EXT_DEPTH} levels of nested tuple/set/frozenset/OrderedDict/non-str-key dict/"
    "enum/pandas values; flatten the structure"
)
