""":class:`EventualStore`: the store contract with listings that lag (settled before each
listing case; the list-after-write case is relaxed), and proof that the lag happens."""

from __future__ import annotations

import pytest

from src.infra.backup.errors import ObjectExistsError
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.memory import MemoryStore
from src.infra.backup.storage.testing.contract import StoreContract
from src.infra.backup.storage.testing.eventual import EventualStore


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestEventualStore(StoreContract):
    list_after_write = False  # relaxed: listings lag writes by one listing

    def make_store(self, request: pytest.FixtureRequest) -> Store:
        return EventualStore(MemoryStore(), lag=1)

    def settle(self, store: Store) -> None:
        assert isinstance(store, EventualStore)
        store.settle()


class TestEventualStoreWithAWindow(TestEventualStore):
    """Changes stay invisible for 30 s of a clock that never moves: only settle() helps."""

    def make_store(self, request: pytest.FixtureRequest) -> Store:
        return EventualStore(MemoryStore(), window=30.0, clock=FakeClock())


def test_listings_lag_new_objects_by_lag_listings() -> None:
    store = EventualStore(MemoryStore(), lag=2)
    store.put("a/1", b"one")
    assert store.get("a/1") == b"one"  # reads are fresh by default
    assert list(store.list("a/")) == []
    assert list(store.list("a/")) == []
    assert list(store.list("a/")) == ["a/1"]
    assert store.pending == []


def test_listings_lag_deletes_and_replacements() -> None:
    inner = MemoryStore()
    inner.put("a/old", b"old")
    inner.put("a/gone", b"gone")
    old_info = inner.stat("a/old")
    store = EventualStore(inner, lag=1)
    store.put("a/old", b"a longer new version")
    store.delete("a/gone")
    listed = {info.key: info for info in store.list_info("a/")}
    assert listed == {"a/old": old_info, "a/gone": listed["a/gone"]}  # as before the changes
    assert not store.exists("a/gone")
    assert {info.key: info.size for info in store.list_info("a/")} == {"a/old": 20}


def test_a_move_lags_on_both_keys() -> None:
    store = EventualStore(MemoryStore(), lag=0)
    store.put("chunks/x", b"x")
    assert list(store.list("")) == ["chunks/x"]  # lag 0: consistent
    store.lag = 1
    store.move("chunks/x", "fossils/x")
    assert list(store.list("")) == ["chunks/x"]
    assert list(store.list("")) == ["fossils/x"]


def test_changes_become_visible_in_order() -> None:
    store = EventualStore(MemoryStore(), lag=1)
    store.put("k", b"1")
    assert list(store.list("")) == []  # listing 1: the first put is pending
    store.put("k", b"22")  # pending until listing 3
    assert [i.size for i in store.list_info("")] == [1]  # listing 2: the first put only
    assert [i.size for i in store.list_info("")] == [2]


def test_a_window_on_an_injected_clock() -> None:
    clock = FakeClock()
    store = EventualStore(MemoryStore(), window=10.0, clock=clock)
    store.put("w/a", b"a")
    for _ in range(5):  # listings alone do not make it visible
        assert list(store.list("w/")) == []
    clock.now += 9.5
    assert list(store.list("w/")) == []
    clock.now += 0.5
    assert list(store.list("w/")) == ["w/a"]


def test_stale_reads() -> None:
    clock = FakeClock()
    inner = MemoryStore()
    inner.put("r/k", b"old")
    store = EventualStore(inner, window=5.0, clock=clock, stale_reads=True)
    store.put("r/k", b"new")
    store.put("r/n", b"brand new")
    store.delete("r/k")
    assert store.get("r/k") == b"old" and store.stat("r/k").size == 3 and store.exists("r/k")
    assert not store.exists("r/n")
    with pytest.raises(KeyError):
        store.get("r/n")
    assert list(store.get_many(["r/k", "r/n"])) == [b"old", None]
    assert len(store.pending) == 3
    clock.now += 5.0
    assert not store.exists("r/k") and store.get("r/n") == b"brand new"
    assert store.pending == []


def test_exclusive_writes_are_decided_by_the_inner_store() -> None:
    store = EventualStore(MemoryStore(), lag=5, stale_reads=True)
    store.put("snapshots/a.json", b"one", exclusive=True)
    assert not store.exists("snapshots/a.json")  # reads still lag...
    with pytest.raises(ObjectExistsError):  # ...but the commit point does not
        store.put("snapshots/a.json", b"two", exclusive=True)
    assert len(store.pending) == 1  # the refused write left no change behind


def test_settle_catches_up() -> None:
    store = EventualStore(MemoryStore(), lag=100)
    store.put_many([("s/1", b""), ("s/2", b"")])
    assert list(store.list("s/")) == [] and len(store.pending) == 2
    store.settle()
    assert sorted(store.list("s/")) == ["s/1", "s/2"]


def test_negative_lags_are_refused() -> None:
    with pytest.raises(ValueError):
        EventualStore(MemoryStore(), lag=-1)
