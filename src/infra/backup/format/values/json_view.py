"""A readable, lossy JSON view of decoded values (for people, not for storage)."""

from __future__ import annotations

import base64
import datetime as _dt
import enum
import json
import math
import pathlib
import uuid
from decimal import Decimal
from fractions import Fraction

from src.infra.backup.errors import UnsupportedValueError
from src.infra.backup.format.values.scientific import _numpy, _pandas


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
