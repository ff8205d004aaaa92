"""numpy and pandas values (ext codes 17-21): their encoders and decoders.

Importing this module imports neither numpy nor pandas. Encoding finds them in ``sys.modules``
(values of those types exist only if the caller imported them); decoding imports the fixed
names ``numpy``/``pandas`` only to rebuild values of codes 17-21.
"""

from __future__ import annotations

import math
import struct
import sys
from typing import Any, Final

import ormsgpack

from src.infra.backup.format.values.codes import (
    _EXT_NDARRAY,
    _EXT_NPSCALAR,
    _EXT_PD_DATAFRAME,
    _EXT_PD_INDEX,
    _EXT_PD_SERIES,
    _Packer,
    _Unpacker,
)
from src.infra.backup.format.values.corruption import _as_list, _corrupt
from src.infra.backup.format.values.description import _RefusalError

_NUMPY_KINDS: Final = "biufcmMSU"

# --------------------------------------------------------------------------- encoding


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


def _enc_ndarray(enc: _Packer, arr: Any) -> ormsgpack.Ext:
    dtype_str = _check_np_dtype(arr.dtype)
    head = (
        bytes((len(dtype_str),))
        + dtype_str
        + bytes((arr.ndim,))
        + struct.pack(f"<{arr.ndim}Q", *arr.shape)
    )
    return ormsgpack.Ext(_EXT_NDARRAY, head + arr.tobytes(order="C"))


def _enc_npscalar(enc: _Packer, value: Any) -> ormsgpack.Ext:
    dtype_str = _check_np_dtype(value.dtype, scalar=True)
    raw = value.tobytes() if value.dtype.itemsize else b""  # np.str_("").tobytes() is not empty
    return ormsgpack.Ext(_EXT_NPSCALAR, bytes((len(dtype_str),)) + dtype_str + raw)


def _pd_array_payload(arr: Any) -> list[Any]:
    """ARRAY payload for the values of a pandas Series or Index (see the package docstring)."""
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


def _enc_pd_index(enc: _Packer, index: Any) -> ormsgpack.Ext:
    return ormsgpack.Ext(_EXT_PD_INDEX, enc.pack_nested(_pd_index_payload(index)))


def _enc_pd_series(enc: _Packer, series: Any) -> ormsgpack.Ext:
    payload = [series.name, _pd_index_payload(series.index), _pd_array_payload(series)]
    return ormsgpack.Ext(_EXT_PD_SERIES, enc.pack_nested(payload))


def _enc_pd_dataframe(enc: _Packer, frame: Any) -> ormsgpack.Ext:
    columns = [_pd_array_payload(frame.iloc[:, i]) for i in range(frame.shape[1])]
    payload = [_pd_index_payload(frame.columns), _pd_index_payload(frame.index), columns]
    return ormsgpack.Ext(_EXT_PD_DATAFRAME, enc.pack_nested(payload))


# --------------------------------------------------------------------------- decoding


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


def _dec_ndarray(dec: _Unpacker, data: bytes) -> Any:
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


def _dec_npscalar(dec: _Unpacker, data: bytes) -> Any:
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


def _dec_pd_index(dec: _Unpacker, data: bytes) -> Any:
    np, pd = _require("numpy"), _require("pandas")
    return _pd_index(pd, np, dec.unpack(data))


def _dec_pd_series(dec: _Unpacker, data: bytes) -> Any:
    np, pd = _require("numpy"), _require("pandas")
    item = _as_list(dec.unpack(data), "Series")
    if len(item) != 3:
        _corrupt("Series payload must be [name, index, values]")
    index = _pd_index(pd, np, item[1])
    values = _pd_array(pd, np, item[2])
    if len(values) != len(index):
        _corrupt("Series values and index differ in length")
    return pd.Series(values, index=index, name=item[0], dtype=values.dtype, copy=False)


def _dec_pd_dataframe(dec: _Unpacker, data: bytes) -> Any:
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
