"""``diff`` and ``cat``: the pure value diff, backup-to-backup and backup-to-disk diffs, and
the two commands run in this process (``run_cli_inline``)."""

from __future__ import annotations

import collections
import copy
import datetime as dt
import json
import math
import subprocess
import uuid
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from layout_helpers import write_stored
from stored_chunks import is_packed, read_stored, stored_chunk_ids

from src.infra.backup import BackupConfig, BackupManager, BackupNotFoundError, InvalidInputError
from src.infra.backup.app.diff import (
    Change,
    DiffResult,
    diff_against_sources,
    diff_backups,
    diff_values,
    natural_key,
    render_value,
    values_equal,
)
from src.infra.backup.format.values import decode_value, encode_value
from tests.helpers import run_cli_inline

# --------------------------------------------------------------------------- diff_values


def paths(changes: list[Change]) -> list[str]:
    return [c.path for c in changes]


def test_equal_values_have_no_changes() -> None:
    value = {"a": [1, 2, {"b": (3, 4)}], "c": {5, 6}, "d": Decimal("1.5")}
    assert diff_values(value, copy.deepcopy(value)) == []


def test_scalar_change_with_path() -> None:
    changes = diff_values({"equity": 10000}, {"equity": 9500}, "portfolio")
    assert changes == [Change("portfolio.equity", "changed", 10000, 9500)]
    assert changes[0].render() == "portfolio.equity: 10000 -> 9500"


def test_dict_keys_added_and_removed() -> None:
    changes = diff_values({"a": 1, "b": 2}, {"b": 2, "c": 3})
    assert changes == [Change("a", "removed", 1, None), Change("c", "added", None, 3)]
    assert changes[0].render() == "a: removed 1"
    assert changes[1].render() == "c: added 3"


def test_list_of_dicts_matched_by_symbol() -> None:
    old = {"positions": [{"symbol": "BTC/USD", "size": 0.1}, {"symbol": "ETH/USD", "size": 1}]}
    new = {
        "positions": [
            {"symbol": "SOL/USD", "size": 5},  # inserted in front: no false "changes"
            {"symbol": "BTC/USD", "size": 0.2},
            {"symbol": "ETH/USD", "size": 1},
        ]
    }
    changes = diff_values(old, new, "portfolio")
    assert [c.render() for c in changes] == [
        "portfolio.positions[BTC/USD].size: 0.1 -> 0.2",
        'portfolio.positions[SOL/USD]: added {"symbol": "SOL/USD", "size": 5}',
    ]


def test_reordering_a_keyed_list_is_no_change() -> None:
    a = [{"id": 1, "x": 1}, {"id": 2, "x": 2}]
    assert diff_values(a, list(reversed(a))) == []


def test_natural_key_falls_back_to_id_when_symbol_repeats() -> None:
    old = [{"id": 7, "symbol": "BTC/USD", "qty": 1}, {"id": 8, "symbol": "BTC/USD", "qty": 2}]
    new = [{"id": 7, "symbol": "BTC/USD", "qty": 1}, {"id": 8, "symbol": "BTC/USD", "qty": 3}]
    assert natural_key(old, new) == "id"
    assert paths(diff_values(old, new, "trades")) == ["trades[8].qty"]


def test_list_without_natural_key_matched_by_index() -> None:
    assert natural_key([{"a": 1}], [{"a": 2}]) is None
    assert natural_key([{"id": 1}, {"id": 1}], []) is None  # not unique
    assert natural_key([{"id": 1}, 5], []) is None  # not all dicts
    assert natural_key([{"id": [1]}], []) is None  # unhashable
    assert natural_key([{"id": 1}, {"id": True}], []) is None  # 1 == True would collide
    changes = diff_values([1, 2, 3], [1, 5])
    assert changes == [Change("[1]", "changed", 2, 5), Change("[2]", "removed", 3, None)]
    assert diff_values([1], [1, 2, 3], "xs") == [
        Change("xs[1]", "added", None, 2),
        Change("xs[2]", "added", None, 3),
    ]


