"""The store contract on :class:`MemoryStore`, and what it adds for tests of upper layers."""

from __future__ import annotations

import pytest

from src.infra.backup.errors import StorageError
from src.infra.backup.storage import MemoryStore
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.testing.contract import StoreContract


class TestMemoryStore(StoreContract):
    def make_store(self, request: pytest.FixtureRequest) -> Store:
        return MemoryStore()

    def check_location(self, store: Store) -> None:
        assert store.location.startswith("memory://")


def test_the_clock_gives_modification_times() -> None:
    now = [1000.0]
    store = MemoryStore("clocked", clock=lambda: now[0])
    store.put("a", b"1")
    now[0] = 2000.0
    store.put("b", b"2")
    assert store.stat("a").mtime == 1000.0 and store.stat("b").mtime == 2000.0
    store.move("a", "c")  # a move keeps the time and version, like a rename
    assert store.stat("c").mtime == 1000.0
    assert store.location == "memory://clocked"


def test_stored_bytes_do_not_follow_the_callers_buffer() -> None:
    store = MemoryStore()
    buffer = bytearray(b"abc")
    store.put("k", buffer)  # type: ignore[arg-type]  # a caller passing a buffer anyway
    buffer[0] = ord("X")
    assert store.get("k") == b"abc" and type(store.get("k")) is bytes


def test_a_bad_key_in_put_many_stores_nothing() -> None:
    store = MemoryStore()
    with pytest.raises(StorageError, match="invalid object key"):
        store.put_many([("good", b"1"), ("../bad", b"2")])
    assert len(store) == 0


def test_keys_and_clear() -> None:
    store = MemoryStore()
    store.put_many([("b/1", b""), ("a/2", b""), ("a/1/", b"")])  # a trailing / is the same key
    assert store.keys() == ["a/1", "a/2", "b/1"]
    store.clear()
    assert store.keys() == [] and list(store.list("")) == []
