"""Encoding a value: the ormsgpack ``default`` hook, the slow path for non-str keys, errors."""

from __future__ import annotations

from typing import Any, Final, NoReturn

import ormsgpack

from src.infra.backup.errors import UnsupportedValueError
from src.infra.backup.format.values import diagnosis, encoders
from src.infra.backup.format.values.codes import _MAX_CONTAINER_DEPTH, _MAX_EXT_DEPTH
from src.infra.backup.format.values.description import (
    _TOO_DEEP,
    _format_error,
    _refusal_reason,
    _RefusalError,
    _type_name,
)
from src.infra.backup.format.values.encoders import _flat_items, _Pairs, _special_encoder

_OPT: Final = (
    ormsgpack.OPT_PASSTHROUGH_TUPLE
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    | ormsgpack.OPT_PASSTHROUGH_UUID
    | ormsgpack.OPT_PASSTHROUGH_ENUM
    | ormsgpack.OPT_PASSTHROUGH_BIG_INT
    | ormsgpack.OPT_PASSTHROUGH_DATACLASS
)

_DICT_KEY_ERROR: Final = "Dict key must be str"

# Bound by assignment, not imported by name: CPython (3.11+) compiles ``name.method(...)`` on a
# name bound by an import statement without the method-call fast path (LOAD_METHOD), which
# measurably slows the ``default`` hook.
_ENCODERS: Final = encoders._ENCODERS


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
    found = diagnosis.find_unsupported(value, root)
    if found is not None:
        path, reason = found
        raise UnsupportedValueError(_format_error(path, reason), path) from None
    reason = encoder.error or str(failure)
    raise UnsupportedValueError(_format_error(root, reason), root) from failure