def test_keyed_items_removed_and_from_empty_list() -> None:
    assert diff_values([{"symbol": "A"}], [], "p") == [
        Change("p[A]", "removed", {"symbol": "A"}, None)
    ]
    assert diff_values([], [{"id": 3}], "p") == [Change("p[3]", "added", None, {"id": 3})]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (1, 1.0),
        (1, True),
        (0, False),
        ([1], (1,)),
        ({1}, frozenset({1})),
        ({"a": 1}, collections.OrderedDict(a=1)),
        (Decimal("1"), 1),
        ("1", 1),
        (None, 0),
        (b"x", "x"),
    ],
)
def test_type_changes_are_reported(old: object, new: object) -> None:
    changes = diff_values({"v": old}, {"v": new})
    assert changes == [Change("v", "changed", old, new)]
    line = changes[0].render()
    assert f"({type(old).__name__})" in line and f"({type(new).__name__})" in line


def test_nan_equals_nan() -> None:
    nan = float("nan")
    assert diff_values({"x": nan}, {"x": float("nan")}) == []
    assert diff_values([nan, 1.0], [float("nan"), 1.0]) == []
    assert diff_values(complex(nan, 1), complex(float("nan"), 1)) == []
    assert diff_values(Decimal("NaN"), Decimal("NaN")) == []
    assert diff_values(Decimal("sNaN"), Decimal("sNaN")) == []  # no InvalidOperation
    assert len(diff_values(Decimal("NaN"), Decimal("1"))) == 1
    assert len(diff_values(nan, 1.0)) == 1
    assert diff_values(float("inf"), float("inf")) == []


def test_sets_by_membership() -> None:
    changes = diff_values({"s": {1, 2}}, {"s": {2, 3}})
    assert [c.render() for c in changes] == ["s{1}: removed 1", "s{3}: added 3"]


def test_tuples_by_index_and_nested_paths() -> None:
    assert paths(diff_values((1, (2, 3)), (1, (2, 4)), "t")) == ["t[1][1]"]


def test_non_identifier_and_non_str_keys_are_quoted() -> None:
    changes = diff_values({"BTC/USD": 1, 5: "a", ("x", 1): 0}, {"BTC/USD": 2, 5: "b", ("x", 1): 1})
    assert paths(changes) == ['["BTC/USD"]', "[5]", "[('x', 1)]"]
    assert paths(diff_values({"a b": 1}, {"a b": 2}, "p")) == ['p["a b"]']


def test_leaf_types_compare_by_value() -> None:
    moment = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    assert values_equal(moment, moment.replace())
    assert not values_equal(moment, moment + dt.timedelta(seconds=1))
    assert values_equal(uuid.UUID(int=5), uuid.UUID(int=5))
    assert values_equal(Fraction(1, 3), Fraction(2, 6))
    assert diff_values(Path("a"), Path("b")) == [Change("", "changed", Path("a"), Path("b"))]


def test_numpy_and_pandas_leaves() -> None:
    np = pytest.importorskip("numpy")
    a = np.array([1.0, np.nan, 3.0])
    assert diff_values({"a": a}, {"a": a.copy()}) == []
    assert len(diff_values({"a": a}, {"a": np.array([1.0, 2.0, 3.0])})) == 1
    assert len(diff_values({"a": a}, {"a": a.astype("float32")})) == 1
    assert len(diff_values(np.array(["x"]), np.array(["y"]))) == 1
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"p": [1.0, np.nan]})
    assert diff_values(frame, frame.copy()) == []
    assert len(diff_values(frame, pd.DataFrame({"p": [1.0, 2.0]}))) == 1


def test_change_json_uses_to_jsonable() -> None:
    change = Change("t", "changed", Decimal("1.5"), dt.date(2024, 1, 2))
    assert change.to_json() == {"path": "t", "kind": "changed", "old": "1.5", "new": "2024-01-02"}
    assert Change("x", "changed", float("nan"), 1.0).to_json()["old"] == "NaN"


