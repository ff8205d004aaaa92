"""The collection records' state (``gc-state.json``, format 2) and the request budget of a backup.

A backup of a format-2 repository reads the state (one small GET) instead of listing the
collection records, and trusts that the last backup its process committed still has all its
chunks instead of asking whether its manifest still exists, only while the state is closed and
the same as when it last looked. A prune opens a new state before it writes or deletes any
record and closes it when it ends; a prune that died leaves it open, and backups then look
every time. These tests prove both halves: the saving, and that a prune between two backups of
one process (even one that deletes that process's last backup and its chunks) is seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from layout_helpers import make_repository

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.format.layout import GC_STATE_KEY, SNAPSHOT_PREFIX
from src.infra.backup.format.manifest import GcState
from src.infra.backup.repository import writer as writer_module
from src.infra.backup.repository.gc import open_gc_state, read_gc_state
from src.infra.backup.repository.migrate import migrate_repository
from src.infra.backup.repository.replication import open_replica
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.requests import measure
from tests.conftest import S3Bucket

POSITIONS = {"positions": [{"symbol": "BTC", "qty": "0.5"}], "equity": 10_000}


def _manager(path: Path) -> BackupManager:
    return BackupManager(BackupConfig(backup_path=str(path), retention_days=0))


class _Looks:
    """What backups asked beyond the state: listings of the records, and whether a
    manifest still exists."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listings = 0
        self.manifest_stats = 0
        original = writer_module.collected_chunks

        def listing(*args: Any) -> Any:
            self.listings += 1
            return original(*args)

        monkeypatch.setattr(writer_module, "collected_chunks", listing)
        stat = LocalStore.stat

        def counted_stat(store: LocalStore, key: str) -> Any:
            if key.startswith(SNAPSHOT_PREFIX):
                self.manifest_stats += 1
            return stat(store, key)

        monkeypatch.setattr(LocalStore, "stat", counted_stat)

    def take(self) -> tuple[int, int]:
        taken = (self.listings, self.manifest_stats)
        self.listings = self.manifest_stats = 0
        return taken


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Looks]:
    yield _Looks(monkeypatch)


def test_a_new_repository_starts_with_a_closed_state(tmp_path: Path) -> None:
    _manager(tmp_path / "repo").create_backup(POSITIONS)
    state = read_gc_state(LocalStore(tmp_path / "repo"))
    assert state is not None and not state.open


def test_backups_look_once_per_process_while_no_prune_runs(tmp_path: Path, looks: _Looks) -> None:
    manager = _manager(tmp_path / "repo")
    manager.create_backup(POSITIONS)
    assert looks.take()[0] == 1  # the first backup of a process lists the records
    for equity in range(3):
        manager.create_backup({**POSITIONS, "equity": equity})
        assert looks.take() == (0, 0)
    other = _manager(tmp_path / "repo")  # another process: it looks once for itself
    other.create_backup(POSITIONS)
    assert looks.take()[0] == 1


def test_a_prune_makes_the_next_backup_look_again(tmp_path: Path, looks: _Looks) -> None:
    manager = _manager(tmp_path / "repo")
    manager.create_backup(POSITIONS)
    manager.create_backup({**POSITIONS, "equity": 1})
    before = read_gc_state(manager.repository.store)
    _manager(tmp_path / "repo").prune(grace=timedelta(0))
    after = read_gc_state(manager.repository.store)
    assert after is not None and not after.open and after != before
    looks.take()
    manager.create_backup({**POSITIONS, "equity": 2})
    assert looks.take() == (1, 1)  # lists the records, asks if its last backup is there
    manager.create_backup({**POSITIONS, "equity": 3})
    assert looks.take() == (0, 0)


