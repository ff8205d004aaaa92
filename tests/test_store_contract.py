"""The store contract: every backend (local directory, S3 on a real SeaweedFS) passes the same
tests, so everything above the storage layer can rely on them alike."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.infra.backup.errors import ObjectExistsError, StorageError
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.s3 import MULTIPART_THRESHOLD, S3Store
from tests.conftest import S3Bucket


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    s3 = S3Store(bucket.url, bucket.options)
    try:
        yield s3
    finally:
        s3.close()


def test_put_get_roundtrip(store: Store) -> None:
    payloads = {"a/b/one": b"first", "a/two": b"", "three": bytes(range(256)) * 40}
    for key, data in payloads.items():
        store.put(key, data)
    for key, data in payloads.items():
        assert store.get(key) == data
        assert store.exists(key)
        assert store.stat(key).size == len(data) == store.size(key)


def test_missing_objects_raise_key_error(store: Store) -> None:
    for call in (store.get, store.stat, store.size):
        with pytest.raises(KeyError):
            call("nothing/here")
    assert not store.exists("nothing/here")
    with pytest.raises(KeyError):
        store.move("nothing/here", "elsewhere")


def test_exclusive_put_refuses_an_existing_key(store: Store) -> None:
    store.put("snapshots/x.json", b"one", exclusive=True)
    with pytest.raises(ObjectExistsError):
        store.put("snapshots/x.json", b"two", exclusive=True)
    assert store.get("snapshots/x.json") == b"one"
    store.put("snapshots/x.json", b"three")  # a plain put replaces
    assert store.get("snapshots/x.json") == b"three"


def test_versions_change_with_content(store: Store) -> None:
    store.put("k", b"one")
    first = store.stat("k")
    assert first.version and [i.version for i in store.list_info("") if i.key == "k"] == [
        first.version
    ]
    store.put("k", b"two, longer")
    assert store.stat("k").version != first.version


def test_put_many_and_listing(store: Store) -> None:
    items = [(f"chunks/{n % 3:02x}/{n:064x}", os.urandom(100 + n)) for n in range(40)]
    store.put_many(items)
    store.put("snapshots/s1.json", b"{}")
    store.put("chunksandmore", b"not below chunks/")
    listed = {info.key: info for info in store.list_info("chunks/")}
    assert set(listed) == {key for key, _ in items}
    for key, data in items:
        assert listed[key].size == len(data) and store.get(key) == data
    assert set(store.list("snapshots/")) == {"snapshots/s1.json"}
    assert set(store.list("")) == {key for key, _ in items} | {"snapshots/s1.json", "chunksandmore"}
    assert list(store.list("empty/")) == []


def test_move_and_delete(store: Store) -> None:
    store.put("chunks/ab/x", b"payload")
    store.put("fossils/ab/x", b"old")
    store.move("chunks/ab/x", "fossils/ab/x")  # replaces the destination
    assert not store.exists("chunks/ab/x") and store.get("fossils/ab/x") == b"payload"
    store.delete("fossils/ab/x")
    store.delete("fossils/ab/x")  # deleting what is gone is not an error
    store.delete("never/was", durable=False)
    assert not store.exists("fossils/ab/x")


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", ".hidden", "a/../b", "", "a\0b"])
def test_invalid_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(StorageError, match="invalid object key"):
        store.put(key, b"x")
    with pytest.raises(StorageError, match="invalid object key"):
        store.get(key)


def test_no_temporary_objects_after_completed_writes(store: Store) -> None:
    store.put("a/b", b"x")
    store.put_many([("c/d", b"y"), ("c/e", b"z")])
    store.put("f", b"w", exclusive=True)
    assert list(store.list_temporary()) == []


def test_large_object(store: Store) -> None:
    """Larger than the S3 multipart threshold: uploaded in parts there, whole locally."""
    data = os.urandom(MULTIPART_THRESHOLD + 3 * 1024 * 1024 + 17)
    store.put("big/object", data)
    assert store.get("big/object") == data
    assert store.stat("big/object").size == len(data)


def test_location_names_the_store(store: Store, tmp_path: Path) -> None:
    if isinstance(store, S3Store):
        assert store.location.startswith("s3://") and "secret" not in store.location
    else:
        assert store.location == str(tmp_path / "store")
