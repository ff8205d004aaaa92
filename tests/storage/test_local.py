"""The store contract on :class:`LocalStore` (a directory), torn writes included."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.infra.backup.storage.base import Store
from src.infra.backup.storage.local import LocalStore, write_temp_file
from src.infra.backup.storage.testing.contract import StoreContract


class TestLocalStore(StoreContract):
    def make_store(self, request: pytest.FixtureRequest) -> Store:
        self.root = request.getfixturevalue("tmp_path") / "store"
        return LocalStore(self.root)

    def tear_write(self, store: Store, key: str, data: bytes) -> None:
        # What a crash mid-write leaves: half the bytes in a temp file beside the key.
        directory = self.root.joinpath(*key.split("/")[:-1])
        directory.mkdir(parents=True, exist_ok=True)
        write_temp_file(directory, data[: len(data) // 2], sync=False)

    def check_location(self, store: Store) -> None:
        assert store.location == str(self.root)


def test_a_closed_local_store_keeps_its_files(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "store") as store:
        store.put("a/b", b"x")
    assert (tmp_path / "store" / "a" / "b").read_bytes() == b"x"
    assert LocalStore(tmp_path / "store").get("a/b") == b"x"
