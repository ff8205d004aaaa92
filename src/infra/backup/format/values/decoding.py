"""Decoding bytes back into values: the ``ext_hook``, the ext decoders, the big-stack retry."""

from __future__ import annotations

import collections
import datetime as _dt
import enum
import pathlib
import sys
import threading
import types
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import ormsgpack

from src.infra.backup.errors import CorruptDataError
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
    _EXT_NDARRAY,
    _EXT_NPSCALAR,
    _EXT_ORDEREDDICT,
    _EXT_PATH,
    _EXT_PD_DATAFRAME,
    _EXT_PD_INDEX,
    _EXT_PD_SERIES,
    _EXT_SET,
    _EXT_TIME,
    _EXT_TIMEDELTA,
    _EXT_TUPLE,
    _EXT_UUID,
    _MAX_EXT_DEPTH,
    _PATH_CLASSES,
    _TZ_CACHE_SIZE,
    _TZ_FIXED,
    _TZ_FIXED_NAMED,
    _TZ_NAIVE,
    _TZ_ZONEINFO,
)
from src.infra.backup.format.values.corruption import _as_list, _corrupt, _CorruptError, _pairs
from src.infra.backup.format.values.scientific import (
    _dec_ndarray,
    _dec_npscalar,
    _dec_pd_dataframe,
    _dec_pd_index,
    _dec_pd_series,
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

#: ormsgpack's unpackb nests up to ~1022 arrays deep, using ~0.55 MB of native stack; hostile
#: input can do that in every ext payload. Up to this many levels are decoded in the calling
#: thread (< 4 MB); deeper values are decoded again in a thread with a stack of this size.
_FAST_EXT_DEPTH: Final = 6
_BIG_STACK_BYTES: Final = 64 * 1024 * 1024
_STACK_LOCK: Final = threading.Lock()

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
    larger native stack (see the package docstring).
    """
    value, decoder = _decode(data, _FAST_EXT_DEPTH)
    if decoder.needs_big_stack:
        return _decode_on_big_stack(data)
    return value
