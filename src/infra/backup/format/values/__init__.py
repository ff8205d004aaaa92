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

from src.infra.backup.format.values.codes import ENCODING_NAME
from src.infra.backup.format.values.decoding import decode_value
from src.infra.backup.format.values.diagnosis import find_unsupported
from src.infra.backup.format.values.encoding import encode_value
from src.infra.backup.format.values.json_view import to_jsonable

__all__ = [
    "ENCODING_NAME",
    "decode_value",
    "encode_value",
    "find_unsupported",
    "to_jsonable",
]
