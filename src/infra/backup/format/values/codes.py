"""Wire-format constants of ``msgpack-tagged-1``: ext codes, byte layouts, nesting limits.

Shared by the encoder and the decoder (the package docstring is the specification). Also the
two interfaces a per-type ext encoder/decoder function is handed.
"""

from __future__ import annotations

import pathlib
import struct
from typing import Any, Final, Protocol

ENCODING_NAME: Final = "msgpack-tagged-1"

#: Most nested ext values with a msgpack payload (see the package docstring).
_MAX_EXT_DEPTH: Final = 32
#: ormsgpack refuses a list/dict at this many enclosing lists/dicts within one packb call.
_MAX_CONTAINER_DEPTH: Final = 255

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

#: Most entries of each time-zone cache (encoder: tz object -> bytes, decoder: bytes -> tz).
_TZ_CACHE_SIZE: Final = 256


class _Packer(Protocol):
    """What an ext encoder is handed: packs the msgpack payload of an ext value."""

    def pack_nested(self, payload: Any) -> bytes:
        """Pack ``payload`` (one ext nesting level deeper) with this codec."""
        ...


class _Unpacker(Protocol):
    """What an ext decoder is handed: unpacks the msgpack payload of an ext value."""

    def unpack(self, data: bytes) -> object:
        """Decode ``data`` (one ext nesting level deeper) with this codec."""
        ...
