"""Tests of ``src.infra.backup.format.values``: lossless typed encoding without pickle."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import enum
import json
import math
import pathlib
import sys
import textwrap
import types
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import ormsgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import src.infra.backup.format.values.codes as codes_mod
import src.infra.backup.format.values.decoding as decoding_mod
import src.infra.backup.format.values.description as description_mod
import src.infra.backup.format.values.diagnosis as diagnosis_mod
import src.infra.backup.format.values.encoders as encoders_mod
import src.infra.backup.format.values.encoding as encoding_mod
from src.infra.backup.errors import CorruptDataError, UnsupportedValueError
from src.infra.backup.format.values import (
    ENCODING_NAME,
    decode_value,
    encode_value,
    find_unsupported,
    to_jsonable,
)
from tests.helpers import run_python

MAX_EXT_DEPTH = codes_mod._MAX_EXT_DEPTH

try:
    BERLIN: zoneinfo.ZoneInfo | None = zoneinfo.ZoneInfo("Europe/Berlin")
    NEW_YORK: zoneinfo.ZoneInfo | None = zoneinfo.ZoneInfo("America/New_York")
except zoneinfo.ZoneInfoNotFoundError:  # pragma: no cover - no time-zone database
    BERLIN = NEW_YORK = None
needs_tzdata = pytest.mark.skipif(BERLIN is None, reason="no time-zone database")


class Color(enum.Enum):
    RED = 1
    GREEN = "green"
    BLUE = (1, 2)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Side(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"


class Perm(enum.Flag):
    R = 4
    W = 2
    X = 1


class Outer:
    class Inner(enum.Enum):
        A = "a"


ENUM_MEMBERS: list[enum.Enum] = [
    *Color,
    *Level,
    *Side,
    Perm.R | Perm.W,
    Perm(0),
    Outer.Inner.A,
]


# --------------------------------------------------------------------------- helpers


def assert_same(a: object, b: object, where: str = "v") -> None:
    """``a == b`` with identical types at every level; NaN equals NaN, -0.0 keeps its sign."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, float):
        assert isinstance(b, float)
        if math.isnan(a):
            assert math.isnan(b), where
        else:
            assert a == b and math.copysign(1, a) == math.copysign(1, b), f"{where}: {a} {b}"
    elif isinstance(a, complex):
        assert isinstance(b, complex)
        assert_same(a.real, b.real, where + ".real")
        assert_same(a.imag, b.imag, where + ".imag")
    elif isinstance(a, Decimal):
        assert str(a) == str(b), f"{where}: {a} != {b}"
        if not a.is_nan():
            assert a == b
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert len(a) == len(b), where
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):  # order kept too
            assert_same(ka, kb, f"{where}<key {ka!r}>")
            assert_same(va, vb, f"{where}[{ka!r}]")
    elif isinstance(a, set | frozenset):
        assert isinstance(b, set | frozenset)
        assert a == b, where
        members = {item: item for item in b}
        for item in a:
            assert_same(item, members[item], f"{where}{{{item!r}}}")
    elif isinstance(a, dt.datetime | dt.time):
        assert isinstance(b, dt.datetime | dt.time)
        assert a == b, f"{where}: {a!r} != {b!r}"
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), where
        assert a.fold == b.fold, where
        assert_same_tz(a.tzinfo, b.tzinfo, where)
    elif isinstance(a, enum.Enum):
        assert a is b, where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_tz(a: dt.tzinfo | None, b: dt.tzinfo | None, where: str) -> None:
    assert type(a) is type(b), where
    if isinstance(a, zoneinfo.ZoneInfo):
        assert isinstance(b, zoneinfo.ZoneInfo)
        assert a.key == b.key and a is b, where
    elif isinstance(a, dt.timezone):
        assert a == b and a.tzname(None) == b.tzname(None) if b else False, where


def roundtrip(value: object) -> object:
    data = encode_value(value)
    assert isinstance(data, bytes)
    restored = decode_value(data)
    assert_same(value, restored)
    return restored


# --------------------------------------------------------------------------- strategies

FIXED_ZONES: list[dt.tzinfo] = [
    dt.timezone.utc,
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
    dt.timezone(dt.timedelta(hours=-3), "BRT"),
    dt.timezone(dt.timedelta(hours=-23, minutes=-59, seconds=-59, microseconds=-999999)),
]
ZONES: list[dt.tzinfo] = FIXED_ZONES + [zone for zone in (BERLIN, NEW_YORK) if zone is not None]


def _with_fold(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.tuples(strategy, st.integers(0, 1)).map(lambda p: p[0].replace(fold=p[1]))


datetimes = _with_fold(st.one_of(st.datetimes(), st.datetimes(timezones=st.sampled_from(ZONES))))
times = _with_fold(st.one_of(st.times(), st.times(timezones=st.sampled_from(FIXED_ZONES))))
big_ints = st.sampled_from(
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 2**200, -(2**5000) + 7]
)
ints = st.one_of(st.integers(), big_ints)
paths = st.tuples(
    st.sampled_from([pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.Path]),
    st.lists(st.text(alphabet="abz._- 1", min_size=1, max_size=4), max_size=4),
).map(lambda p: p[0]("/".join(p[1])))
finite_decimals = st.decimals(allow_nan=False, allow_infinity=True)
special_decimals = st.sampled_from(
    [Decimal(s) for s in ("NaN", "-NaN", "sNaN", "-sNaN123", "-0", "0E-30", "1.2300E+5")]
)

hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    finite_decimals,
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    st.uuids(),
    st.sampled_from(ENUM_MEMBERS),
    st.fractions(),
    paths,
    st.complex_numbers(allow_nan=False),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple), st.frozensets(inner, max_size=3)
    ),
    max_leaves=6,
)
leaves = st.one_of(
    hashable_leaves,
    st.floats(),  # NaN, inf, -0.0
    st.complex_numbers(),
    special_decimals,
    st.sampled_from(ENUM_MEMBERS),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.lists(st.tuples(hashables, inner), max_size=4).map(collections.OrderedDict),
    )


supported_values = st.recursive(leaves, _containers, max_leaves=25)


# --------------------------------------------------------------------------- round trips


def test_encoding_name() -> None:
    assert ENCODING_NAME == "msgpack-tagged-1"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(supported_values)
def test_roundtrip_property(value: object) -> None:
    roundtrip(value)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(hashables, supported_values, max_size=5))
def test_roundtrip_non_str_keys_property(value: dict[Any, Any]) -> None:
    roundtrip({"outer": [value, (value,)]})


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**5000,
        -(10**5000),
        1.5,
        -0.0,
        float("nan"),
        float("inf"),
        float("-inf"),
        "",
        "héllo ✓ \x00",
        b"",
        b"\x00\xff",
        [],
        {},
        (),
        (1,),
        ((1, 2), [3, (4,)]),
        set(),
        {1, "a", (2, 3)},
        frozenset(),
        frozenset({frozenset({1}), None}),
        collections.OrderedDict(),
        collections.OrderedDict([("b", 1), ("a", 2)]),
        collections.OrderedDict([((1, 2), {3: 4}), (None, [collections.OrderedDict()])]),
        {1: "a", "1": "b", None: 1, 2.5: 2, (1, "x"): 3, frozenset({1}): 4, False: 5},
        {Side.BUY: 1, Level.LOW: 2, Color.RED: 3},
        {dt.date(2024, 1, 1): "new year", dt.datetime(2024, 1, 1, 12): "noon"},
        {"a": {1: {"b": {2: [{"c": {3: 4}}]}}}},
        dt.date(1, 1, 1),
        dt.date(9999, 12, 31),
        dt.datetime(2024, 5, 17, 13, 45, 12, 123456),
        dt.datetime.min,
        dt.datetime.max,
        dt.datetime(2024, 5, 17, 13, 45, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 5, 17, tzinfo=dt.timezone(dt.timedelta(hours=-3), "BRT")),
        dt.datetime(2024, 5, 17, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
        dt.time(),
        dt.time(23, 59, 59, 999999, fold=1),
        dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.timedelta(),
        dt.timedelta(days=-999999999),
        dt.timedelta(days=999999999, seconds=86399, microseconds=999999),
        dt.timedelta(microseconds=-1),
        Decimal("1.10"),
        Decimal("-0"),
        Decimal("0E-30"),
        Decimal("1.2300E+5"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("NaN"),
        Decimal("-sNaN123"),
        Decimal("1" * 5000),
        uuid.UUID(int=0),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        1 + 2j,
        complex(float("nan"), -0.0),
        Fraction(1, 3),
        Fraction(-(2**100), 3**70),
        pathlib.PurePosixPath("/var/log/bot.log"),
        pathlib.PureWindowsPath(r"C:\Users\bot\state.json"),
        pathlib.Path("relative/state.json"),
        pathlib.Path("/"),
        *ENUM_MEMBERS,
        bytes(range(256)) * 10,
    ],
    ids=lambda v: type(v).__name__,
)
def test_roundtrip_each_type(value: object) -> None:
    roundtrip(value)
    roundtrip({"nested": [value, (value,)]})


@needs_tzdata
def test_zoneinfo_datetimes_keep_key_and_fold() -> None:
    assert BERLIN is not None and NEW_YORK is not None
    # 02:30 on 2024-10-27 happens twice in Berlin: fold picks the second one.
    first = dt.datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN)
    second = first.replace(fold=1)
    restored = roundtrip([first, second, dt.time(1, tzinfo=BERLIN)])
    assert isinstance(restored, list)
    assert restored[1].fold == 1
    assert restored[1].utcoffset() == dt.timedelta(hours=1)
    assert restored[0].utcoffset() == dt.timedelta(hours=2)
    assert restored[0].tzinfo is BERLIN
    roundtrip({dt.datetime(2024, 3, 10, 2, 30, tzinfo=NEW_YORK): "imaginary"})


def test_bytearray_and_memoryview_come_back_as_bytes() -> None:
    """Documented limit: ormsgpack packs them natively, without calling ``default``."""
    assert decode_value(encode_value([bytearray(b"ab"), memoryview(b"cd")])) == [b"ab", b"cd"]
    assert find_unsupported(bytearray(b"x")) is None


def test_str_keyed_dict_order_is_kept() -> None:
    value = {"z": 1, "a": 2, "m": {"y": 1, "b": 2}}
    restored = decode_value(encode_value(value))
    assert isinstance(restored, dict)
    assert list(restored) == ["z", "a", "m"]
    assert list(restored["m"]) == ["y", "b"]


