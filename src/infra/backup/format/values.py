"""Lossless, typed encoding of Python values to bytes and back, without pickle.

The encoding (``ENCODING_NAME = "msgpack-tagged-1"``, recorded in manifests) is MessagePack
as written by :mod:`ormsgpack`. Plain data stays in ormsgpack's Rust code: ``None``, ``bool``,
``int`` in ``[-2**63, 2**64)``, ``float`` (any float64 bit pattern: NaN, infinities and
``-0.0`` survive), ``str``, ``bytes``, ``list`` and ``dict`` whose keys are all exact ``str``
are native MessagePack values. Every other supported type becomes a MessagePack *ext* value
``(code, payload)`` built by a ``default`` hook; the codes below are stable and must never be
renumbered (add new codes instead).

Ext codes
---------
Payload "msgpack" means the payload is itself a value encoded with this same codec (it may
hold further ext values); "raw" means a fixed byte layout, integers little-endian unless
stated otherwise.

==== ============================== ======= ============================================
code type                           payload layout
==== ============================== ======= ============================================
1    ``tuple``                      msgpack array of the items
2    ``set``                        msgpack array of the members (iteration order)
3    ``frozenset``                  msgpack array of the members (iteration order)
4    ``dict`` with a key that is    msgpack flat array ``[k0, v0, k1, v1, ...]``, in order
     not an exact ``str``
5    ``collections.OrderedDict``    msgpack flat array ``[k0, v0, k1, v1, ...]``, in order
6    ``datetime.datetime``          raw     ``<HBBBBBIB``: year, month, day, hour, minute,
                                            second, microsecond (u32), fold; then TZ
7    ``datetime.date``              raw     ``<HBB``: year, month, day
8    ``datetime.time``              raw     ``<BBBIB``: hour, minute, second,
                                            microsecond (u32), fold; then TZ
9    ``datetime.timedelta``         raw     ``<iiI``: days (i32), seconds, microseconds
10   ``decimal.Decimal``            raw     ASCII of ``str(d)`` (exact: sign, digits,
                                            exponent, NaN, sNaN, Infinity)
11   ``uuid.UUID``                  raw     the 16 bytes ``u.bytes``
12   ``enum.Enum`` member           msgpack array ``[module, qualname, value]``
13   ``pathlib`` path               raw     1 byte class (0 PurePosixPath,
                                            1 PureWindowsPath, 2 PosixPath,
                                            3 WindowsPath), then ``str(p)`` as UTF-8
                                            with surrogatepass
14   ``int`` outside                raw     two's complement, big-endian, minimal
     ``[-2**63, 2**64)``                    length (``n.to_bytes(len, "big",
                                            signed=True)``)
15   ``complex``                    raw     ``<dd``: real, imag
16   ``fractions.Fraction``         raw     ``<I`` length L, numerator (L bytes, as in
                                            code 14), denominator (the rest, as in 14)
17   ``numpy.ndarray``              raw     u8 N, N bytes ASCII ``dtype.str`` (``<f8``,
                                            ``<M8[ns]``, ``|b1``, ...), u8 ndim,
                                            ndim x ``<Q`` shape, C-order element bytes
18   numpy scalar                   raw     u8 N, N bytes ASCII ``dtype.str``, then the
     (``numpy.generic``)                    element bytes
19   ``pandas.Index`` (any kind)    msgpack INDEX (see below)
20   ``pandas.Series``              msgpack array ``[name, INDEX, ARRAY]``
21   ``pandas.DataFrame``           msgpack array ``[INDEX of the columns, INDEX,
                                            [ARRAY, ...]]``, one ARRAY per column
==== ============================== ======= ============================================

TZ (the tail of codes 6 and 8) is one kind byte and its data: ``0`` naive (nothing follows);
``1`` ``datetime.timezone`` with its default name: ``<q`` offset in microseconds; ``2``
``datetime.timezone`` with a custom name: ``<q`` offset in microseconds then the name as
UTF-8; ``3`` ``zoneinfo.ZoneInfo``: its key as UTF-8.

INDEX is an array ``["R", name, start, stop, step]`` (RangeIndex), ``["M", [names],
[ARRAY per level]]`` (MultiIndex) or ``["I", name, ARRAY, freq]`` (any other Index; ``freq``
is the ``freqstr`` of a DatetimeIndex/TimedeltaIndex or nil). ARRAY is ``["N", ndarray]``
(numpy dtype other than object; the ndarray is ext 17), ``["O", [values...]]`` (numpy object
dtype, each value encoded with this codec), ``["E", dtype_name, [values...]]`` (pandas string
or nullable masked dtype named as ``str(dtype)``; missing values are nil) or ``["T",
dtype_name, ndarray]`` (tz-aware datetimes: ``dtype_name`` like ``datetime64[ns,
Europe/Berlin]``, ndarray of the naive UTC instants). Index ``attrs``/``flags`` and
DataFrame ``attrs`` are not stored.

Guarantees and limits
---------------------
* ``decode_value(encode_value(v))`` equals ``v`` and has the same type at every level: a tuple
  stays a tuple, an OrderedDict an OrderedDict, an IntEnum member the member, and dict
  insertion order is kept. Exception: ``bytearray`` and ``memoryview`` are packed natively by
  ormsgpack (its ``default`` hook is never called for them, and finding them would need a walk
  of every value), so they are restored as ``bytes``.
* Anything else is refused with :class:`UnsupportedValueError` naming where it sits, e.g.
  ``data["portfolio"]["positions"][3]["opened_at"]``. Path syntax: ``["key"]`` for str keys,
  ``[repr(key)]`` for other keys, ``[i]`` for list/tuple items, ``{i}`` for the i-th member of
  a set in iteration order, ``<key i>`` for the i-th key of a dict, ``.value`` for the value of
  an enum member; pandas objects use ``.columns``, ``.index``, ``.name`` and ``[column]``.
* Nesting: at most 255 levels of list/dict inside one ext payload (ormsgpack's limit) and at
  most 32 nested ext values with a msgpack payload (tuple, set, frozenset, OrderedDict, dict
  with non-str keys, enum, pandas); raw-payload codes do not count. Deeper or cyclic values
  are refused. Hostile input can make every payload ~1000 arrays deep (~0.55 MB of native
  stack each), so the decoder handles 6 ext levels in the calling thread and decodes values
  nested deeper again in a helper thread with a 64 MB stack.
* Enums are restored only if their class is already loaded: the class is looked up in
  ``sys.modules`` and then through the class ``__dict__`` along the qualname, never by
  importing. If the class is not loaded, is not an Enum, or has no member with that value,
  the plain value is returned instead.
* Decoding never imports modules named by the data and never runs code from it. It imports
  ``numpy``/``pandas`` (fixed names) only to rebuild values of codes 17-21, and
  ``zoneinfo.ZoneInfo(key)`` reads the time-zone database. Any malformed input raises
  :class:`CorruptDataError`. Bytes after a complete top-level value are ignored (checksums are
  the storage layer's job).
* Importing this module imports neither numpy nor pandas; values of those types can only
  exist if the caller imported them, so the encoder finds them in ``sys.modules``.
"""

