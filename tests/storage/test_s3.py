"""The store contract on :class:`S3Store` against the session's real SeaweedFS server (skipped
when it cannot start, unless ``$PEAK_REQUIRE_S3`` is set: see ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from src.infra.backup.storage.base import Store
from src.infra.backup.storage.s3 import S3Store
from src.infra.backup.storage.testing.contract import StoreContract
from tests.conftest import S3Bucket


class TestS3Store(StoreContract):
    def make_store(self, request: pytest.FixtureRequest) -> Store:
        self.bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        return S3Store(self.bucket.url, self.bucket.options)

    def check_location(self, store: Store) -> None:
        assert store.location == self.bucket.url
        assert self.bucket.server.secret_key not in store.location

    def test_close_stops_the_threads_and_a_later_call_starts_them(self, store: Store) -> None:
        assert isinstance(store, S3Store)
        store.put_many([("t/a", b"a"), ("t/b", b"b")])  # parallel: starts the pool
        assert store._pool is not None
        pool = store._pool
        store.close()
        assert store._pool is None and pool._shutdown
        assert list(store.get_many(["t/a", "t/b"])) == [b"a", b"b"]
        assert store._pool is not None and store._pool is not pool
