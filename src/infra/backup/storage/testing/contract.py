"""The store contract as a pytest suite: every backend passes the same cases, so everything
above the storage layer can rely on them alike (restic's ``internal/backend/test`` suite,
kopia's ``VerifyStorage``).

A backend joins by subclassing :class:`StoreContract` in a test module, with a factory::

    class TestMyStore(StoreContract):
        def make_store(self, request: pytest.FixtureRequest) -> Store:
            return MyStore(request.getfixturevalue("tmp_path"))

Every ``test_*`` method then runs on a fresh store from the factory (closed afterwards). Hooks
a subclass may override: :meth:`StoreContract.settle` with ``list_after_write = False`` (a
store whose listings lag), :meth:`StoreContract.tear_write` (a store with temporary objects),
:meth:`StoreContract.check_location`.

This module imports pytest (a test dependency); nothing in the engine imports it.
"""

from __future__ import annotations

import itertools
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import pytest

from src.infra.backup.errors import ObjectExistsError, StorageError
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.s3 import MULTIPART_THRESHOLD  # a constant: obstore stays unloaded

INVALID_KEYS = ("../escape", "/absolute", "a//b", ".hidden", "a/../b", "", "a\0b")


class StoreContract(ABC):
    """The contract every :class:`Store` honours, as ``test_*`` methods on a ``store``
    fixture built by :meth:`make_store`."""

    #: Whether a listing shows every write, delete and move that returned before it. An
    #: eventually consistent store sets ``False`` and implements :meth:`settle`: the listing
    #: cases then settle the store before they list, and the one case that checks listings
    #: right after writes (``test_listings_show_changes_at_once``) is skipped.
    list_after_write: ClassVar[bool] = True

    #: Bigger than the S3 multipart threshold: uploaded in parts there.
    large_object_size: ClassVar[int] = MULTIPART_THRESHOLD + 3 * 1024 * 1024 + 17

    #: More keys than one S3 listing page (1,000) returns.
    many_keys: ClassVar[int] = 1_100

    # -- hooks -------------------------------------------------------------------------------

    @abstractmethod
    def make_store(self, request: pytest.FixtureRequest) -> Store:
        """A new, empty store of the backend under test (``request`` gives fixtures:
        ``request.getfixturevalue("tmp_path")``)."""

    def settle(self, store: Store) -> None:
        """Make listings show every finished write. Nothing to do where listings never lag;
        a store with ``list_after_write = False`` must override this, or its listing cases
        are skipped."""
        if not self.list_after_write:
            pytest.skip("listings lag writes and this backend has no settle()")

    def tear_write(self, store: Store, key: str, data: bytes) -> None:
        """Leave what an interrupted write of ``data`` to ``key`` leaves behind: a truncated
        temporary object, listed by ``list_temporary``. Stores without temporary objects
        (atomic writes) keep this default, which skips the torn-write case."""
        pytest.skip(f"{type(store).__name__} has no temporary objects (its writes are atomic)")

    def check_location(self, store: Store) -> None:  # noqa: B027 - an optional hook
        """Backend-specific checks of ``store.location`` (it is already known non-empty)."""

    # -- the fixture -------------------------------------------------------------------------

    @pytest.fixture
    def store(self, request: pytest.FixtureRequest) -> Iterator[Store]:
        """A fresh store from :meth:`make_store`, closed after the test."""
        store = self.make_store(request)
        try:
            yield store
        finally:
            store.close()

    def listed(self, store: Store, prefix: str) -> set[str]:
        """The keys below ``prefix``, once listings have caught up; a key listed twice fails."""
        self.settle(store)
        keys = list(store.list(prefix))
        assert len(keys) == len(set(keys)), f"keys listed twice below {prefix!r}"
        return set(keys)

    # -- reads and writes --------------------------------------------------------------------

    def test_put_get_roundtrip(self, store: Store) -> None:
        payloads = {"a/b/one": b"first", "a/two": b"", "three": bytes(range(256)) * 40}
        for key, data in payloads.items():
            store.put(key, data)
        for key, data in payloads.items():
            assert store.get(key) == data
            assert store.exists(key)
            assert store.stat(key).size == len(data) == store.size(key)
            assert store.stat(key).key == key

    def test_put_versioned_answers_the_version_stat_gives(self, store: Store) -> None:
        version = store.put_versioned("snapshots/v.json", b"one", exclusive=True)
        self.settle(store)
        assert version == store.stat("snapshots/v.json").version != ""
        with pytest.raises(ObjectExistsError):
            store.put_versioned("snapshots/v.json", b"two", exclusive=True)
        replaced = store.put_versioned("snapshots/v.json", b"three")
        self.settle(store)
        assert replaced == store.stat("snapshots/v.json").version != version

    def test_ranged_reads(self, store: Store) -> None:
        data = bytes(range(256)) * 4000  # about 1 MB
        store.put("packs/ab/range", data)
        assert store.get_range("packs/ab/range", 0, 10) == data[:10]
        assert store.get_range("packs/ab/range", 300_000, 70_000) == data[300_000:370_000]
        assert store.get_range("packs/ab/range", len(data) - 5, 5) == data[-5:]
        assert store.get_range("packs/ab/range", 17, 0) == b""
        # A range past the end gives what is there; the caller checks the length.
        assert store.get_range("packs/ab/range", len(data) - 5, 100) == data[-5:]
        assert store.get_range("packs/ab/range", len(data) + 10, 100) == b""
        with pytest.raises(KeyError):
            store.get_range("packs/ab/none", 0, 10)
        with pytest.raises(KeyError):
            store.get_range("packs/ab/none", 0, 0)
        with pytest.raises(ValueError):
            store.get_range("packs/ab/range", -1, 10)

    def test_missing_objects_raise_key_error(self, store: Store) -> None:
        for call in (store.get, store.stat, store.size):
            with pytest.raises(KeyError):
                call("nothing/here")
        assert not store.exists("nothing/here")
        with pytest.raises(KeyError):
            store.move("nothing/here", "elsewhere")

    def test_exclusive_put_refuses_an_existing_key(self, store: Store) -> None:
        store.put("snapshots/x.json", b"one", exclusive=True)
        with pytest.raises(ObjectExistsError):
            store.put("snapshots/x.json", b"two", exclusive=True)
        assert store.get("snapshots/x.json") == b"one"
        store.put("snapshots/x.json", b"three")  # a plain put replaces
        assert store.get("snapshots/x.json") == b"three"

    def test_racing_exclusive_puts_have_one_winner(self, store: Store) -> None:
        """Two writers commit the same key at once (two hosts finishing a backup with one
        id): exactly one wins, the other gets ObjectExistsError and the winner's bytes stay."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            for round_ in range(6):
                key = f"snapshots/race-{round_}.json"
                start = threading.Barrier(2)

                def commit(writer: int, key: str = key, start: threading.Barrier = start) -> None:
                    start.wait()  # both PUTs leave together
                    store.put(key, f"writer {writer}".encode(), exclusive=True)

                futures = [pool.submit(commit, writer) for writer in (0, 1)]
                errors = [future.exception() for future in futures]
                winners = [writer for writer, error in enumerate(errors) if error is None]
                assert len(winners) == 1, f"round {round_}: {errors}"
                loser = errors[1 - winners[0]]
                assert isinstance(loser, ObjectExistsError), f"round {round_}: {loser!r}"
                assert store.get(key) == f"writer {winners[0]}".encode()

    def test_versions_change_with_content(self, store: Store) -> None:
        store.put("k", b"one")
        first = store.stat("k")
        self.settle(store)
        assert first.version
        assert [i.version for i in store.list_info("") if i.key == "k"] == [first.version]
        store.put("k", b"two, longer")
        assert store.stat("k").version != first.version

    def test_listing_tokens_change_when_an_object_is_replaced(self, store: Store) -> None:
        store.put("dir/a", b"one")
        store.put("dir/b", b"two")
        self.settle(store)
        tokens = dict(store.list_tokens("dir/"))
        assert set(tokens) == {"dir/a", "dir/b"} == self.listed(store, "dir/")
        assert all(tokens.values()) and tokens["dir/a"] != tokens["dir/b"]
        assert {i.key: i.token for i in store.list_info("dir/")} == tokens
        store.put("dir/a", b"one, replaced")
        self.settle(store)
        after = dict(store.list_tokens("dir/"))
        assert after["dir/a"] != tokens["dir/a"] and after["dir/b"] == tokens["dir/b"]

    def test_listing_tokens_after_a_key(self, store: Store) -> None:
        """Only the keys that start with the prefix and sort after the start; neighbours
        that share the folder (before, after, and a longer name past the prefix) are not."""
        for key in ("s/a_1", "s/a_2", "s/a_3", "s/a_b_1", "s/a", "s/b_1", "s/Z_9", "t/a_2"):
            store.put(key, key.encode())
        self.settle(store)
        tokens = dict(store.list_tokens("s/"))
        after = dict(store.list_tokens_after("s/a_", "s/a_1"))
        assert after == {k: tokens[k] for k in ("s/a_2", "s/a_3", "s/a_b_1")}
        assert dict(store.list_tokens_after("s/a_2", "s/a_1")) == {"s/a_2": tokens["s/a_2"]}
        assert dict(store.list_tokens_after("s/a_", "s/a_c")) == {}
        assert dict(store.list_tokens_after("s/c_", "s/c_")) == {}

    def test_get_many_keeps_order_with_missing_keys(self, store: Store) -> None:
        present = {f"g/{n:03d}": os.urandom(n + 1) for n in range(40) if n % 3 != 1}
        store.put_many(present.items())
        # A missing key first, in the middle and last; more keys than a fetch window.
        keys = ["g/001", "g/000", "missing/x", "g/003", *[f"g/{n:03d}" for n in range(40)]]
        keys += ["g/000", "g/039"]  # asked twice: returned twice
        assert list(store.get_many(keys)) == [present.get(key) for key in keys]
        assert list(store.get_many(["g/000", "missing/y", "g/002"])) == [
            present["g/000"],
            None,
            present["g/002"],
        ]
        assert list(store.get_many([])) == []
        assert list(store.get_many(["missing/z"])) == [None]
        # A consumer may stop early.
        assert list(itertools.islice(store.get_many(keys), 3)) == [None, present["g/000"], None]

    def test_threads_share_a_store(self, store: Store) -> None:
        """One store, several threads writing, reading and deleting their own keys."""

        def worker(n: int) -> None:
            for i in range(12):
                key = f"threads/{n}/{i:02d}"
                data = f"{n}:{i}".encode() * (i + 1)
                store.put(key, data)
                assert store.get(key) == data and store.exists(key)
                if i % 2:
                    store.delete(key)
                    assert not store.exists(key)

        with ThreadPoolExecutor(max_workers=6) as pool:
            for future in [pool.submit(worker, n) for n in range(6)]:
                future.result()
        expected = {f"threads/{n}/{i:02d}" for n in range(6) for i in range(0, 12, 2)}
        assert self.listed(store, "threads/") == expected

    # -- listings ----------------------------------------------------------------------------

    def test_put_many_and_listing(self, store: Store) -> None:
        items = [(f"chunks/{n % 3:02x}/{n:064x}", os.urandom(100 + n)) for n in range(40)]
        store.put_many(items)
        store.put("snapshots/s1.json", b"{}")
        store.put("chunksandmore", b"not below chunks/")
        self.settle(store)
        listed = {info.key: info for info in store.list_info("chunks/")}
        assert set(listed) == {key for key, _ in items}
        for key, data in items:
            assert listed[key].size == len(data) and store.get(key) == data
        assert self.listed(store, "snapshots/") == {"snapshots/s1.json"}
        assert self.listed(store, "") == {key for key, _ in items} | {
            "snapshots/s1.json",
            "chunksandmore",
        }
        assert self.listed(store, "empty/") == set()

    def test_listings_show_changes_at_once(self, store: Store) -> None:
        """List-after-write: a listing shows every write, delete and move that returned."""
        if not self.list_after_write:
            pytest.skip("relaxed: listings of this store lag writes (list_after_write = False)")
        store.put("l/a", b"a")
        assert set(store.list("l/")) == {"l/a"}
        store.put_many([("l/b", b"b"), ("l/c", b"c")])
        assert set(store.list("l/")) == {"l/a", "l/b", "l/c"}
        store.move("l/a", "l/d")
        store.delete("l/b")
        assert set(store.list("l/")) == {"l/c", "l/d"}
        store.put("l/c", b"longer c")
        assert [info.size for info in store.list_info("l/") if info.key == "l/c"] == [8]

    def test_listing_more_than_a_page(self, store: Store) -> None:
        """More keys than one S3 ListObjects page: every key listed exactly once."""
        items = [(f"many/{n % 7:02x}/{n:06d}", b"%d" % n) for n in range(self.many_keys)]
        # Written from threads without flushes: the case is about listing, and 1,100 fsyncs
        # would dominate it on a local disk.
        with ThreadPoolExecutor(max_workers=8) as pool:
            for future in [pool.submit(store.put, k, d, durable=False) for k, d in items]:
                future.result()
        store.put("manyfold", b"not below many/")
        assert self.listed(store, "many/") == {key for key, _ in items}
        infos = list(store.list_info("many/"))
        assert len(infos) == len(items)
        sizes = {key: len(data) for key, data in items}
        assert all(info.size == sizes[info.key] for info in infos)
        assert self.listed(store, "many/03/") == {key for key, _ in items if key[5:7] == "03"}

    def test_listing_tolerates_concurrent_deletes(self, store: Store) -> None:
        """A listing while a collector deletes: no error, no key twice, nothing unknown."""
        keys = {f"gc/{n % 5}/{n:04d}" for n in range(200)}
        store.put_many((key, b"x") for key in keys)
        done = threading.Event()

        def collect() -> None:
            try:
                for key in sorted(keys):
                    store.delete(key, durable=False)  # no flushes: the listing is the point
            finally:
                done.set()

        with ThreadPoolExecutor(max_workers=1) as pool:
            collector = pool.submit(collect)
            while True:
                finished = done.is_set()
                seen = list(store.list("gc/"))
                assert len(seen) == len(set(seen)) and set(seen) <= keys
                if finished:
                    break
            collector.result()
        assert self.listed(store, "gc/") == set()

    # -- move and delete ---------------------------------------------------------------------

    def test_move_and_delete(self, store: Store) -> None:
        store.put("chunks/ab/x", b"payload")
        store.put("fossils/ab/x", b"old")
        store.move("chunks/ab/x", "fossils/ab/x")  # replaces the destination
        assert not store.exists("chunks/ab/x") and store.get("fossils/ab/x") == b"payload"
        store.delete("fossils/ab/x")
        store.delete("fossils/ab/x")  # deleting what is gone is not an error
        store.delete("never/was", durable=False)
        assert not store.exists("fossils/ab/x")

    def test_move_of_a_vanished_source(self, store: Store) -> None:
        """The GC race: an object listed, then deleted by another collector before the move.
        The move is a KeyError and leaves the destination as it was (never half-made)."""
        store.put("chunks/ab/x", b"payload")
        assert self.listed(store, "chunks/") == {"chunks/ab/x"}
        store.delete("chunks/ab/x")  # the other collector wins
        with pytest.raises(KeyError):
            store.move("chunks/ab/x", "fossils/ab/x")
        assert not store.exists("fossils/ab/x") and not store.exists("chunks/ab/x")
        store.put("fossils/ab/y", b"older fossil")
        with pytest.raises(KeyError):
            store.move("chunks/ab/y", "fossils/ab/y")
        assert store.get("fossils/ab/y") == b"older fossil"
        assert self.listed(store, "") == {"fossils/ab/y"}

    # -- keys --------------------------------------------------------------------------------

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_are_refused(self, store: Store, key: str) -> None:
        store.put("ok", b"kept")
        calls: list[Callable[[], object]] = [
            lambda: store.put(key, b"x"),
            lambda: store.put(key, b"x", exclusive=True),
            lambda: store.put_many([(key, b"x")]),
            lambda: store.get(key),
            lambda: store.stat(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
            lambda: store.move(key, "elsewhere"),
            lambda: store.move("ok", key),
        ]
        for call in calls:
            with pytest.raises(StorageError, match="invalid object key"):
                call()
        assert store.get("ok") == b"kept"

    # -- durability and temporary objects ----------------------------------------------------

    def test_no_temporary_objects_after_completed_writes(self, store: Store) -> None:
        store.put("a/b", b"x")
        store.put_many([("c/d", b"y"), ("c/e", b"z")])
        store.put("f", b"w", exclusive=True)
        store.move("a/b", "g/h")
        assert list(store.list_temporary()) == []

    def test_writes_without_durability(self, store: Store) -> None:
        """``durable=False`` (leases) skips flushes, nothing else: the object is complete,
        exclusive still refuses, and nothing temporary is left."""
        store.put("locks/lease-a", b"lease", durable=False)
        store.put("locks/lease-b", b"lease b", exclusive=True, durable=False)
        with pytest.raises(ObjectExistsError):
            store.put("locks/lease-b", b"another", exclusive=True, durable=False)
        assert store.get("locks/lease-a") == b"lease" and store.get("locks/lease-b") == b"lease b"
        assert self.listed(store, "locks/") == {"locks/lease-a", "locks/lease-b"}
        assert list(store.list_temporary()) == []
        store.delete("locks/lease-a", durable=False)
        assert not store.exists("locks/lease-a")
        assert self.listed(store, "locks/") == {"locks/lease-b"}

    def test_torn_write_leaves_a_temporary_object(self, store: Store) -> None:
        """An interrupted write leaves a truncated temporary object: never under its key,
        never listed, found by ``list_temporary`` and removed by ``delete_temporary``."""
        store.put("chunks/ab/kept", b"kept")
        data = os.urandom(1000)
        self.tear_write(store, "chunks/ab/torn", data)
        assert not store.exists("chunks/ab/torn")
        with pytest.raises(KeyError):
            store.get("chunks/ab/torn")
        assert self.listed(store, "") == {"chunks/ab/kept"}
        (temp,) = store.list_temporary()
        assert temp.key.startswith("chunks/ab/") and temp.key != "chunks/ab/torn"
        assert temp.size < len(data)
        with pytest.raises(StorageError):
            store.delete_temporary("chunks/ab/kept")  # an object is not a leftover
        store.delete_temporary(temp.key)
        assert list(store.list_temporary()) == []
        assert store.get("chunks/ab/kept") == b"kept"
        store.put("chunks/ab/torn", data)  # the write, done again, succeeds
        assert store.get("chunks/ab/torn") == data

    def test_delete_temporary_refuses_objects(self, store: Store) -> None:
        store.put("a/b", b"object")
        with pytest.raises(StorageError):
            store.delete_temporary("a/b")
        assert store.get("a/b") == b"object"

    # -- size, location, close ---------------------------------------------------------------

    def test_large_object(self, store: Store) -> None:
        data = os.urandom(self.large_object_size)
        store.put("big/object", data)
        assert store.get("big/object") == data
        assert store.stat("big/object").size == len(data)

    def test_location_names_the_store(self, store: Store) -> None:
        assert isinstance(store.location, str) and store.location
        self.check_location(store)

    def test_close_is_idempotent_and_the_store_stays_usable(self, store: Store) -> None:
        """``close()`` releases resources, never data; a closed store still works (and
        acquires again what it needs), ``close()`` twice is fine, ``with`` closes."""
        items = [(f"c/{n:02d}", b"%d" % n) for n in range(20)]
        store.put_many(items)
        assert list(store.get_many(key for key, _ in items)) == [data for _, data in items]
        store.close()
        store.close()
        assert store.get("c/00") == b"0"
        store.put_many([("c/20", b"20"), ("c/21", b"21")])
        assert list(store.get_many(["c/20", "missing", "c/21"])) == [b"20", None, b"21"]
        store.move("c/21", "c/22")
        store.delete("c/20")
        with store as entered:
            assert entered is store
            entered.put("c/with", b"w")
        assert store.get("c/with") == b"w"  # closed by the with block, still usable
        assert self.listed(store, "c/") == {key for key, _ in items} | {"c/22", "c/with"}