from __future__ import annotations

import base64
import collections
import datetime as _dt
import enum
import json
import math
import pathlib
import struct
import sys
import threading
import types
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, NoReturn

import ormsgpack

from src.infra.backup.errors import CorruptDataError, UnsupportedValueError

__all__ = [
    "ENCODING_NAME",
    "decode_value",
    "encode_value",
    "find_unsupported",
    "to_jsonable",
]

ENCODING_NAME: Final = "msgpack-tagged-1"

#: Most nested ext values with a msgpack payload (see the module docstring).
_MAX_EXT_DEPTH: Final = 32
#: ormsgpack's unpackb nests up to ~1022 arrays deep, using ~0.55 MB of native stack; hostile
#: input can do that in every ext payload. Up to this many levels are decoded in the calling
#: thread (< 4 MB); deeper values are decoded again in a thread with a stack of this size.
_FAST_EXT_DEPTH: Final = 6
_BIG_STACK_BYTES: Final = 64 * 1024 * 1024
_STACK_LOCK: Final = threading.Lock()

#: ormsgpack refuses a list/dict at this many enclosing lists/dicts within one packb call.
_MAX_CONTAINER_DEPTH: Final = 255

_OPT: Final = (
    ormsgpack.OPT_PASSTHROUGH_TUPLE
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    | ormsgpack.OPT_PASSTHROUGH_UUID
    | ormsgpack.OPT_PASSTHROUGH_ENUM
    | ormsgpack.OPT_PASSTHROUGH_BIG_INT
    | ormsgpack.OPT_PASSTHROUGH_DATACLASS
)

# Ext codes: stable, never renumber.
_EXT_TUPLE: Final = 1
_EXT_SET: Final = 2
_EXT_FROZENSET: Final = 3
_EXT_DICT: Final = 4
_EXT_ORDEREDDICT: Final = 5
_EXT_DATETIME: Final = 6
_EXT_DATE: Final = 7
_EXT_TIME: Final = 8
_EXT_TIMEDELTA: Final = 9
_EXT_DECIMAL: Final = 10
_EXT_UUID: Final = 11
_EXT_ENUM: Final = 12
_EXT_PATH: Final = 13
_EXT_BIGINT: Final = 14
_EXT_COMPLEX: Final = 15
_EXT_FRACTION: Final = 16
_EXT_NDARRAY: Final = 17
_EXT_NPSCALAR: Final = 18
_EXT_PD_INDEX: Final = 19
_EXT_PD_SERIES: Final = 20
_EXT_PD_DATAFRAME: Final = 21

_DICT_KEY_ERROR: Final = "Dict key must be str"

_DATETIME_HEAD: Final = struct.Struct("<HBBBBBIB")
_DATE: Final = struct.Struct("<HBB")
_TIME_HEAD: Final = struct.Struct("<BBBIB")
_TIMEDELTA: Final = struct.Struct("<iiI")
_COMPLEX: Final = struct.Struct("<dd")
_OFFSET: Final = struct.Struct("<q")
_U32: Final = struct.Struct("<I")

_TZ_NAIVE: Final = b"\x00"
_TZ_FIXED: Final = 1
_TZ_FIXED_NAMED: Final = 2
_TZ_ZONEINFO: Final = 3