def test_render_value_is_bounded() -> None:
    text = render_value(list(range(1000)))
    assert len(text) <= 120 and text.endswith("…")


# Values as backed up: str-keyed data plus the types a trading bot keeps.
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN, inf, -0.0
    st.text(max_size=6),
    st.binary(max_size=6),
    st.decimals(),  # NaN, sNaN, inf
    st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc])),
    st.uuids(),
    st.complex_numbers(),
)
_keys = st.one_of(st.text(max_size=5), st.integers(-3, 3), st.sampled_from(["id", "symbol"]))
_hashable = st.one_of(st.integers(), st.text(max_size=4), st.floats(allow_nan=False))
values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_keys, inner, max_size=4),
        st.frozensets(_hashable, max_size=4),
        st.sets(_hashable, max_size=4),
        # lists of dicts with natural keys (sometimes unique, sometimes not)
        st.lists(
            st.fixed_dictionaries({"symbol": st.sampled_from(["A", "B", "C", "D"]), "size": inner}),
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
@example([{"id": Decimal("NaN")}])  # a NaN key matched no item, itself included
@example([{"id": Decimal("sNaN")}])  # comparing it raised InvalidOperation
def test_diff_of_a_value_with_itself_is_empty(value: Any) -> None:
    assert diff_values(value, value) == []
    assert diff_values(value, copy.deepcopy(value)) == []
    assert diff_values(value, decode_value(encode_value(value))) == []  # as a backup has it


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, values)
def test_diff_is_symmetric_and_complete(old: Any, new: Any) -> None:
    forward = diff_values(old, new, "root")
    backward = diff_values(new, old, "root")
    swap = {"added": "removed", "removed": "added", "changed": "changed"}
    assert sorted((c.path, swap[c.kind]) for c in forward) == sorted(
        (c.path, c.kind) for c in backward
    )
    assert all(c.path.startswith("root") for c in forward)
    for change in forward:
        json.dumps(change.to_json())  # always serializable
        assert change.render().startswith(change.path)
    if not forward:  # no change reported: the values are really equal
        assert type(old) is type(new)


@settings(max_examples=200, deadline=None)
@given(_leaves, _leaves)
def test_type_changes_property(old: Any, new: Any) -> None:
    changes = diff_values(old, new)
    if type(old) is not type(new):
        assert changes == [Change("", "changed", old, new)]
    elif isinstance(old, float) and math.isnan(old) and math.isnan(new):
        assert changes == []


# --------------------------------------------------------------------------- backups


STATE_1 = {
    "portfolio": {
        "equity": 10000,
        "positions": [{"symbol": "BTC/USD", "size": 0.1}, {"symbol": "ETH/USD", "size": 2}],
    },
    "config": {"strategy": "ma_crossover"},
    "old_only": [1, 2],
}
STATE_2 = {
    "portfolio": {
        "equity": 9500,
        "positions": [{"symbol": "BTC/USD", "size": 0.2}, {"symbol": "ETH/USD", "size": 2}],
    },
    "config": {"strategy": "ma_crossover"},
    "new_only": {"a": 1},
}


def test_diff_backups_data(manager: BackupManager) -> None:
    id1 = manager.create_backup(STATE_1)
    id2 = manager.create_backup(STATE_2)
    result = diff_backups(manager, id1, id2)
    assert (result.old, result.new) == (id1, id2)
    assert [c.render() for c in result.changes] == [
        "portfolio.equity: 10000 -> 9500",
        "portfolio.positions[BTC/USD].size: 0.1 -> 0.2",
        "old_only: removed [1, 2]",
        'new_only: added {"a": 1}',
    ]
    assert result.counts == {"added": 1, "removed": 1, "changed": 2}
    assert result.total == 4 and result.omitted == 0
    assert result.to_json()[0] == {
        "path": "portfolio.equity",
        "kind": "changed",
        "old": 10000,
        "new": 9500,
    }
    assert diff_backups(manager, id1, id1).changes == []
    reverse = diff_backups(manager, id2, id1)
    assert reverse.counts == {"added": 1, "removed": 1, "changed": 2}


