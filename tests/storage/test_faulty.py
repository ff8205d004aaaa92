""":class:`FaultyStore` unarmed passes the store contract (over a directory, with torn writes
made by its own ``short_write`` fault, and over memory); armed, each fault kind does what it
says."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.infra.backup.errors import DiskFullError, StorageError
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.memory import MemoryStore
from src.infra.backup.storage.testing.contract import StoreContract
from src.infra.backup.storage.testing.faulty import FaultyStore, Injected


class TestFaultyLocalStore(StoreContract):
    def make_store(self, request: pytest.FixtureRequest) -> Store:
        self.root = request.getfixturevalue("tmp_path") / "store"
        return FaultyStore(LocalStore(self.root))

    def tear_write(self, store: Store, key: str, data: bytes) -> None:
        assert isinstance(store, FaultyStore)
        store.arm("short_write", at=1, op="put")
        with pytest.raises(StorageError, match="short write"):
            store.put(key, data)
        assert store.injected[-1] == Injected("short_write", "put", key, (key,))

    def check_location(self, store: Store) -> None:
        assert store.location == str(self.root)


class TestFaultyMemoryStore(StoreContract):
    def make_store(self, request: pytest.FixtureRequest) -> Store:
        return FaultyStore(MemoryStore())


def test_counts_calls_and_logs_writes() -> None:
    store = FaultyStore(MemoryStore())
    store.put("a", b"1")
    store.put_many([("b", b"2"), ("c", b"3")])
    store.get("a")
    list(store.list(""))
    store.move("a", "d")
    store.delete("b")
    assert store.calls["write"] == 4 and store.calls["get"] == 1 and store.calls["list"] == 1
    assert store.write_log == [("put", "a"), ("put_many", "b"), ("move", "a"), ("delete", "b")]


@pytest.mark.parametrize("kind", ["ENOSPC", "EIO", "short_write"])
def test_a_failed_write_never_reaches_the_inner_store(kind: str) -> None:
    inner = MemoryStore()
    store = FaultyStore(inner)
    store.arm(kind, at=2)  # type: ignore[arg-type]
    store.put("first", b"1")
    with pytest.raises(DiskFullError if kind == "ENOSPC" else StorageError):
        store.put("second", b"2")
    assert inner.keys() == ["first"]
    store.put("third", b"3")  # a fault fires once
    assert inner.keys() == ["first", "third"] and len(store.injected) == 1


def test_a_timeout_takes_effect_and_loses_the_answer() -> None:
    inner = MemoryStore()
    store = FaultyStore(inner)
    store.arm("timeout", at=1, op="move")
    store.put("a", b"1")
    with pytest.raises(StorageError, match="timed out"):
        store.move("a", "b")
    assert inner.keys() == ["b"]
    store.arm("timeout", at=1, op="get")
    with pytest.raises(StorageError, match="timed out"):
        store.get("b")


def test_a_short_put_many_writes_half_and_tears_the_next(tmp_path: Path) -> None:
    store = FaultyStore(LocalStore(tmp_path))
    store.arm("short_write", at=1, op="put_many")
    items = [(f"k/{n}", b"%d" % n * 10) for n in range(4)]
    with pytest.raises(StorageError):
        store.put_many(items)
    assert sorted(store.list("k/")) == ["k/0", "k/1"]
    (temp,) = store.list_temporary()
    assert temp.key.startswith("k/") and temp.size == 5
    assert store.injected == [Injected("short_write", "put_many", "k/2", ("k/2",))]


def test_a_read_fault_names_the_listing() -> None:
    store = FaultyStore(MemoryStore())
    store.arm("EIO", at=1, op="list_info")
    with pytest.raises(StorageError, match="cannot list"):
        store.list_info("x/")
    assert store.injected == [Injected("EIO", "list", "x/")]


def test_unknown_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultyStore(MemoryStore()).arm("melt", at=1)  # type: ignore[arg-type]