def test_decode_accepts_memoryview_and_bytearray() -> None:
    data = encode_value({"a": (1, 2)})
    assert decode_value(memoryview(data)) == {"a": (1, 2)}
    assert decode_value(bytearray(data)) == {"a": (1, 2)}  # type: ignore[arg-type]


def test_plain_data_is_plain_msgpack() -> None:
    value = {"a": [1, 2.5, "x", None, True, b"y"]}
    assert encode_value(value) == ormsgpack.packb(value)


def test_fast_path_does_not_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("walked the value")

    monkeypatch.setattr(encoding_mod._Encoder, "_rewrite", boom)
    monkeypatch.setattr(diagnosis_mod, "find_unsupported", boom)
    monkeypatch.setattr(decoding_mod, "_decode_on_big_stack", boom)
    history = [
        {"ts": dt.datetime(2024, 1, 1, i), "px": Decimal("1.5"), "ids": (i, i + 1)}
        for i in range(10)
    ]
    assert decode_value(encode_value({"history": history})) == {"history": history}


def test_slow_path_for_non_str_keys_everywhere() -> None:
    value = [
        {"a": {1: "x"}},
        ({2: {3: 4}},),
        collections.OrderedDict({(1, 2): {None: {5: 6}}}),
        {Side.SELL: {"plain": {7: 8}}},
        [[{frozenset({1}): [{9: 10}]}]],
        {1: {2: {3: {4: "deep but fine"}}}},
    ]
    roundtrip(value)


def test_large_history_roundtrip() -> None:
    history = [
        {
            "timestamp": f"2024-01-01T00:00:{i % 60:02d}",
            "symbol": "BTCUSDT",
            "side": "buy" if i % 2 else "sell",
            "size": i / 7,
            "price": 40000.0 + i,
            "id": i,
        }
        for i in range(2000)
    ]
    assert decode_value(encode_value(history)) == history


# --------------------------------------------------------------------------- enums


def test_enum_members_are_restored_from_loaded_classes() -> None:
    restored = roundtrip({"c": Color.BLUE, "l": Level.HIGH, "s": Side.BUY, "i": Outer.Inner.A})
    assert isinstance(restored, dict)
    assert restored["l"] is Level.HIGH and isinstance(restored["l"], int)
    assert restored["s"] is Side.BUY and isinstance(restored["s"], str)


def _enum_bytes(module: str, qualname: str, value: object) -> bytes:
    payload = ormsgpack.packb([module, qualname, value])
    return ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_ENUM, payload))


def test_enum_with_class_not_loaded_gives_plain_value() -> None:
    assert "no_such_module_for_values_test" not in sys.modules
    data = _enum_bytes("no_such_module_for_values_test", "Color", 2)
    assert decode_value(data) == 2
    assert "no_such_module_for_values_test" not in sys.modules


def test_enum_module_is_never_imported() -> None:
    name = "pstats"  # a stdlib module with an Enum (pstats.SortKey)
    if name in sys.modules:
        pytest.skip(f"{name} already imported")
    assert decode_value(_enum_bytes(name, "SortKey", "calls")) == "calls"
    assert name not in sys.modules


def test_enum_class_loaded_later_and_unloaded() -> None:
    module = types.ModuleType("values_test_fake_enum_module")
    fake = enum.Enum("Fake", {"A": 1, "B": 2}, module=module.__name__)  # type: ignore[misc]
    module.Fake = fake  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        data = encode_value({"x": fake.B})
        assert decode_value(data) == {"x": fake.B}
    finally:
        del sys.modules[module.__name__]
    assert decode_value(data) == {"x": 2}


def test_enum_lookup_refuses_non_enums_and_missing_members() -> None:
    assert decode_value(_enum_bytes("builtins", "int", 3)) == 3  # not an Enum
    assert decode_value(_enum_bytes(__name__, "Level", 99)) == 99  # no such member
    assert decode_value(_enum_bytes(__name__, "Level", 2)) is Level.HIGH
    assert decode_value(_enum_bytes("sys", "modules.keys", 1)) == 1  # dict: no lookup
    assert decode_value(_enum_bytes(__name__, "Outer.Inner", "a")) is Outer.Inner.A
    assert decode_value(_enum_bytes(__name__, "Outer.Missing", "a")) == "a"


# --------------------------------------------------------------------------- refusals


@dataclasses.dataclass
class Position:
    symbol: str


class Point(NamedTuple):
    x: int


class MyStr(str):
    pass


class MyInt(int):
    pass


class MyFloat(float):
    pass


class MyList(list):  # type: ignore[type-arg]
    pass


class MyDateTime(dt.datetime):
    pass


class Plain:
    def __init__(self) -> None:
        self.x = 1


class OtherTz(dt.tzinfo):
    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=1)

    def dst(self, d: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, d: dt.datetime | None) -> str:
        return "OTHER"


def _gen() -> Iterator[int]:
    yield 1