def test_diff_backups_is_bounded(manager: BackupManager) -> None:
    id1 = manager.create_backup({"xs": list(range(500))})
    id2 = manager.create_backup({"xs": [i + 1 for i in range(500)]})
    result = diff_backups(manager, id1, id2)
    assert len(result.changes) == 200 and result.total == 500 and result.omitted == 300
    assert result.lines()[-1] == "... 300 more changes"
    assert len(result.lines()) == 201
    small = diff_backups(manager, id1, id2, max_changes=3)
    assert len(small.changes) == 3 and small.lines()[-1] == "... 497 more changes"
    assert len(diff_backups(manager, id1, id2, max_changes=None).changes) == 500
    with pytest.raises(InvalidInputError):
        diff_backups(manager, id1, id2, max_changes=-1)


def test_diff_backups_large_entries_with_chunk_lists(manager: BackupManager) -> None:
    history = [{"id": i, "price": float(i), "note": "x" * 40} for i in range(60_000)]
    id1 = manager.create_backup({"history": history, "other": 1})
    history2 = [*history[:-1], {"id": 59_999, "price": -1.0, "note": "x" * 40}]
    id2 = manager.create_backup({"history": history2, "other": 1})
    entry = manager.repository.read_manifest(id1).entries[0]
    assert entry.lists  # big enough to go through chunk-list blobs
    result = diff_backups(manager, id1, id2)
    assert [c.render() for c in result.changes] == ["history[59999].price: 59999.0 -> -1.0"]


def test_diff_unknown_backup(manager: BackupManager) -> None:
    bid = manager.create_backup({"a": 1})
    with pytest.raises(BackupNotFoundError):
        diff_backups(manager, bid, "manual_20000101_000000")


def _project(root: Path, sources: list[str]) -> BackupManager:
    config = BackupConfig(
        backup_path=root / "backups", retention_days=0, sources=sources, base_dir=root
    )
    return BackupManager(config)


def test_diff_backups_files_and_against_sources(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "a.json").write_bytes(b"a" * 100)
    (tmp_path / "live" / "same.json").write_bytes(b"same")
    (tmp_path / "live" / "gone.json").write_bytes(b"bye")
    (tmp_path / "live" / "secrets.toml").write_bytes(b"k=1")  # never backed up nor diffed
    manager = _project(tmp_path, ["live/"])
    id1 = manager.create_backup({"portfolio": {"equity": 1}})
    assert diff_against_sources(manager, id1).changes == []
    assert diff_against_sources(manager, id1).skipped == ["portfolio"]

    (tmp_path / "live" / "a.json").write_bytes(b"a" * 150)
    (tmp_path / "live" / "gone.json").unlink()
    (tmp_path / "live" / "new.json").write_bytes(b"n" * 10)
    now = diff_against_sources(manager, id1)
    assert [c.render() for c in now.changes] == [
        "live/a.json: changed, 100 B -> 150 B (+50 B)",
        "live/gone.json: removed (3 B)",
        "live/new.json: added (10 B)",
    ]
    assert now.to_json()[0] == {
        "path": "live/a.json",
        "kind": "changed",
        "old": {"size": 100},
        "new": {"size": 150},
    }
    assert now.new == "sources"

    # Same size, other content: found by re-hashing the file on disk.
    (tmp_path / "live" / "same.json").write_bytes(b"SAME")
    assert "live/same.json" in [c.path for c in diff_against_sources(manager, id1).changes]

    id2 = manager.create_backup({"portfolio": {"equity": 2}})
    between = diff_backups(manager, id1, id2)
    assert [c.render() for c in between.changes] == [
        "portfolio.equity: 1 -> 2",
        "live/a.json: changed, 100 B -> 150 B (+50 B)",
        "live/gone.json: removed (3 B)",
        "live/same.json: changed, 4 B -> 4 B (+0 B)",
        "live/new.json: added (10 B)",
    ]
    assert diff_against_sources(manager, id2).changes == []
    assert diff_against_sources(manager, id2, max_changes=0).changes == []