_PATH_CLASSES: Final[tuple[type[pathlib.PurePath], ...]] = (
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
    pathlib.PosixPath,
    pathlib.WindowsPath,
)
_NUMPY_KINDS: Final = "biufcmMSU"

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


class _Pairs:
    """Internal wrapper for a dict whose keys are not all exact ``str`` (slow path only)."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items


# --------------------------------------------------------------------------- describing


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

# --------------------------------------------------------------------------- encoding


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
_TZ_CACHE_SIZE: Final = 256


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


def _enc_datetime(enc: _Encoder, value: _dt.datetime) -> ormsgpack.Ext:
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


def _enc_date(enc: _Encoder, value: _dt.date) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_DATE, _DATE.pack(value.year, value.month, value.day))


def _enc_time(enc: _Encoder, value: _dt.time) -> ormsgpack.Ext:
    head = _TIME_HEAD.pack(value.hour, value.minute, value.second, value.microsecond, value.fold)
    return ormsgpack.Ext(_EXT_TIME, head + _tz_tail(value.tzinfo))


def _enc_timedelta(enc: _Encoder, value: _dt.timedelta) -> ormsgpack.Ext:
    return ormsgpack.Ext(
        _EXT_TIMEDELTA, _TIMEDELTA.pack(value.days, value.seconds, value.microseconds)
    )


def _enc_decimal(enc: _Encoder, value: Decimal) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_DECIMAL, str(value).encode("ascii"))


def _enc_uuid(enc: _Encoder, value: uuid.UUID) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_UUID, value.bytes)


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def _enc_bigint(enc: _Encoder, value: int) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_BIGINT, _int_bytes(value))


def _enc_complex(enc: _Encoder, value: complex) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_COMPLEX, _COMPLEX.pack(value.real, value.imag))


def _enc_fraction(enc: _Encoder, value: Fraction) -> ormsgpack.Ext:
    num = _int_bytes(value.numerator)
    return ormsgpack.Ext(_EXT_FRACTION, _U32.pack(len(num)) + num + _int_bytes(value.denominator))


def _enc_path(enc: _Encoder, value: pathlib.PurePath) -> ormsgpack.Ext:
    kind = _PATH_CLASSES.index(type(value))
    return ormsgpack.Ext(_EXT_PATH, bytes((kind,)) + str(value).encode("utf-8", "surrogatepass"))


def _enc_tuple(enc: _Encoder, value: tuple[Any, ...]) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_TUPLE, enc.pack_nested(list(value)))


def _enc_set(enc: _Encoder, value: set[Any]) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_SET, enc.pack_nested(list(value)))


def _enc_frozenset(enc: _Encoder, value: frozenset[Any]) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_FROZENSET, enc.pack_nested(list(value)))


def _flat_items(mapping: dict[Any, Any]) -> list[Any]:
    flat: list[Any] = []
    for key, item in mapping.items():
        flat.append(key)
        flat.append(item)
    return flat


def _enc_ordereddict(enc: _Encoder, value: collections.OrderedDict[Any, Any]) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_ORDEREDDICT, enc.pack_nested(_flat_items(value)))


def _enc_pairs(enc: _Encoder, value: _Pairs) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_DICT, enc.pack_nested(value.items))


def _enc_enum(enc: _Encoder, value: enum.Enum) -> ormsgpack.Ext:
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

# ---- numpy / pandas (only ever touched when the caller already imported them)


def _numpy() -> Any:
    return sys.modules.get("numpy")


def _pandas() -> Any:
    return sys.modules.get("pandas")


def _check_np_dtype(dtype: Any, *, scalar: bool = False) -> bytes:
    if dtype.hasobject or dtype.kind not in _NUMPY_KINDS:
        raise _RefusalError(
            f"numpy dtype {dtype.str!r} (kind {dtype.kind!r}) is not stored; object, "
            "structured and void dtypes are refused: convert with .tolist() or .astype(...)"
        )
    if dtype.itemsize == 0 and not scalar:
        raise _RefusalError(
            f"numpy dtype {dtype.str!r} has zero item size; use .astype(...) with a size"
        )
    return dtype.str.encode("ascii")  # type: ignore[no-any-return]


def _enc_ndarray(enc: _Encoder, arr: Any) -> ormsgpack.Ext:
    dtype_str = _check_np_dtype(arr.dtype)
    head = (
        bytes((len(dtype_str),))
        + dtype_str
        + bytes((arr.ndim,))
        + struct.pack(f"<{arr.ndim}Q", *arr.shape)
    )
    return ormsgpack.Ext(_EXT_NDARRAY, head + arr.tobytes(order="C"))


def _enc_npscalar(enc: _Encoder, value: Any) -> ormsgpack.Ext:
    dtype_str = _check_np_dtype(value.dtype, scalar=True)
    raw = value.tobytes() if value.dtype.itemsize else b""  # np.str_("").tobytes() is not empty
    return ormsgpack.Ext(_EXT_NPSCALAR, bytes((len(dtype_str),)) + dtype_str + raw)


def _pd_array_payload(arr: Any) -> list[Any]:
    """ARRAY payload for the values of a pandas Series or Index (see module docstring)."""
    np = _numpy()
    pd = _pandas()
    dtype = arr.dtype
    if isinstance(dtype, np.dtype):
        values = arr.to_numpy()
        if dtype.hasobject:
            return ["O", list(values)]
        _check_np_dtype(dtype)
        return ["N", values]
    name = str(dtype)
    try:
        same = pd.api.types.pandas_dtype(name) == dtype
    except Exception:  # noqa: BLE001 - pandas raises various types for unknown names
        same = False
    if isinstance(dtype, pd.DatetimeTZDtype) and same:
        return ["T", name, np.asarray(pd.DatetimeIndex(arr).tz_convert(None))]
    if same and (isinstance(dtype, pd.StringDtype) or type(dtype).__name__ in _PD_MASKED_DTYPES):
        return ["E", name, arr.to_numpy(dtype=object, na_value=None).tolist()]
    raise _RefusalError(
        f"pandas dtype {name!r} is not stored; convert it with .astype(...) to a numpy, "
        "str/string, nullable Int/Float/boolean or tz-aware datetime64 dtype"
    )


_PD_MASKED_DTYPES: Final = frozenset(
    {
        "Int8Dtype",
        "Int16Dtype",
        "Int32Dtype",
        "Int64Dtype",
        "UInt8Dtype",
        "UInt16Dtype",
        "UInt32Dtype",
        "UInt64Dtype",
        "Float32Dtype",
        "Float64Dtype",
        "BooleanDtype",
    }
)


def _pd_index_payload(index: Any) -> list[Any]:
    pd = _pandas()
    if type(index) is pd.RangeIndex:
        return ["R", index.name, index.start, index.stop, index.step]
    if isinstance(index, pd.MultiIndex):
        levels = [_pd_array_payload(index.get_level_values(i)) for i in range(index.nlevels)]
        return ["M", list(index.names), levels]
    freq = (
        getattr(index, "freqstr", None)
        if isinstance(index, pd.DatetimeIndex | pd.TimedeltaIndex)
        else None
    )
    return ["I", index.name, _pd_array_payload(index), freq]


def _enc_pd_index(enc: _Encoder, index: Any) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_PD_INDEX, enc.pack_nested(_pd_index_payload(index)))


def _enc_pd_series(enc: _Encoder, series: Any) -> ormsgpack.Ext:
    payload = [series.name, _pd_index_payload(series.index), _pd_array_payload(series)]
    return ormsgpack.Ext(_EXT_PD_SERIES, enc.pack_nested(payload))


def _enc_pd_dataframe(enc: _Encoder, frame: Any) -> ormsgpack.Ext:
    columns = [_pd_array_payload(frame.iloc[:, i]) for i in range(frame.shape[1])]
    payload = [_pd_index_payload(frame.columns), _pd_index_payload(frame.index), columns]
    return ormsgpack.Ext(_EXT_PD_DATAFRAME, enc.pack_nested(payload))


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


class _Encoder:
    """Per-call state of :func:`encode_value`: the ext nesting depth and the first error."""

    __slots__ = ("depth", "error")

    def __init__(self) -> None:
        self.depth = 0
        self.error: str | None = None

    def default(self, obj: Any) -> ormsgpack.Ext:
        """ormsgpack ``default`` hook: everything not natively packed arrives here."""
        encoder = _ENCODERS.get(type(obj))
        if encoder is None:
            encoder = _special_encoder(obj)
            if encoder is None:
                self._fail(_refusal_reason(obj))
        try:
            return encoder(self, obj)
        except _RefusalError as exc:
            self._fail(exc.reason)
        except Exception as exc:  # noqa: BLE001 - ormsgpack would hide it: record it first
            self._fail(f"cannot encode {_type_name(obj)}: {type(exc).__name__}: {exc}")

    def _fail(self, reason: str) -> NoReturn:
        if self.error is None:
            self.error = reason
        raise TypeError(reason)  # ormsgpack swallows the message; encode_value re-diagnoses

    def pack(self, value: Any) -> bytes:
        """Pack ``value``: fast path in Rust, slow path when a dict has non-str keys."""
        try:
            return ormsgpack.packb(value, default=self.default, option=_OPT)
        except TypeError as exc:
            if _DICT_KEY_ERROR not in str(exc):
                raise
        return ormsgpack.packb(self._rewrite(value, 0), default=self.default, option=_OPT)

    def pack_nested(self, payload: Any) -> bytes:
        """Pack the msgpack payload of an ext value one nesting level deeper."""
        if self.depth >= _MAX_EXT_DEPTH:
            self._fail(_TOO_DEEP)
        self.depth += 1
        try:
            return self.pack(payload)
        finally:
            self.depth -= 1

    def _rewrite(self, value: Any, depth: int) -> Any:
        """Copy lists/dicts, wrapping dicts with a non-exact-str key in :class:`_Pairs`.

        The wrapped dict's keys and values are packed by :meth:`pack_nested` (fast path
        first), so only the native containers around it are walked here.
        """
        cls = type(value)
        if cls is list:
            if depth >= _MAX_CONTAINER_DEPTH:
                self._fail(_TOO_DEEP)
            return [self._rewrite(item, depth + 1) for item in value]
        if cls is dict:
            if depth >= _MAX_CONTAINER_DEPTH:
                self._fail(_TOO_DEEP)
            if all(type(key) is str for key in value):
                return {key: self._rewrite(item, depth + 1) for key, item in value.items()}
            return _Pairs(_flat_items(value))
        return value


def encode_value(value: object, *, root: str = "data") -> bytes:
    """Encode ``value`` to bytes (format ``msgpack-tagged-1``), losslessly and typed.

    ``root`` names the value in error messages. Raises :class:`UnsupportedValueError` whose
    ``path`` (and message) names the first place holding something that cannot be stored,
    e.g. ``data["portfolio"]["positions"][3]["opened_at"]``, or that is nested too deeply or
    cyclic. Plain str-keyed data is packed without any Python-level walk.
    """
    encoder = _Encoder()
    try:
        return encoder.pack(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        failure = exc
    found = find_unsupported(value, root)
    if found is not None:
        path, reason = found
        raise UnsupportedValueError(_format_error(path, reason), path) from None
    reason = encoder.error or str(failure)
    raise UnsupportedValueError(_format_error(root, reason), root) from failure


# --------------------------------------------------------------------------- diagnosis

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
_TOO_DEEP: Final = (
    f"nested too deeply: at most {_MAX_CONTAINER_DEPTH} levels of list/dict and at most "
    f"{_MAX_EXT_DEPTH} levels of nested tuple/set/frozenset/OrderedDict/non-str-key dict/"
    "enum/pandas values; flatten the structure"
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


# --------------------------------------------------------------------------- decoding


class _CorruptError(Exception):
    """Internal: a payload is malformed."""


def _corrupt(message: str) -> NoReturn:
    raise _CorruptError(message)


# TZ bytes -> tzinfo, bounded so hostile input cannot grow it without limit.
_TZ_DEC_CACHE: dict[bytes, _dt.tzinfo | None] = {_TZ_NAIVE: None}


def _tz_from_bytes(data: bytes, offset: int) -> _dt.tzinfo | None:
    tail = data[offset:]
    try:
        return _TZ_DEC_CACHE[tail]
    except KeyError:
        pass
    tz = _parse_tz(tail)
    if len(_TZ_DEC_CACHE) < _TZ_CACHE_SIZE:
        _TZ_DEC_CACHE[tail] = tz
    return tz


def _parse_tz(tail: bytes) -> _dt.tzinfo | None:
    kind = tail[0]
    rest = tail[1:]
    if kind in (_TZ_FIXED, _TZ_FIXED_NAMED):
        (micros,) = _OFFSET.unpack_from(rest)
        delta = _dt.timedelta(microseconds=micros)
        if kind == _TZ_FIXED:
            if len(rest) != _OFFSET.size:
                _corrupt("bad fixed-offset time zone")
            return _dt.timezone(delta)
        return _dt.timezone(delta, rest[_OFFSET.size :].decode("utf-8", "surrogatepass"))
    if kind == _TZ_ZONEINFO:
        key = rest.decode("utf-8")
        try:
            return zoneinfo.ZoneInfo(key)
        except Exception as exc:  # noqa: BLE001 - any failure means an unusable key
            _corrupt(f"unknown time zone key {key!r} ({exc.__class__.__name__}: {exc})")
    _corrupt(f"unknown time zone kind {kind}")


def _dec_datetime(dec: _Decoder, data: bytes) -> _dt.datetime:
    year, month, day, hour, minute, second, micro, fold = _DATETIME_HEAD.unpack_from(data)
    tz = _tz_from_bytes(data, _DATETIME_HEAD.size)
    return _dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=tz, fold=fold)


def _dec_date(dec: _Decoder, data: bytes) -> _dt.date:
    return _dt.date(*_DATE.unpack(data))


def _dec_time(dec: _Decoder, data: bytes) -> _dt.time:
    hour, minute, second, micro, fold = _TIME_HEAD.unpack_from(data)
    tz = _tz_from_bytes(data, _TIME_HEAD.size)
    return _dt.time(hour, minute, second, micro, tzinfo=tz, fold=fold)


def _dec_timedelta(dec: _Decoder, data: bytes) -> _dt.timedelta:
    days, seconds, micros = _TIMEDELTA.unpack(data)
    if seconds >= 86400 or micros >= 1_000_000:
        _corrupt("non-normalized timedelta")
    return _dt.timedelta(days, seconds, micros)


def _dec_decimal(dec: _Decoder, data: bytes) -> Decimal:
    if len(data) > 1_000_000:
        _corrupt("decimal text too long")
    return Decimal(data.decode("ascii"))


def _dec_uuid(dec: _Decoder, data: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=data)


def _dec_bigint(dec: _Decoder, data: bytes) -> int:
    if not data:
        _corrupt("empty big integer")
    return int.from_bytes(data, "big", signed=True)


def _dec_complex(dec: _Decoder, data: bytes) -> complex:
    real, imag = _COMPLEX.unpack(data)
    return complex(real, imag)


def _dec_fraction(dec: _Decoder, data: bytes) -> Fraction:
    (length,) = _U32.unpack_from(data)
    num = data[_U32.size : _U32.size + length]
    den = data[_U32.size + length :]
    if len(num) != length or not num or not den:
        _corrupt("truncated fraction")
    denominator = int.from_bytes(den, "big", signed=True)
    if denominator <= 0:
        _corrupt("fraction denominator must be positive")
    return Fraction(int.from_bytes(num, "big", signed=True), denominator)


def _dec_path(dec: _Decoder, data: bytes) -> pathlib.PurePath:
    kind = data[0]
    if kind >= len(_PATH_CLASSES):
        _corrupt(f"unknown path class {kind}")
    text = data[1:].decode("utf-8", "surrogatepass")
    cls = _PATH_CLASSES[kind]
    if kind >= 2 and cls is not type(pathlib.Path()):
        cls = _PATH_CLASSES[kind - 2]  # a concrete path of another OS: its pure flavour
    return cls(text)


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


def _dec_tuple(dec: _Decoder, data: bytes) -> tuple[Any, ...]:
    return tuple(_as_list(dec.unpack(data), "tuple"))


def _dec_set(dec: _Decoder, data: bytes) -> set[Any]:
    return set(_as_list(dec.unpack(data), "set"))


def _dec_frozenset(dec: _Decoder, data: bytes) -> frozenset[Any]:
    return frozenset(_as_list(dec.unpack(data), "frozenset"))


def _dec_dict(dec: _Decoder, data: bytes) -> dict[Any, Any]:
    return dict(_pairs(dec.unpack(data), "dict"))


def _dec_ordereddict(dec: _Decoder, data: bytes) -> collections.OrderedDict[Any, Any]:
    return collections.OrderedDict(_pairs(dec.unpack(data), "OrderedDict"))


def _lookup_enum(module: str, qualname: str) -> type[enum.Enum] | None:
    """Find an already loaded Enum class, without importing and without calling getattr hooks."""
    obj: Any = sys.modules.get(module)
    if not isinstance(obj, types.ModuleType):
        return None
    # object.__getattribute__ / type's own __dict__ descriptor: no module __getattr__, no
    # lazy-module loading, no metaclass hooks run here.
    namespace = object.__getattribute__(obj, "__dict__")
    for part in qualname.split("."):
        obj = namespace.get(part)
        if not isinstance(obj, type):
            return None
        namespace = _TYPE_DICT.__get__(obj)
    if isinstance(obj, type) and issubclass(obj, enum.Enum):
        return obj
    return None


_TYPE_DICT: Final = type.__dict__["__dict__"]


def _dec_enum(dec: _Decoder, data: bytes) -> object:
    payload = _as_list(dec.unpack(data), "enum")
    if len(payload) != 3 or type(payload[0]) is not str or type(payload[1]) is not str:
        _corrupt("enum payload must be [module, qualname, value]")
    module, qualname, value = payload
    cls = _lookup_enum(module, qualname)
    if cls is None:
        return value
    try:
        return cls(value)
    except Exception:  # noqa: BLE001 - the member no longer exists: keep the data
        return value


def _np_dtype(np: Any, raw: bytes, *, scalar: bool) -> Any:
    dtype = np.dtype(raw.decode("ascii"))
    if dtype.hasobject or dtype.kind not in _NUMPY_KINDS or (dtype.itemsize == 0 and not scalar):
        _corrupt(f"refused numpy dtype {dtype.str!r}")
    return dtype


def _require(module: str) -> Any:
    loaded = sys.modules.get(module)
    if loaded is not None:
        return loaded
    import importlib

    try:
        return importlib.import_module(module)  # fixed names only: "numpy" or "pandas"
    except ImportError:
        _corrupt(f"{module} is needed to decode this value but is not installed")


def _dec_ndarray(dec: _Decoder, data: bytes) -> Any:
    np = _require("numpy")
    n = data[0]
    dtype = _np_dtype(np, data[1 : 1 + n], scalar=False)
    ndim = data[1 + n]
    if ndim > 64:
        _corrupt("too many array dimensions")
    shape = struct.unpack_from(f"<{ndim}Q", data, 2 + n)
    offset = 2 + n + 8 * ndim
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - offset:
        _corrupt("array data size does not match its shape")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()


def _dec_npscalar(dec: _Decoder, data: bytes) -> Any:
    np = _require("numpy")
    n = data[0]
    dtype = _np_dtype(np, data[1 : 1 + n], scalar=True)
    raw = data[1 + n :]
    if len(raw) != dtype.itemsize:
        _corrupt("numpy scalar size does not match its dtype")
    if dtype.itemsize == 0:
        return dtype.type()
    return np.frombuffer(raw, dtype=dtype)[0]


def _pd_array(pd: Any, np: Any, payload: object) -> Any:
    item = _as_list(payload, "pandas array")
    kind = item[0] if item else None
    if kind == "N" and len(item) == 2 and type(item[1]) is np.ndarray and item[1].ndim == 1:
        return item[1]
    if kind == "O" and len(item) == 2:
        values = _as_list(item[1], "pandas object array")
        arr = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            arr[i] = value
        return arr
    if kind == "E" and len(item) == 3 and type(item[1]) is str:
        dtype = pd.api.types.pandas_dtype(item[1])
        if not (isinstance(dtype, pd.StringDtype) or type(dtype).__name__ in _PD_MASKED_DTYPES):
            _corrupt(f"refused pandas dtype {item[1]!r}")
        return pd.array(_as_list(item[2], "pandas values"), dtype=dtype)
    if kind == "T" and len(item) == 3 and type(item[1]) is str and type(item[2]) is np.ndarray:
        dtype = pd.api.types.pandas_dtype(item[1])
        if not isinstance(dtype, pd.DatetimeTZDtype) or item[2].dtype.kind != "M":
            _corrupt(f"bad tz-aware datetime array {item[1]!r}")
        return pd.DatetimeIndex(item[2]).tz_localize("UTC").tz_convert(dtype.tz).array
    _corrupt("malformed pandas array")


def _pd_index(pd: Any, np: Any, payload: object) -> Any:
    item = _as_list(payload, "pandas index")
    kind = item[0] if item else None
    if kind == "R" and len(item) == 5:
        return pd.RangeIndex(item[2], item[3], item[4], name=item[1])
    if kind == "M" and len(item) == 3:
        arrays = [_pd_array(pd, np, level) for level in _as_list(item[2], "MultiIndex levels")]
        return pd.MultiIndex.from_arrays(arrays, names=_as_list(item[1], "MultiIndex names"))
    if kind == "I" and len(item) == 4:
        arr = _pd_array(pd, np, item[2])
        index = pd.Index(arr, dtype=arr.dtype, name=item[1], copy=False)
        if item[3] is not None:
            if (
                not isinstance(index, pd.DatetimeIndex | pd.TimedeltaIndex)
                or type(item[3]) is not str
            ):
                _corrupt("freq on a non-datetime index")
            index = type(index)(index, freq=item[3])
        return index
    _corrupt("malformed pandas index")


def _dec_pd_index(dec: _Decoder, data: bytes) -> Any:
    np, pd = _require("numpy"), _require("pandas")
    return _pd_index(pd, np, dec.unpack(data))


def _dec_pd_series(dec: _Decoder, data: bytes) -> Any:
    np, pd = _require("numpy"), _require("pandas")
    item = _as_list(dec.unpack(data), "Series")
    if len(item) != 3:
        _corrupt("Series payload must be [name, index, values]")
    index = _pd_index(pd, np, item[1])
    values = _pd_array(pd, np, item[2])
    if len(values) != len(index):
        _corrupt("Series values and index differ in length")
    return pd.Series(values, index=index, name=item[0], dtype=values.dtype, copy=False)


def _dec_pd_dataframe(dec: _Decoder, data: bytes) -> Any:
    np, pd = _require("numpy"), _require("pandas")
    item = _as_list(dec.unpack(data), "DataFrame")
    if len(item) != 3:
        _corrupt("DataFrame payload must be [columns, index, arrays]")
    columns = _pd_index(pd, np, item[0])
    index = _pd_index(pd, np, item[1])
    arrays = [_pd_array(pd, np, column) for column in _as_list(item[2], "DataFrame columns")]
    if len(arrays) != len(columns) or any(len(arr) != len(index) for arr in arrays):
        _corrupt("DataFrame shape does not match its columns/index")
    frame = pd.DataFrame(dict(enumerate(arrays)), index=index, copy=False)
    frame.columns = columns
    return frame


_DECODERS: Final[dict[int, Callable[[Any, bytes], object]]] = {
    _EXT_TUPLE: _dec_tuple,
    _EXT_SET: _dec_set,
    _EXT_FROZENSET: _dec_frozenset,
    _EXT_DICT: _dec_dict,
    _EXT_ORDEREDDICT: _dec_ordereddict,
    _EXT_DATETIME: _dec_datetime,
    _EXT_DATE: _dec_date,
    _EXT_TIME: _dec_time,
    _EXT_TIMEDELTA: _dec_timedelta,
    _EXT_DECIMAL: _dec_decimal,
    _EXT_UUID: _dec_uuid,
    _EXT_ENUM: _dec_enum,
    _EXT_PATH: _dec_path,
    _EXT_BIGINT: _dec_bigint,
    _EXT_COMPLEX: _dec_complex,
    _EXT_FRACTION: _dec_fraction,
    _EXT_NDARRAY: _dec_ndarray,
    _EXT_NPSCALAR: _dec_npscalar,
    _EXT_PD_INDEX: _dec_pd_index,
    _EXT_PD_SERIES: _dec_pd_series,
    _EXT_PD_DATAFRAME: _dec_pd_dataframe,
}


class _Decoder:
    """Per-call state of :func:`decode_value`: ext nesting depth, its limit, the first error."""

    __slots__ = ("depth", "error", "limit", "needs_big_stack")

    def __init__(self, limit: int) -> None:
        self.depth = 0
        self.limit = limit
        self.error: str | None = None
        self.needs_big_stack = False

    def hook(self, code: int, data: bytes) -> object:
        """ormsgpack ``ext_hook``: rebuild one ext value (errors are recorded, then raised)."""
        try:
            decoder = _DECODERS.get(code)
            if decoder is None:
                _corrupt(f"unknown ext code {code}")
            return decoder(self, data)
        except Exception as exc:
            if self.error is None:
                detail = (
                    str(exc) if isinstance(exc, _CorruptError) else f"{type(exc).__name__}: {exc}"
                )
                self.error = f"malformed ext value (code {code}): {detail}"
            raise

    def unpack(self, data: bytes) -> object:
        """Decode the msgpack payload of an ext value one nesting level deeper."""
        if self.depth >= self.limit:
            if self.limit < _MAX_EXT_DEPTH:
                self.needs_big_stack = True
            _corrupt(f"ext values nested more than {self.limit} deep")
        self.depth += 1
        try:
            return ormsgpack.unpackb(data, ext_hook=self.hook)
        finally:
            self.depth -= 1


def _decode(data: bytes | memoryview, limit: int) -> tuple[object, _Decoder]:
    decoder = _Decoder(limit)
    try:
        return ormsgpack.unpackb(data, ext_hook=decoder.hook), decoder
    except Exception as exc:
        if decoder.needs_big_stack:
            return None, decoder
        message = decoder.error or f"malformed msgpack data: {exc}"
        raise CorruptDataError(message) from exc


def _decode_on_big_stack(data: bytes | memoryview) -> object:
    """Decode in a fresh thread whose native stack holds ``_MAX_EXT_DEPTH`` hostile levels."""
    outcome: list[object] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(_decode(data, _MAX_EXT_DEPTH)[0])
        except BaseException as exc:  # noqa: BLE001 - handed over to the calling thread
            failure.append(exc)

    with _STACK_LOCK:
        try:
            previous = threading.stack_size(_BIG_STACK_BYTES)
        except (ValueError, RuntimeError) as exc:
            raise CorruptDataError(
                f"ext values nested more than {_FAST_EXT_DEPTH} deep and this platform "
                "cannot start a thread with a larger stack to decode them"
            ) from exc
        try:
            worker = threading.Thread(target=target, name="decode_value-big-stack", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]


def decode_value(data: bytes | memoryview) -> object:
    """Decode bytes written by :func:`encode_value`.

    Raises :class:`CorruptDataError` (and nothing else) for any malformed input. Never
    imports modules named by the data and never runs code from it; enum classes are only
    resolved when already loaded (otherwise the plain value is returned). Values with more
    than 6 nested msgpack-payload ext levels are decoded again in a helper thread with a
    larger native stack (see the module docstring).
    """
    value, decoder = _decode(data, _FAST_EXT_DEPTH)
    if decoder.needs_big_stack:
        return _decode_on_big_stack(data)
    return value


# --------------------------------------------------------------------------- JSON view


def _json_float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _json_key(key: object) -> str:
    if isinstance(key, str) and not isinstance(key, enum.Enum):
        return str(key)
    converted = _jsonable(key)
    if isinstance(converted, str):
        return converted
    return json.dumps(converted, ensure_ascii=False, sort_keys=True)


def _sort_key(item: object) -> str:
    return json.dumps(item, ensure_ascii=False, sort_keys=True)


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value) if value.bit_length() < 10_000 else hex(value)
    if isinstance(value, float):
        return _json_float(float(value))
    if isinstance(value, dict):
        return {_json_key(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [_jsonable(item) for item in value]
        try:
            return sorted(items)  # type: ignore[type-var]
        except TypeError:
            return sorted(items, key=_sort_key)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | uuid.UUID | pathlib.PurePath | Fraction):
        return str(value)
    if isinstance(value, complex):
        return {"real": _json_float(value.real), "imag": _json_float(value.imag)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    np = _numpy()
    if np is not None:
        if isinstance(value, np.ndarray):
            return _jsonable(value.tolist())
        if isinstance(value, np.generic):
            return _jsonable(value.item())
    pd = _pandas()
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            split = value.to_dict(orient="split")
            split["index_names"] = list(value.index.names)
            return _jsonable(split)
        if isinstance(value, pd.Series):
            return _jsonable(
                {"name": value.name, "index": value.index.tolist(), "data": value.tolist()}
            )
        if isinstance(value, pd.Index):
            return _jsonable(value.tolist())
        if value is pd.NaT or value is pd.NA:
            return None
    return str(value)


def to_jsonable(value: object) -> object:
    """Convert a (decoded) value into something :func:`json.dumps` accepts, for humans.

    A readable and lossy view, not a storage format: dict keys become str (non-str keys via
    their JSON text), tuples and sets become lists (sets sorted when possible), dates and
    times ISO 8601 text, timedelta total seconds, Decimal/UUID/Fraction/paths str, enum
    members their value, bytes ``{"$base64": ...}``, NaN/inf the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``, numpy values lists/scalars, a DataFrame the
    ``to_dict(orient="split")`` layout plus ``index_names``; anything else its ``str``.
    Raises :class:`UnsupportedValueError` for values nested too deeply (or cyclic).
    """
    try:
        return _jsonable(value)
    except RecursionError:
        raise UnsupportedValueError(
            "value nested too deeply (or cyclic) for the JSON view", "data"
        ) from None