REFUSED: list[tuple[object, str]] = [
    (Position("BTC"), "dataclasses.asdict"),
    (Point(1), "namedtuple"),
    (collections.defaultdict(list), "dict(...)"),
    (collections.Counter("ab"), "dict(...)"),
    (MyStr("x"), "str(...)"),
    (MyInt(1), "int(...)"),
    (MyFloat(1.0), "float(...)"),
    (MyList(), "list(...)"),
    (MyDateTime(2024, 1, 1), "datetime.datetime"),
    (Plain(), "vars(obj)"),
    (object(), "supported are"),
    (_gen(), "list(...)"),
    (iter([1]), "list(...)"),
    (len, "functions"),
    (Plain, "classes"),
    (lambda: 1, "functions"),
    (dt.datetime(2024, 1, 1, tzinfo=OtherTz()), "zoneinfo.ZoneInfo"),
    (dt.time(1, tzinfo=OtherTz()), "zoneinfo.ZoneInfo"),
    ("bad \ud800 text", "surrogates"),
    (pathlib.PurePath, "classes"),
    (Ellipsis, "supported are"),
    (NotImplemented, "supported are"),
    (range(3), "supported are"),
    (slice(1), "supported are"),
    (types.SimpleNamespace(a=1), "vars(obj)"),
    (sys, "vars(obj)"),
]


@pytest.mark.parametrize(("bad", "hint"), REFUSED, ids=lambda x: type(x).__name__)
def test_refused_values_name_the_path(bad: object, hint: str) -> None:
    expected = 'data["portfolio"]["positions"][3]["opened_at"]'
    value = {"portfolio": {"positions": [{}, {}, {"ok": 1}, {"x": 1, "opened_at": bad}]}}
    with pytest.raises(UnsupportedValueError) as info:
        encode_value(value)
    assert info.value.path == expected
    assert str(info.value).startswith(f"cannot store {expected}: ")
    assert hint in str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    found = find_unsupported(value)
    assert found is not None and found[0] == expected


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"k": {(1, Plain()): 1}}, 'data["k"]<key 0>[1]'),
        ({"k": {1: 2, 3: Plain()}}, 'data["k"][3]'),
        ({"s": {1, Plain()}}, None),  # set member index depends on hashing: checked below
        ((1, [2, (3, Plain())]), "data[1][1][1]"),
        (collections.OrderedDict(a=(1, object())), 'data["a"][1]'),
        ({Side.BUY: [object()]}, "data[<Side.BUY: 'buy'>][0]"),
        ({"e": Color.BLUE, "x": [frozenset({Plain()})]}, 'data["x"][0]{0}'),
        ([{"a\nb": {"ü": object()}}], 'data[0]["a\\nb"]["ü"]'),
        ({"\ud800": 1}, 'data["\\ud800"]'),
        ({"v": [dt.datetime(2024, 1, 1, tzinfo=OtherTz())]}, 'data["v"][0]'),
    ],
)
def test_refusal_paths(value: object, path: str | None) -> None:
    with pytest.raises(UnsupportedValueError) as info:
        encode_value(value)
    if path is None:
        assert info.value.path.startswith('data["s"]{') and info.value.path.endswith("}")
    else:
        assert info.value.path == path
        assert path in str(info.value)


class Weird(enum.Enum):
    A = Plain()


def test_enum_with_unsupported_value_is_refused() -> None:
    with pytest.raises(UnsupportedValueError) as info:
        encode_value({"w": [Weird.A]})
    assert info.value.path == 'data["w"][0].value'