def test_a_parent_deleted_and_collected_meanwhile_is_never_trusted(tmp_path: Path) -> None:
    """The case the state exists for: the process's last backup is deleted by another
    process and its chunks are reclaimed at once. The next backup of the same data must
    store those chunks again, not refer to the deleted ones."""
    path = tmp_path / "repo"
    bot = _manager(path)
    state = {"trades": [{"id": n, "price": n * 1.5} for n in range(20_000)]}
    bot.create_backup({"other": 1}, "daily")  # the last good backup is never deleted
    doomed = bot.create_backup(state, "pre_trade")
    admin = _manager(path)
    admin.delete_backup(doomed)
    admin.prune(grace=timedelta(0))
    admin.prune(grace=timedelta(0))  # collected and deleted: nothing of it is left
    assert len(admin.repository.chunk_ids()) < 5
    again = bot.create_backup(state, "pre_trade")
    assert _manager(path).load_backup(again) == state
    report = _manager(path).check(read_data=True)
    assert report.clean, report.to_json()


def test_a_prune_that_died_leaves_the_state_open(tmp_path: Path, looks: _Looks) -> None:
    manager = _manager(tmp_path / "repo")
    manager.create_backup(POSITIONS)
    open_gc_state(manager.repository.store)  # what a prune killed mid-way leaves
    looks.take()
    for equity in range(3):
        manager.create_backup({**POSITIONS, "equity": equity})
        assert looks.take()[0] == 1  # an open state is never trusted
    _manager(tmp_path / "repo").prune()  # the next prune closes it
    manager.create_backup({**POSITIONS, "equity": 10})
    manager.create_backup({**POSITIONS, "equity": 11})
    assert looks.take()[0] == 1


def test_a_damaged_state_is_ignored_loudly_and_the_next_prune_rewrites_it(
    tmp_path: Path, looks: _Looks, caplog: pytest.LogCaptureFixture
) -> None:
    manager = _manager(tmp_path / "repo")
    manager.create_backup(POSITIONS)
    store = manager.repository.store
    store.put(GC_STATE_KEY, b"{not json")
    looks.take()
    with caplog.at_level(logging.WARNING):
        for equity in range(2):
            manager.create_backup({**POSITIONS, "equity": equity})
    assert looks.take()[0] == 2
    assert any(GC_STATE_KEY in r.getMessage() for r in caplog.records)
    _manager(tmp_path / "repo").prune()
    state = msgspec.json.decode(store.get(GC_STATE_KEY), type=GcState)
    assert not state.open


def test_format1_repositories_keep_looking_every_time(tmp_path: Path, looks: _Looks) -> None:
    """Versions before 0.3 may prune a format-1 repository and write no state."""
    make_repository(tmp_path / "repo", 1)
    manager = _manager(tmp_path / "repo")
    for equity in range(3):
        manager.create_backup({**POSITIONS, "equity": equity})
    listings, stats = looks.take()
    assert listings == 3 and stats == 2
    assert not manager.repository.store.exists(GC_STATE_KEY)


def test_migrate_and_a_new_replica_write_a_closed_state(tmp_path: Path) -> None:
    repository = make_repository(tmp_path / "old", 1)
    _manager(tmp_path / "old").create_backup(POSITIONS)
    migrate_repository(repository)
    state = read_gc_state(repository.store)
    assert state is not None and not state.open
    migrated = _manager(tmp_path / "old").repository
    replica = open_replica(migrated, LocalStore(tmp_path / "replica"), create=True)
    state = read_gc_state(replica.store)
    assert state is not None and not state.open


def test_a_backup_on_s3_makes_at_most_four_requests(s3_bucket: S3Bucket) -> None:
    """Issue 16's budget: the lease (PUT), the state (GET), one pack (PUT) and the manifest
    (PUT); no LIST, no HEAD, and nothing for the run history."""
    manager = BackupManager(s3_bucket.config())
    trades: list[dict[str, object]] = []
    for n in range(3):
        trades.append({"id": n, "price": 100 + n})
        manager.create_backup({"trades": trades}, "pre_trade")
    for n in range(3, 8):
        trades.append({"id": n, "price": 100 + n})
        with measure() as seen:
            backup_id = manager.create_backup({"trades": trades}, "pre_trade")
        assert seen.snapshot() == {"PUT": 3, "GET": 1}, seen.snapshot()
        run = manager.repository.read_manifest(backup_id).run
        assert run is not None and run.requests == {"GET": 1, "PUT": 3}
    with measure() as seen:  # nothing new to store: no pack
        manager.create_backup({"trades": trades}, "pre_trade")
    assert seen.snapshot() == {"PUT": 2, "GET": 1}, seen.snapshot()