def test_diff_against_sources_needs_sources(manager: BackupManager) -> None:
    bid = manager.create_backup({"a": 1})
    with pytest.raises(InvalidInputError, match="no \\[backup\\] sources"):
        diff_against_sources(manager, bid)


def test_diff_result_lines_without_changes() -> None:
    assert DiffResult("a", "b").lines() == []


# --------------------------------------------------------------------------- CLI


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``peak-backup *args`` in ``cwd``, its output as bytes (``cat`` writes binary)."""
    return run_cli_inline(*args, cwd=cwd, text=False)


def _ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout.decode()


BINARY = bytes(range(256)) * 40 + b"\r\n\x00no trailing newline"


@pytest.fixture
def two_differing_backups(tmp_path: Path) -> tuple[Path, str, str]:
    """A project with config.toml, two backups with data and files; returns (root, id1, id2)."""
    root = tmp_path / "proj"
    (root / "live").mkdir(parents=True)
    (root / "config.toml").write_text(
        '[backup]\nbackup_path = "./backups"\nretention_days = 0\nsources = ["live/"]\n'
    )
    (root / "live" / "blob.bin").write_bytes(BINARY)
    (root / "live" / "a.json").write_bytes(b"{}")
    manager = BackupManager(
        BackupConfig.from_table(
            {"backup_path": "./backups", "retention_days": 0, "sources": ["live/"]}, root
        )
    )
    id1 = manager.create_backup(
        {"portfolio": {"equity": 10000, "positions": [{"symbol": "BTC/USD", "size": 0.1}]}},
        tags={"n": "1"},
    )
    (root / "live" / "a.json").write_bytes(b'{"x": 1}')
    id2 = manager.create_backup(
        {
            "portfolio": {"equity": 9500, "positions": [{"symbol": "BTC/USD", "size": 0.2}]},
            "history": {"trades": [{"id": i, "p": Decimal(i)} for i in range(300)]},
        }
    )
    return root, id1, id2


def test_cli_diff_text(two_differing_backups: tuple[Path, str, str]) -> None:
    root, id1, id2 = two_differing_backups
    out = _ok(_cli(root, "diff", id1, id2))
    lines = out.splitlines()
    assert lines[0] == f"{id1} -> {id2}: 1 added, 0 removed, 3 changed"
    assert "portfolio.equity: 10000 -> 9500" in lines
    assert "portfolio.positions[BTC/USD].size: 0.1 -> 0.2" in lines
    assert "live/a.json: changed, 2 B -> 8 B (+6 B)" in lines
    assert any(line.startswith("history: added {") for line in lines)
    same = _ok(_cli(root, "diff", id2, id2))
    assert same.strip() == f"{id2} -> {id2}: no changes"


def test_cli_diff_max(two_differing_backups: tuple[Path, str, str]) -> None:
    root, id1, id2 = two_differing_backups
    lines = _ok(_cli(root, "diff", id1, id2, "--max", "1")).splitlines()
    assert len(lines) == 3 and lines[-1] == "... 3 more changes"
    assert len(_ok(_cli(root, "diff", id1, id2, "--max", "0")).splitlines()) == 5
    assert _cli(root, "diff", id1, id2, "--max", "-1").returncode == 2


def test_cli_diff_json(two_differing_backups: tuple[Path, str, str]) -> None:
    root, id1, id2 = two_differing_backups
    changes = json.loads(_ok(_cli(root, "diff", id1, id2, "--json")))
    assert {"path": "portfolio.equity", "kind": "changed", "old": 10000, "new": 9500} in changes
    added = next(c for c in changes if c["path"] == "history")
    assert added["kind"] == "added" and added["old"] is None
    assert added["new"]["trades"][5] == {"id": 5, "p": "5"}  # Decimal via to_jsonable
    assert {
        "path": "live/a.json",
        "kind": "changed",
        "old": {"size": 2},
        "new": {"size": 8},
    } in changes
    bounded = _cli(root, "--json", "diff", id1, id2, "--max", "2")
    assert len(json.loads(_ok(bounded))) == 2
    assert b"2 more changes" in bounded.stderr


def test_cli_diff_against_sources(two_differing_backups: tuple[Path, str, str]) -> None:
    root, id1, id2 = two_differing_backups
    out = _ok(_cli(root, "diff", id2))
    assert out.splitlines()[0] == f"{id2} -> the sources on disk: no changes"
    assert "data entries not compared (only files exist on disk): portfolio, history" in out
    (root / "live" / "new.txt").write_bytes(b"12345")
    out = _ok(_cli(root, "diff", id1))
    assert "live/a.json: changed, 2 B -> 8 B (+6 B)" in out
    assert "live/new.txt: added (5 B)" in out
    data = json.loads(_ok(_cli(root, "diff", id1, "--json")))
    assert [c["path"] for c in data] == ["live/a.json", "live/new.txt"]


def test_cli_diff_errors(two_differing_backups: tuple[Path, str, str]) -> None:
    root, id1, _ = two_differing_backups
    missing = _cli(root, "--json", "diff", id1, "manual_20000101_000000")
    assert missing.returncode == 3
    assert json.loads(missing.stdout)["error"]["type"] == "BackupNotFoundError"
    (root / "config.toml").write_text('[backup]\nbackup_path = "./backups"\n')
    assert _cli(root, "diff", id1).returncode == 2  # no sources configured


def test_cli_cat_data(two_differing_backups: tuple[Path, str, str]) -> None:
    root, id1, id2 = two_differing_backups
    out = _ok(_cli(root, "cat", id1, "portfolio"))
    assert json.loads(out) == {
        "equity": 10000,
        "positions": [{"symbol": "BTC/USD", "size": 0.1}],
    }
    assert out.startswith('{\n  "equity"')  # indented
    assert _ok(_cli(root, "cat", id1, "portfolio.json")) == out  # as `show`/`restore` name it
    history = json.loads(_ok(_cli(root, "cat", id2, "history", "--json")))
    assert history["trades"][299] == {"id": 299, "p": "299"}


def test_cli_cat_file_is_binary_safe(two_differing_backups: tuple[Path, str, str]) -> None:
    root, id1, id2 = two_differing_backups
    result = _cli(root, "cat", id1, "live/blob.bin")
    assert result.returncode == 0, result.stderr
    assert result.stdout == BINARY
    assert _cli(root, "cat", id1, "live/a.json").stdout == b"{}"
    assert _cli(root, "cat", id2, "live/a.json").stdout == b'{"x": 1}'
    as_json = json.loads(_ok(_cli(root, "cat", id1, "live/blob.bin", "--json")))
    import base64

    assert as_json["name"] == "live/blob.bin" and as_json["size"] == len(BINARY)
    assert base64.b64decode(as_json["base64"]) == BINARY


def test_cli_cat_errors(two_differing_backups: tuple[Path, str, str]) -> None:
    root, id1, _ = two_differing_backups
    missing = _cli(root, "cat", id1, "nope")
    assert missing.returncode == 3
    assert b"has no entry 'nope'" in missing.stderr and b"portfolio" in missing.stderr
    assert _cli(root, "cat", "manual_20000101_000000", "portfolio").returncode == 3
    # A damaged chunk: exit 4, never silently wrong bytes. Every stored blob (in a pack, by
    # default) reads as garbage.
    repo = root / "backups"
    assert is_packed(repo)
    for cid in stored_chunk_ids(repo):
        write_stored(repo, cid, b"garbage")
        assert read_stored(repo, cid) == b"garbage"
    assert _cli(root, "cat", id1, "portfolio").returncode == 4