def test_unexpected_encoder_errors_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(enc: object, value: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setitem(encoders_mod._ENCODERS, Fraction, broken)
    with pytest.raises(UnsupportedValueError, match="RuntimeError: boom") as info:
        encode_value({"f": Fraction(1, 2)})
    assert info.value.path == 'data["f"]'


def test_to_jsonable_refuses_cycles() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(UnsupportedValueError, match="nested too deeply"):
        to_jsonable({"a": loop})


def test_refusal_uses_root_name() -> None:
    with pytest.raises(UnsupportedValueError) as info:
        encode_value({"a": [Plain()]}, root="state")
    assert info.value.path == 'state["a"][0]'
    assert find_unsupported({"a": [Plain()]}, root="x") == (
        'x["a"][0]',
        description_mod._refusal_reason(Plain()),
    )


def test_find_unsupported_accepts_supported_values() -> None:
    value = {"a": [1, (2, {3}), {4: collections.OrderedDict(x=Decimal(1))}], "b": Level.LOW}
    assert find_unsupported(value) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(supported_values)
def test_find_unsupported_agrees_with_encode(value: object) -> None:
    assert find_unsupported(value) is None


def test_zoneinfo_from_file_is_refused() -> None:
    tzfile = Path("/usr/share/zoneinfo/Europe/Berlin")
    if not tzfile.exists():
        pytest.skip("no system time-zone file")
    with tzfile.open("rb") as handle:
        zone = zoneinfo.ZoneInfo.from_file(handle)
    with pytest.raises(UnsupportedValueError, match="without a key"):
        encode_value({"t": dt.datetime(2024, 1, 1, tzinfo=zone)})


# --------------------------------------------------------------------------- depth, cycles


def _nest(depth: int, wrap: Callable[[object], object], leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = wrap(value)
    return value


def test_deep_lists_and_dicts() -> None:
    roundtrip(_nest(255, lambda v: [v]))
    roundtrip(_nest(255, lambda v: {"k": v}))
    for wrap in (lambda v: [v], lambda v: {"k": v}):
        with pytest.raises(UnsupportedValueError, match="nested too deeply") as info:
            encode_value(_nest(256, wrap))
        step = "[0]" if info.value.path.startswith("data[0]") else '["k"]'
        assert info.value.path == "data" + step * 255


def test_very_deep_nesting_never_raises_recursion_error() -> None:
    for wrap in (
        lambda v: [v],
        lambda v: (v,),
        lambda v: {1: v},
        lambda v: frozenset({v}),
        lambda v: collections.OrderedDict(a=v),
        lambda v: [[(v,)]],
    ):
        value = _nest(5000, wrap)
        with pytest.raises(UnsupportedValueError, match="nested too deeply"):
            encode_value(value)
        found = find_unsupported(value)
        assert found is not None and "nested too deeply" in found[1]
        with pytest.raises(UnsupportedValueError, match="nested too deeply"):
            to_jsonable(value)


def test_ext_nesting_limit() -> None:
    ok = _nest(MAX_EXT_DEPTH, lambda v: (v,))
    roundtrip(ok)
    roundtrip(_nest(MAX_EXT_DEPTH - 1, lambda v: {1: [v]}, leaf={2: "x"}))
    with pytest.raises(UnsupportedValueError, match="nested too deeply") as info:
        encode_value(_nest(MAX_EXT_DEPTH + 1, lambda v: (v,)))
    assert info.value.path == "data" + "[0]" * MAX_EXT_DEPTH
    with pytest.raises(UnsupportedValueError, match="nested too deeply"):
        encode_value(_nest(MAX_EXT_DEPTH + 1, lambda v: {1: v}))
    # raw-payload ext values (datetime, Decimal, ...) do not count as nesting
    roundtrip(_nest(MAX_EXT_DEPTH, lambda v: (v,), leaf=dt.datetime(2024, 1, 1)))


def test_cycles_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    keyed: dict[int, Any] = {}
    keyed[1] = keyed
    via_tuple: list[Any] = []
    via_tuple.append((via_tuple,))
    ordered: collections.OrderedDict[str, Any] = collections.OrderedDict()
    ordered["me"] = [ordered]
    cases: list[tuple[object, str]] = [
        ({"a": loop}, 'data["a"][0]'),
        ({"m": mapping}, 'data["m"]["self"]'),
        (keyed, "data[1]"),
        ([via_tuple], "data[0][0][0]"),
        (ordered, 'data["me"][0]'),
    ]
    for value, path in cases:
        with pytest.raises(UnsupportedValueError, match="cyclic") as info:
            encode_value(value)
        assert info.value.path == path
    shared = [1, 2]
    roundtrip({"a": shared, "b": shared, "c": (shared, shared)})  # shared is not cyclic


# --------------------------------------------------------------------------- decoding garbage


def _decode_or_corrupt(data: bytes) -> None:
    with contextlib.suppress(CorruptDataError):
        decode_value(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_corrupt(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(supported_values, st.data())
def test_fuzz_mutated_encodings(value: object, data: st.DataObject) -> None:
    encoded = bytearray(encode_value(value))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(encoded) - 1, 0)))
        if action == "flip" and encoded:
            encoded[pos] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del encoded[pos:]
        elif action == "insert":
            encoded[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif encoded:
            del encoded[pos]
    _decode_or_corrupt(bytes(encoded))


EXT_CODES = sorted(decoding_mod._DECODERS)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 127), st.binary(max_size=64))
def test_fuzz_ext_with_raw_payloads(code: int, payload: bytes) -> None:
    _decode_or_corrupt(ormsgpack.packb([ormsgpack.Ext(code, payload)]))


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=12),
        st.binary(max_size=12),
        st.sampled_from(["R", "M", "I", "N", "O", "E", "T", "str", "Int64", "builtins"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(EXT_CODES), msgpack_values)
def test_fuzz_ext_with_msgpack_payloads(code: int, payload: object) -> None:
    _decode_or_corrupt(ormsgpack.packb(ormsgpack.Ext(code, ormsgpack.packb(payload))))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x81\x01\x02",  # int map key
        b"\x81\xc4\x01a\x02",  # bin map key
        b"\xa2\xff\xfe",  # bad UTF-8
        b"\xdd\xff\xff\xff\xff",  # absurd array size
        b"\xdf\xff\xff\xff\xff",  # absurd map size
        b"\xc6\xff\xff\xff\xff",  # absurd bin size
        b"\xc9\xff\xff\xff\xff\x01",  # absurd ext size
        b"\x91" * 100_000 + b"\x01",  # nesting beyond the decoder's limit
        b"\xd6\xff\x00\x00\x00\x01",  # timestamp ext (-1) is not ours
        ormsgpack.packb(ormsgpack.Ext(99, b"")),  # unknown code
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_TUPLE, b"\x01")),  # not an array
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_SET, ormsgpack.packb([[1]]))),  # unhashable
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_DICT, ormsgpack.packb([1]))),  # odd pairs
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_DATE, b"\x00\x00\x01\x01")),  # year 0
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_DATETIME, b"\x00" * 13 + b"\x03")),
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_UUID, b"\x00" * 15)),
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_DECIMAL, b"1.2.3")),
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_BIGINT, b"")),
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_FRACTION, b"\x01\x00\x00\x00\x01\x00")),
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_PATH, b"\x09x")),
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_TIMEDELTA, b"\xff" * 12)),
        ormsgpack.packb(ormsgpack.Ext(codes_mod._EXT_ENUM, ormsgpack.packb([1, 2, 3]))),
    ],
)
def test_malformed_inputs(data: bytes) -> None:
    with pytest.raises(CorruptDataError):
        decode_value(data)


