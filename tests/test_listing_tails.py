"""Listing many backups on S3 without listing every manifest (format 2; repository/catalog.py).

A complete listing of ``snapshots/`` costs a request per 1,000 manifests. Past a basis (a
complete listing made under the current ``index/snapshots.token``, kept in the snapshot
index), ``list_backups`` reads the token, the index (a fresh process) and each type's newest
keys (``StartAfter``): a few requests, however many backups there are. The token changes
before and after a manifest is deleted and before a process commits its first backup of a
type, so deletions and new types are never hidden; a basis older than an hour is renewed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from layout_helpers import make_repository

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.format.ids import new_backup_id
from src.infra.backup.format.layout import INDEX_KEY, SNAPSHOTS_TOKEN_KEY, snapshot_key
from src.infra.backup.format.manifest import Manifest, encode_checked
from src.infra.backup.repository import catalog as catalog_module
from src.infra.backup.repository import repository as repository_module
from src.infra.backup.repository import writer as writer_module
from src.infra.backup.repository.catalog import read_snapshots_token
from src.infra.backup.repository.repository import Repository
from src.infra.backup.repository.snapshot_writer import DataInput
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.requests import measure
from tests.conftest import S3Bucket

MANY = 1_200  # two pages of a complete listing
SPACING = timedelta(minutes=10)  # 4,320 backups a month: the tails (a day) hold 144 of them


def _copies(template: Manifest, backup_type: str, count: int, end: datetime) -> Iterator[Manifest]:
    """``count`` manifests like ``template`` (same chunks), SPACING apart up to ``end``."""
    for n in range(count):
        when = end - SPACING * (count - n)
        backup_id = new_backup_id(backup_type, f"{when.astimezone():%Y%m%d_%H%M%S}")
        yield msgspec.structs.replace(
            template, backup_id=backup_id, backup_type=backup_type, time_utc=when
        )


@pytest.fixture
def many(s3_bucket: S3Bucket) -> Iterator[S3Bucket]:
    """A bucket with MANY pre_trade and 30 daily backups (manifests written directly, all
    sharing one backup's chunks), listed once completely (which writes the index)."""
    bucket = s3_bucket
    manager = BackupManager(bucket.config())
    first = manager.create_backup({"positions": [1, 2, 3]}, "pre_trade")
    repository = manager.repository
    template = repository.read_manifest(first)
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    manifests = [*_copies(template, "pre_trade", MANY, now), *_copies(template, "daily", 30, now)]
    repository.store.put_many((snapshot_key(m.backup_id), encode_checked(m)) for m in manifests)
    repository.catalog.tails = True
    assert len(BackupManager(bucket.config()).list_backups()) == MANY + 31
    yield bucket


def _fresh(bucket: S3Bucket) -> BackupManager:
    manager = BackupManager(bucket.config())
    manager.repository  # noqa: B018 - opened (repo.json read) outside what is measured
    return manager


class _CompleteListings:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = catalog_module.list_snapshot_store

        def counted(*args: object, **kwargs: bool) -> catalog_module.Listing:
            self.count += 1
            return original(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(catalog_module, "list_snapshot_store", counted)

    def take(self) -> int:
        taken, self.count = self.count, 0
        return taken


@pytest.fixture
def complete(monkeypatch: pytest.MonkeyPatch) -> _CompleteListings:
    return _CompleteListings(monkeypatch)


def _listed(manager: BackupManager) -> tuple[list[str], dict[str, int]]:
    with measure() as seen:
        ids = [info.backup_id for info in manager.list_backups()]
    return ids, seen.snapshot()


def _complete(bucket: S3Bucket) -> list[str]:
    manager = _fresh(bucket)
    manager.repository.catalog.tails = False
    return [info.backup_id for info in manager.list_backups()]


def test_a_fresh_process_lists_many_backups_in_four_requests(
    many: S3Bucket, complete: _CompleteListings
) -> None:
    ids, requests = _listed(_fresh(many))
    # the token, the index, the newest keys of each of the two types
    assert requests == {"GET": 2, "LIST": 2}, requests
    assert complete.take() == 0
    assert ids == _complete(many) and len(ids) == MANY + 31


def test_new_backups_are_found_past_the_basis(many: S3Bucket, complete: _CompleteListings) -> None:
    writer = _fresh(many)
    writer.create_backup({"positions": [4]}, "pre_trade")  # announces pre_trade: new token
    _listed(_fresh(many))
    assert complete.take() == 1  # the token changed: a complete listing, a new basis
    new_id = writer.create_backup({"positions": [5]}, "pre_trade")  # same process: no token
    reader = _fresh(many)
    ids, requests = _listed(reader)
    assert ids[0] == new_id and ids == _complete(many)
    assert requests == {"GET": 3, "LIST": 2}, requests  # + the new manifest
    again, requests = _listed(reader)  # a warm process: the token and the newest keys
    assert again == ids and requests == {"GET": 1, "LIST": 2}, requests
    assert complete.take() == 1  # only _complete's


def test_a_deleted_backup_is_never_listed_past_the_basis(
    many: S3Bucket, complete: _CompleteListings
) -> None:
    reader = _fresh(many)
    before, _ = _listed(reader)
    victim = before[len(before) // 2]
    _fresh(many).delete_backup(victim)
    complete.take()
    after, requests = _listed(reader)
    assert complete.take() == 1 and requests["LIST"] == 2  # a complete listing: 2 pages
    assert victim not in after and after == _complete(many)


def test_a_new_type_from_another_process_is_found(many: S3Bucket) -> None:
    reader = _fresh(many)
    _listed(reader)
    new_id = _fresh(many).create_backup({"a": 1}, "manual")
    ids, _ = _listed(reader)
    assert new_id in ids
    ids, requests = _listed(_fresh(many))
    assert new_id in ids and requests == {"GET": 2, "LIST": 3}  # three types, past the basis


def test_an_old_basis_is_renewed_by_a_complete_listing(
    many: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose clock is days behind writes ids older than the tails look at: seen by
    the next complete listing, at the latest when the basis is an hour old."""
    writer = _fresh(many)
    writer.create_backup({"positions": [6]}, "pre_trade")
    _listed(_fresh(many))  # a basis that includes the writer's announcement
    skewed = datetime.now(timezone.utc) - timedelta(days=3)
    old_id = new_backup_id("pre_trade", f"{skewed.astimezone():%Y%m%d_%H%M%S}")
    repository: Repository = writer.repository
    repository.create_snapshot_as(old_id, skewed, "pre_trade", [DataInput.from_value("s", 1)])
    reader = _fresh(many)
    assert old_id not in _listed(reader)[0]  # the documented bound: up to BASIS_MAX_AGE
    monkeypatch.setattr(catalog_module, "BASIS_MAX_AGE", timedelta(0))
    assert old_id in _listed(reader)[0]


def test_the_token_changes_around_a_delete_and_once_per_process_and_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewals: list[str] = []
    original = catalog_module.renew_snapshots_token

    def renew(store: Store) -> None:
        renewals.append(read_snapshots_token(store) or "")
        original(store)

    for module in (writer_module, repository_module):
        monkeypatch.setattr(module, "renew_snapshots_token", renew)
    manager = BackupManager(BackupConfig(backup_path=str(tmp_path / "repo"), retention_days=0))
    first = manager.create_backup({"a": 1}, "pre_trade")
    assert len(renewals) == 1  # the first pre_trade of this process
    manager.create_backup({"a": 2}, "pre_trade")
    manager.create_backup({"a": 3}, "daily")
    assert len(renewals) == 2  # and the first daily
    store = manager.repository.store
    deleting = store.delete

    def delete(key: str, **kwargs: bool) -> None:
        if key.startswith("snapshots/"):  # while the manifest goes, there is no token
            assert read_snapshots_token(store) is None
        deleting(key, **kwargs)

    monkeypatch.setattr(store, "delete", delete)
    manager.delete_backup(first)
    assert len(renewals) == 3 and renewals[-1] == ""  # a new one after the delete
    assert len({*renewals[1:], read_snapshots_token(store)}) == 3  # each one new
    BackupManager(manager.config).create_backup({"a": 4}, "pre_trade")
    assert len(renewals) == 4  # another process announces its types again


def test_format1_repositories_have_no_token(tmp_path: Path) -> None:
    make_repository(tmp_path / "repo", 1)
    manager = BackupManager(BackupConfig(backup_path=str(tmp_path / "repo"), retention_days=0))
    manager.delete_backup(manager.create_backup({"a": 1}, "daily"), force=True)
    assert not manager.repository.store.exists(SNAPSHOTS_TOKEN_KEY)


def test_without_a_token_every_listing_is_complete(many: S3Bucket) -> None:
    manager = _fresh(many)
    store = manager.repository.store
    saved = store.get(SNAPSHOTS_TOKEN_KEY)
    store.delete(SNAPSHOTS_TOKEN_KEY)
    try:
        ids, requests = _listed(manager)
        assert requests["LIST"] >= 2 and ids == _complete(many)
    finally:
        store.put(SNAPSHOTS_TOKEN_KEY, saved)


def test_a_damaged_index_costs_a_complete_listing_only(many: S3Bucket) -> None:
    manager = _fresh(many)
    store = manager.repository.store
    saved = store.get(INDEX_KEY)
    store.put(INDEX_KEY, b"PTIX\x01" + b"\0" * 40)
    try:
        ids, requests = _listed(manager)
        assert ids == _complete(many) and requests["LIST"] >= 2
    finally:
        store.put(INDEX_KEY, saved)
