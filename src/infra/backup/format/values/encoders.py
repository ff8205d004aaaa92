"""The ext encoders: one function per type that becomes an ext value, and their table."""

from __future__ import annotations

import collections
import datetime as _dt
import enum
import pathlib
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import ormsgpack

from src.infra.backup.format.values import codes
from src.infra.backup.format.values.codes import (
    _EXT_BIGINT,
    _EXT_COMPLEX,
    _EXT_DATE,
    _EXT_DATETIME,
    _EXT_DECIMAL,
    _EXT_DICT,
    _EXT_ENUM,
    _EXT_FRACTION,
    _EXT_FROZENSET,
    _EXT_ORDEREDDICT,
    _EXT_PATH,
    _EXT_SET,
    _EXT_TIME,
    _EXT_TIMEDELTA,
    _EXT_TUPLE,
    _EXT_UUID,
    _TZ_CACHE_SIZE,
    _TZ_FIXED,
    _TZ_FIXED_NAMED,
    _TZ_NAIVE,
    _TZ_ZONEINFO,
    _Packer,
)
from src.infra.backup.format.values.description import _RefusalError, _type_name
from src.infra.backup.format.values.scientific import (
    _enc_ndarray,
    _enc_npscalar,
    _enc_pd_dataframe,
    _enc_pd_index,
    _enc_pd_series,
    _numpy,
    _pandas,
)

# Objects whose methods the per-value hooks call are bound by assignment, not imported by
# name: CPython (3.11+) compiles ``name.method(...)`` on a name bound by an import statement
# without the method-call fast path (LOAD_METHOD), which measurably slows encoding/decoding.
_COMPLEX: Final = codes._COMPLEX
_DATE: Final = codes._DATE
_DATETIME_HEAD: Final = codes._DATETIME_HEAD
_OFFSET: Final = codes._OFFSET
_TIME_HEAD: Final = codes._TIME_HEAD
_TIMEDELTA: Final = codes._TIMEDELTA
_U32: Final = codes._U32
_PATH_CLASSES: Final = codes._PATH_CLASSES