@needs_tzdata
def test_malicious_zone_keys() -> None:
    for key in ("../../../etc/passwd", "/etc/localtime", "No/Such_Zone", "\x00"):
        head = codes_mod._DATETIME_HEAD.pack(2024, 1, 1, 0, 0, 0, 0, 0)
        data = ormsgpack.packb(
            ormsgpack.Ext(codes_mod._EXT_DATETIME, head + b"\x03" + key.encode())
        )
        with pytest.raises(CorruptDataError, match="time zone"):
            decode_value(data)


def test_corrupt_error_names_the_problem() -> None:
    with pytest.raises(CorruptDataError, match="unknown ext code 99"):
        decode_value(ormsgpack.packb({"a": [ormsgpack.Ext(99, b"")]}))
    with pytest.raises(CorruptDataError, match="malformed msgpack"):
        decode_value(b"\xc1")
    with pytest.raises(CorruptDataError):
        decode_value("not bytes")  # type: ignore[arg-type]


def _ext_bomb(levels: int, inner: int) -> bytes:
    payload = b"\x01"
    for _ in range(levels):
        payload = ormsgpack.packb(
            ormsgpack.Ext(codes_mod._EXT_TUPLE, b"\x91" + b"\x91" * inner + payload)
        )
    return payload


def test_ext_nesting_beyond_limit_is_corrupt() -> None:
    with pytest.raises(CorruptDataError, match="nested"):
        decode_value(_ext_bomb(MAX_EXT_DEPTH + 2, 3))
    assert decode_value(_ext_bomb(MAX_EXT_DEPTH, 3)) is not None


def test_hostile_nesting_does_not_crash_the_interpreter() -> None:
    """Each ext level nested ~1000 arrays deep: the native stack must hold (main + thread)."""
    script = textwrap.dedent(
        f"""
        import threading, ormsgpack
        from src.infra.backup.format.values import decode_value
        from src.infra.backup.errors import CorruptDataError

        def bomb(levels):
            payload = b"\\x01"
            for _ in range(levels):
                payload = ormsgpack.packb(ormsgpack.Ext(1, b"\\x91" * 1021 + payload))
            return payload

        def run():
            for levels in (6, 7, {MAX_EXT_DEPTH}, {MAX_EXT_DEPTH + 1}, 200):
                try:
                    decode_value(bomb(levels))
                except CorruptDataError:
                    pass
            print("ok", flush=True)

        run()
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        """
    )
    result = run_python(script, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "ok"]


# --------------------------------------------------------------------------- optional deps


