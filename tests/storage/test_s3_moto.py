"""The store contract on :class:`S3Store` against the second S3 implementation, moto's server
mode in its own process (``tests/s3_moto_server.py``; skipped when it cannot start, unless
``$PEAK_REQUIRE_S3`` is set). ``test_s3.py`` runs the same cases on SeaweedFS."""

from __future__ import annotations

import pytest

from src.infra.backup.storage.base import Store
from src.infra.backup.storage.s3 import S3Store
from src.infra.backup.storage.testing.contract import StoreContract
from tests.conftest import S3Bucket


class TestS3StoreOnMoto(StoreContract):
    def make_store(self, request: pytest.FixtureRequest) -> Store:
        self.bucket: S3Bucket = request.getfixturevalue("moto_s3_bucket")
        return S3Store(self.bucket.url, self.bucket.options)

    def check_location(self, store: Store) -> None:
        assert store.location == self.bucket.url
        assert self.bucket.server.secret_key not in store.location