class _Pairs:
    """Internal wrapper for a dict whose keys are not all exact ``str`` (slow path only)."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items


def _tz_bytes(tz: _dt.tzinfo) -> bytes:
    cls = type(tz)
    if cls is _dt.timezone:
        offset = tz.utcoffset(None)
        assert offset is not None
        micros = (offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds
        name = tz.tzname(None)
        if name == _dt.timezone(offset).tzname(None):
            return bytes((_TZ_FIXED,)) + _OFFSET.pack(micros)
        assert name is not None
        return (
            bytes((_TZ_FIXED_NAMED,)) + _OFFSET.pack(micros) + name.encode("utf-8", "surrogatepass")
        )
    if cls is zoneinfo.ZoneInfo:
        key = tz.key  # type: ignore[attr-defined]
        if not isinstance(key, str):
            raise _RefusalError(
                "zoneinfo.ZoneInfo without a key (loaded from a file) cannot be stored; "
                'use zoneinfo.ZoneInfo("Area/City")'
            )
        return bytes((_TZ_ZONEINFO,)) + key.encode("utf-8", "surrogatepass")
    raise _RefusalError(
        f"unsupported tzinfo {_type_name(tz)}; use datetime.timezone or "
        'zoneinfo.ZoneInfo("Area/City") (e.g. convert pytz/dateutil zones)'
    )


# Identity cache tz object -> TZ bytes (holds the tz, so its id cannot be reused).
_TZ_ENC_CACHE: dict[int, tuple[_dt.tzinfo, bytes]] = {}


def _tz_tail(tz: _dt.tzinfo | None) -> bytes:
    if tz is None:
        return _TZ_NAIVE
    entry = _TZ_ENC_CACHE.get(id(tz))
    if entry is not None and entry[0] is tz:
        return entry[1]
    tail = _tz_bytes(tz)
    if len(_TZ_ENC_CACHE) < _TZ_CACHE_SIZE:
        _TZ_ENC_CACHE[id(tz)] = (tz, tail)
    return tail


def _enc_datetime(enc: _Packer, value: _dt.datetime) -> ormsgpack.Ext:
    head = _DATETIME_HEAD.pack(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        value.fold,
    )
    return ormsgpack.Ext(_EXT_DATETIME, head + _tz_tail(value.tzinfo))


def _enc_date(enc: _Packer, value: _dt.date) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_DATE, _DATE.pack(value.year, value.month, value.day))


def _enc_time(enc: _Packer, value: _dt.time) -> ormsgpack.Ext:
    head = _TIME_HEAD.pack(value.hour, value.minute, value.second, value.microsecond, value.fold)
    return ormsgpack.Ext(_EXT_TIME, head + _tz_tail(value.tzinfo))


def _enc_timedelta(enc: _Packer, value: _dt.timedelta) -> ormsgpack.Ext:
    return ormsgpack.Ext(
        _EXT_TIMEDELTA, _TIMEDELTA.pack(value.days, value.seconds, value.microseconds)
    )


def _enc_decimal(enc: _Packer, value: Decimal) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_DECIMAL, str(value).encode("ascii"))


def _enc_uuid(enc: _Packer, value: uuid.UUID) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_UUID, value.bytes)


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def _enc_bigint(enc: _Packer, value: int) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_BIGINT, _int_bytes(value))


def _enc_complex(enc: _Packer, value: complex) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_COMPLEX, _COMPLEX.pack(value.real, value.imag))


def _enc_fraction(enc: _Packer, value: Fraction) -> ormsgpack.Ext:
    num = _int_bytes(value.numerator)
    return ormsgpack.Ext(_EXT_FRACTION, _U32.pack(len(num)) + num + _int_bytes(value.denominator))


def _enc_path(enc: _Packer, value: pathlib.PurePath) -> ormsgpack.Ext:
    kind = _PATH_CLASSES.index(type(value))
    return ormsgpack.Ext(_EXT_PATH, bytes((kind,)) + str(value).encode("utf-8", "surrogatepass"))


def _enc_tuple(enc: _Packer, value: tuple[Any, ...]) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_TUPLE, enc.pack_nested(list(value)))


def _enc_set(enc: _Packer, value: set[Any]) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_SET, enc.pack_nested(list(value)))


def _enc_frozenset(enc: _Packer, value: frozenset[Any]) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_FROZENSET, enc.pack_nested(list(value)))


def _flat_items(mapping: dict[Any, Any]) -> list[Any]:
    flat: list[Any] = []
    for key, item in mapping.items():
        flat.append(key)
        flat.append(item)
    return flat


def _enc_ordereddict(enc: _Packer, value: collections.OrderedDict[Any, Any]) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_ORDEREDDICT, enc.pack_nested(_flat_items(value)))


def _enc_pairs(enc: _Packer, value: _Pairs) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_DICT, enc.pack_nested(value.items))


def _enc_enum(enc: _Packer, value: enum.Enum) -> ormsgpack.Ext:
    cls = type(value)
    return ormsgpack.Ext(
        _EXT_ENUM, enc.pack_nested([cls.__module__, cls.__qualname__, value.value])
    )


_ENCODERS: Final[dict[type, Callable[[Any, Any], ormsgpack.Ext]]] = {
    tuple: _enc_tuple,
    set: _enc_set,
    frozenset: _enc_frozenset,
    _dt.datetime: _enc_datetime,
    _dt.date: _enc_date,
    _dt.time: _enc_time,
    _dt.timedelta: _enc_timedelta,
    Decimal: _enc_decimal,
    uuid.UUID: _enc_uuid,
    int: _enc_bigint,
    complex: _enc_complex,
    Fraction: _enc_fraction,
    collections.OrderedDict: _enc_ordereddict,
    _Pairs: _enc_pairs,
    pathlib.PurePosixPath: _enc_path,
    pathlib.PureWindowsPath: _enc_path,
    pathlib.PosixPath: _enc_path,
    pathlib.WindowsPath: _enc_path,
}


def _special_encoder(obj: object) -> Callable[[Any, Any], ormsgpack.Ext] | None:
    """Encoder for enum members and numpy/pandas objects, else None."""
    if isinstance(obj, enum.Enum):
        return _enc_enum
    module = type(obj).__module__
    if module.startswith("numpy"):
        np = _numpy()
        if np is not None:
            if type(obj) is np.ndarray:
                return _enc_ndarray
            if isinstance(obj, np.generic):
                return _enc_npscalar
    elif module.startswith("pandas"):
        pd = _pandas()
        if pd is not None:
            if type(obj) is pd.DataFrame:
                return _enc_pd_dataframe
            if type(obj) is pd.Series:
                return _enc_pd_series
            if isinstance(obj, pd.Index):
                return _enc_pd_index
    return None
