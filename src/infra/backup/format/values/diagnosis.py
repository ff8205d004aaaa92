"""Finding why a value cannot be encoded: a pure-Python walk that names the place and reason."""

from __future__ import annotations

import collections
import datetime as _dt
import pathlib
import uuid
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import ormsgpack

from src.infra.backup.format.values.codes import _MAX_CONTAINER_DEPTH, _MAX_EXT_DEPTH
from src.infra.backup.format.values.description import (
    _SURROGATE_REASON,
    _TOO_DEEP,
    _key_repr,
    _refusal_reason,
    _RefusalError,
    _str_ok,
    _type_name,
)
from src.infra.backup.format.values.encoders import _ENCODERS, _enc_enum, _special_encoder
from src.infra.backup.format.values.scientific import (
    _check_np_dtype,
    _enc_ndarray,
    _enc_npscalar,
    _pandas,
    _pd_array_payload,
)

_NATIVE_LEAVES: Final = frozenset({type(None), bool, float, bytes, bytearray, memoryview})
_RAW_LEAVES: Final = frozenset(
    {
        _dt.datetime,
        _dt.date,
        _dt.time,
        _dt.timedelta,
        Decimal,
        uuid.UUID,
        complex,
        Fraction,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.PosixPath,
        pathlib.WindowsPath,
    }
)
_CYCLE: Final = "cyclic reference: the value contains itself; break the cycle"

_Frame = tuple[Any, str, int, int]


def _pandas_children(obj: Any, path: str) -> list[tuple[Any, str]]:
    """Values inside a pandas object that go through the codec; raises _RefusalError."""
    pd = _pandas()
    children: list[tuple[Any, str]] = []

    def add_array(arr: Any, where: str) -> None:
        try:
            payload = _pd_array_payload(arr)
        except _RefusalError as exc:
            raise _RefusalError(exc.reason, where) from None
        if payload[0] == "O":
            children.extend((item, f"{where}[{i}]") for i, item in enumerate(payload[1]))

    def add_index(index: Any, where: str) -> None:
        if type(index) is pd.RangeIndex:
            children.append((index.name, f"{where}.name"))
        elif isinstance(index, pd.MultiIndex):
            children.append((list(index.names), f"{where}.names"))
            for i in range(index.nlevels):
                add_array(index.get_level_values(i), f"{where}.levels[{i}]")
        else:
            children.append((index.name, f"{where}.name"))
            add_array(index, where)

    if type(obj) is pd.DataFrame:
        add_index(obj.columns, f"{path}.columns")
        add_index(obj.index, f"{path}.index")
        for i in range(obj.shape[1]):
            add_array(obj.iloc[:, i], f"{path}[{_key_repr(obj.columns[i])}]")
    elif type(obj) is pd.Series:
        children.append((obj.name, f"{path}.name"))
        add_index(obj.index, f"{path}.index")
        add_array(obj, path)
    else:
        add_index(obj, path)
    return children


def _leaf_problem(obj: Any, encoder: Callable[[Any, Any], ormsgpack.Ext]) -> str | None:
    try:
        encoder(None, obj)
    except _RefusalError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - report it like the encoder does
        return f"cannot encode {_type_name(obj)}: {type(exc).__name__}: {exc}"
    return None


def find_unsupported(value: object, root: str = "data") -> tuple[str, str] | None:
    """Return ``(path, reason)`` of the first part of ``value`` that cannot be encoded.

    A pure-Python walk (no recursion, so any depth is fine) mirroring :func:`encode_value`:
    it reports unsupported types with a hint, values nested too deeply and cycles. Returns
    None when ``value`` can be encoded.
    """
    stack: list[_Frame | int] = [(value, root, 0, 0)]
    on_path: set[int] = set()
    while stack:
        frame = stack.pop()
        if type(frame) is int:
            on_path.discard(frame)
            continue
        obj, path, seg, ext = frame  # type: ignore[misc]
        cls = type(obj)
        if cls in _NATIVE_LEAVES or cls is int:
            continue
        if cls is str:
            if not _str_ok(obj):
                return path, _SURROGATE_REASON
            continue
        if cls in _RAW_LEAVES:
            problem = _leaf_problem(obj, _ENCODERS[cls])
            if problem is not None:
                return path, problem
            continue
        if cls is list or cls is dict:
            plain = cls is list or all(type(key) is str for key in obj)
            if plain and seg >= _MAX_CONTAINER_DEPTH:
                return path, _TOO_DEEP
            if not plain and ext >= _MAX_EXT_DEPTH:
                return path, _TOO_DEEP
        elif cls in (tuple, set, frozenset, collections.OrderedDict):
            if ext >= _MAX_EXT_DEPTH:
                return path, _TOO_DEEP
        else:
            special = _special_encoder(obj)
            if special is None:
                return path, _refusal_reason(obj)
            if special in (_enc_ndarray, _enc_npscalar):
                try:
                    _check_np_dtype(obj.dtype, scalar=special is _enc_npscalar)
                except _RefusalError as exc:
                    return path, exc.reason
                continue
            if ext >= _MAX_EXT_DEPTH:
                return path, _TOO_DEEP
            if special is _enc_enum:
                stack.append((obj.value, f"{path}.value", 1, ext + 1))
                continue
            try:
                children = _pandas_children(obj, path)
            except _RefusalError as exc:
                return exc.where or path, exc.reason
            stack.extend((child, where, 4, ext + 1) for child, where in reversed(children))
            continue
        # containers
        ident = id(obj)
        if ident in on_path:
            return path, _CYCLE
        on_path.add(ident)
        stack.append(ident)
        if cls is list:
            stack.extend(
                (item, f"{path}[{i}]", seg + 1, ext) for i, item in reversed(list(enumerate(obj)))
            )
        elif cls is dict and plain:
            for key in obj:
                if not _str_ok(key):
                    return f"{path}[{_key_repr(key)}]", "dict key: " + _SURROGATE_REASON
            stack.extend(
                (item, f"{path}[{_key_repr(key)}]", seg + 1, ext)
                for key, item in reversed(obj.items())
            )
        elif cls is dict or cls is collections.OrderedDict:
            frames: list[_Frame] = []
            for i, (key, item) in enumerate(obj.items()):
                frames.append((key, f"{path}<key {i}>", 1, ext + 1))
                frames.append((item, f"{path}[{_key_repr(key)}]", 1, ext + 1))
            stack.extend(reversed(frames))
        elif cls is tuple:
            stack.extend(
                (item, f"{path}[{i}]", 1, ext + 1) for i, item in reversed(list(enumerate(obj)))
            )
        else:  # set / frozenset
            stack.extend(
                (item, f"{path}{{{i}}}", 1, ext + 1) for i, item in reversed(list(enumerate(obj)))
            )
    return None