def test_import_does_not_import_numpy_or_pandas() -> None:
    script = (
        "import sys\n"
        "import src.infra.backup.format.values as v\n"
        "assert 'numpy' not in sys.modules and 'pandas' not in sys.modules, 'imported'\n"
        "assert v.decode_value(v.encode_value({1: (2, 3)})) == {1: (2, 3)}\n"
        "assert 'numpy' not in sys.modules and 'pandas' not in sys.modules, 'used'\n"
        "print('clean')\n"
    )
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_works_without_numpy_and_pandas() -> None:
    np = pytest.importorskip("numpy")
    array_bytes = encode_value({"a": np.arange(3)})
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["numpy"] = None  # makes any import of them fail
        sys.modules["pandas"] = None
        import src.infra.backup.format.values as v
        from src.infra.backup.errors import CorruptDataError
        value = {{1: (2, {{3}}), "d": __import__("decimal").Decimal("1.5")}}
        assert v.decode_value(v.encode_value(value)) == value
        try:
            v.decode_value({array_bytes!r})
        except CorruptDataError as exc:
            assert "numpy is needed" in str(exc), exc
        else:
            raise AssertionError("decoded an ndarray without numpy")
        print("ok")
        """
    )
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_numpy_arrays_and_scalars() -> None:
    np = pytest.importorskip("numpy")
    arrays = [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.array([1.5, np.nan, -0.0, np.inf]),
        np.array([True, False]),
        np.array(["a", "héllo"]),
        np.array([b"x", b"yz"]),
        np.array(["2024-01-01T00:00:00.123456789", "NaT"], dtype="datetime64[ns]"),
        np.array([1, 2], dtype="timedelta64[s]"),
        np.array([1 + 2j], dtype=np.complex64),
        np.arange(6, dtype=">u2").reshape(2, 3).T,  # big-endian, not C-contiguous
        np.zeros((0, 5), dtype=np.float32),
        np.array(3.5),  # zero-dimensional
        np.zeros((2, 1, 3), dtype=np.uint8),
    ]
    for arr in arrays:
        restored = decode_value(encode_value({"a": arr}))
        assert isinstance(restored, dict)
        out = restored["a"]
        assert type(out) is np.ndarray
        assert out.dtype == arr.dtype and out.dtype.str == arr.dtype.str
        assert out.shape == arr.shape
        assert out.tobytes() == arr.tobytes()  # bit-exact, NaN and NaT included
        assert out.flags.writeable
    scalars = [
        np.float64(1.5),
        np.float64("nan"),
        np.float32(-0.0),
        np.int64(-5),
        np.uint8(200),
        np.bool_(True),
        np.str_("xy"),
        np.str_(""),
        np.bytes_(b"ab"),
        np.datetime64("2024-01-01", "D"),
        np.timedelta64(5, "ms"),
        np.complex128(1 - 1j),
    ]
    for scalar in scalars:
        out = decode_value(encode_value([scalar]))
        assert isinstance(out, list)
        assert type(out[0]) is type(scalar)
        assert out[0].dtype == scalar.dtype
        assert out[0] == scalar or (np.isnan(scalar) and np.isnan(out[0]))
    roundtrip({np.float64(2.5): "key is a float subclass"})


def test_numpy_refusals() -> None:
    np = pytest.importorskip("numpy")
    cases = [
        np.array([1, None], dtype=object),
        np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]),
        np.ma.masked_array([1, 2], mask=[0, 1]),
        np.zeros(2).view(np.matrix) if hasattr(np, "matrix") else np.array([None]),
        np.void(b"ab"),
    ]
    for bad in cases:
        with pytest.raises(UnsupportedValueError) as info:
            encode_value({"x": [bad]})
        assert info.value.path == 'data["x"][0]'


def test_numpy_malformed_payloads() -> None:
    pytest.importorskip("numpy")
    code = codes_mod._EXT_NDARRAY
    for payload in (
        b"\x03<f8\x01" + (2).to_bytes(8, "little") + b"\x00" * 15,  # size mismatch
        b"\x02|O\x01" + (1).to_bytes(8, "little") + b"\x00" * 8,  # object dtype
        b"\x03<f8\x41",  # ndim 65
        b"\x05<U999\x00",
        b"\x03xyz\x00",
        b"\x03<f8\x02" + (0).to_bytes(8, "little") + (2**63).to_bytes(8, "little"),
    ):
        with pytest.raises(CorruptDataError):
            decode_value(ormsgpack.packb(ormsgpack.Ext(code, payload)))


def _frame() -> Any:
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    index = pd.Index([10, 20, 30], name="trade_id")
    return pd.DataFrame(
        {
            "qty": np.array([1, 2, 3], dtype=np.int64),
            "price": [1.5, np.nan, -0.0],
            "symbol": ["BTC", None, "ETH"],  # pandas 3: str dtype
            "note": pd.Series(["a", (1, 2), None], dtype=object, index=index),
            "when": pd.to_datetime(
                ["2024-01-01", "2024-01-02 03:04:05.123456789", None], format="ISO8601"
            ),
            "when_ns": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]).as_unit("ns"),
            "buy": [True, False, True],
            "tz": pd.date_range("2024-03-31", periods=3, freq="h", tz="Europe/Berlin"),
            "nullable": pd.array([1, None, 3], dtype="Int64"),
            "flag": pd.array([True, None, False], dtype="boolean"),
            "string": pd.array(["x", None, "z"], dtype="string"),
            "held": pd.to_timedelta([1, 2, 3], unit="s"),
        },
        index=index,
    )


def test_pandas_dataframe_roundtrip() -> None:
    pd = pytest.importorskip("pandas")
    frame = _frame()
    restored = decode_value(encode_value({"df": frame}))
    assert isinstance(restored, dict)
    out = restored["df"]
    assert type(out) is pd.DataFrame
    pd.testing.assert_frame_equal(
        out, frame, check_exact=True, check_index_type=True, check_column_type=True
    )
    assert out.dtypes.to_dict() == frame.dtypes.to_dict()
    assert out.index.name == "trade_id"
    assert out["note"].iloc[1] == (1, 2)
    assert type(out.index) is type(frame.index)


def test_pandas_series_index_and_more_frames() -> None:
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    series = pd.Series(
        [1.0, 2.0, np.nan],
        index=pd.date_range("2024-01-01", periods=3, freq="D", name="day"),
        name=("px", 1),
    )
    out: Any = decode_value(encode_value(series))
    pd.testing.assert_series_equal(out, series, check_exact=True, check_freq=True)
    assert out.index.freq == series.index.freq

    indexes = [
        pd.RangeIndex(2, 20, 3, name="r"),
        pd.Index(["a", "b"], name="letters"),
        pd.Index([1.5, 2.5]),
        pd.Index([True, False], dtype=bool),
        pd.Index(["x", 1], dtype=object),
        pd.MultiIndex.from_arrays([[1, 2], ["a", "b"]], names=["n", "s"]),
        pd.DatetimeIndex(["2024-01-01", "2024-06-01"], tz="America/New_York", name="t"),
        pd.timedelta_range("1s", periods=3, freq="s"),
    ]
    for index in indexes:
        out = decode_value(encode_value([index]))
        assert isinstance(out, list)
        pd.testing.assert_index_equal(out[0], index, exact=True, check_exact=True)
        assert out[0].name == index.name and out[0].names == index.names
    frames = [
        pd.DataFrame(),
        pd.DataFrame(columns=["a", "b"]),
        pd.DataFrame({"v": [1, 2]}, index=indexes[5]),
        pd.DataFrame(np.arange(6).reshape(2, 3), columns=["a", "a", "b"]),  # duplicate names
        pd.DataFrame({1: [1], (2, 3): ["x"]}),
        pd.DataFrame({"x": [1.0]}, index=pd.RangeIndex(5, 6, name="r")),
    ]
    for frame in frames:
        out = decode_value(encode_value(frame))
        pd.testing.assert_frame_equal(
            out, frame, check_exact=True, check_index_type=True, check_column_type=True
        )


def test_pandas_refusals() -> None:
    pd = pytest.importorskip("pandas")
    cases = [
        (pd.DataFrame({"c": pd.Categorical(["x", "y"])}), 'data["df"]["c"]', "category"),
        (
            pd.DataFrame({"o": pd.Series([1, Plain()], dtype=object)}),
            'data["df"]["o"][1]',
            "vars(obj)",
        ),
        (pd.Series([1], name=Plain()), 'data["df"].name', "vars(obj)"),
        (pd.Index([pd.Period("2024-01", "M")]), 'data["df"]', "period"),
        (pd.Timestamp("2024-01-01"), 'data["df"]', "to_pydatetime"),
    ]
    for bad, path, hint in cases:
        with pytest.raises(UnsupportedValueError) as info:
            encode_value({"df": bad})
        assert info.value.path == path, str(info.value)
        assert hint in str(info.value)


def test_pandas_malformed_payloads() -> None:
    pytest.importorskip("pandas")
    bad_payloads: list[tuple[int, object]] = [
        (codes_mod._EXT_PD_INDEX, ["R", None, "a", 1, 1]),
        (codes_mod._EXT_PD_INDEX, ["Z"]),
        (codes_mod._EXT_PD_INDEX, ["I", None, ["E", "category", ["a"]], None]),
        (codes_mod._EXT_PD_INDEX, ["I", None, ["O", [1]], "D"]),
        (codes_mod._EXT_PD_SERIES, [None, ["R", None, 0, 5, 1], ["O", [1]]]),
        (codes_mod._EXT_PD_DATAFRAME, [["R", None, 0, 1, 1], ["R", None, 0, 10**15, 1], []]),
        (codes_mod._EXT_PD_DATAFRAME, [["R", None, 0, 1, 1], ["R", None, 0, 2, 1], [["O", [1]]]]),
    ]
    for code, payload in bad_payloads:
        with pytest.raises(CorruptDataError):
            decode_value(ormsgpack.packb(ormsgpack.Ext(code, ormsgpack.packb(payload))))


# --------------------------------------------------------------------------- JSON view


def test_to_jsonable() -> None:
    value = {
        "t": (1, 2),
        "s": {3, 1, 2},
        "mixed": {1, "a", None},
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "day": dt.date(2024, 1, 2),
        "at": dt.time(3, 4),
        "held": dt.timedelta(minutes=1, microseconds=500000),
        "price": Decimal("1.10"),
        "id": uuid.UUID(int=1),
        "side": Side.BUY,
        "color": Color.BLUE,
        "path": pathlib.PurePosixPath("/a/b"),
        "raw": b"\x00\xff",
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": float("-inf"),
        "big": 2**100,
        "frac": Fraction(1, 3),
        "z": 1 + 2j,
        1: "int key",
        (1, "x"): "tuple key",
        None: "none key",
        "od": collections.OrderedDict(b=1),
    }
    out = to_jsonable(value)
    text = json.dumps(out, allow_nan=False)
    assert isinstance(out, dict)
    assert out["t"] == [1, 2]
    assert out["s"] == [1, 2, 3]
    assert len(out["mixed"]) == 3
    assert out["when"] == "2024-01-02T03:04:05+00:00"
    assert out["day"] == "2024-01-02" and out["at"] == "03:04:00"
    assert out["held"] == 60.5
    assert out["price"] == "1.10"
    assert out["id"] == str(uuid.UUID(int=1))
    assert out["side"] == "buy" and out["color"] == [1, 2]
    assert out["path"] == "/a/b"
    assert out["raw"] == {"$base64": "AP8="}
    assert (out["nan"], out["inf"], out["ninf"]) == ("NaN", "Infinity", "-Infinity")
    assert out["big"] == 2**100 and out["frac"] == "1/3"
    assert out["1"] == "int key" and out['[1, "x"]'] == "tuple key"
    assert out["null"] == "none key"
    assert out["od"] == {"b": 1}
    assert json.loads(text)["t"] == [1, 2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(supported_values)
def test_to_jsonable_always_dumps(value: object) -> None:
    json.dumps(to_jsonable(decode_value(encode_value(value))), allow_nan=False)


def test_to_jsonable_numpy_pandas() -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("pandas")
    frame = _frame()
    out = to_jsonable({"df": frame, "a": np.array([[1, 2]]), "f": np.float32(0.5)})
    json.dumps(out, allow_nan=False)
    assert isinstance(out, dict)
    assert out["a"] == [[1, 2]] and out["f"] == 0.5
    assert out["df"]["columns"][:3] == ["qty", "price", "symbol"]
    assert out["df"]["index"] == [10, 20, 30]
    assert out["df"]["index_names"] == ["trade_id"]
