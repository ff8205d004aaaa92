"""The writer's half of the garbage-collection protocol, against a collection in progress.

A backup that starts after a collection record was written is not waited for by the pruner
(its lease is newer than the record). While the pruner is still moving that record's chunks,
such a backup can find a listed chunk in ``chunks/``. It must not commit a reference to a chunk
the pruner then deletes: before its commit it brings every listed chunk it uses back into
``chunks/``, or fails (and commits nothing) if the chunk is gone already.

Those two tests are about fossils (one object per chunk): they run on format-1 repositories;
tests/test_packs.py has the format-2 counterparts (a writer past its lease and collected
packs). The others hold in any format and run on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from layout_helpers import make_repository
from stored_chunks import format1_repositories, repo_format

from src.infra.backup import BackupConfig, BackupManager, CorruptDataError, StorageError
from src.infra.backup.format.layout import chunk_key, collection_key, fossil_key
from src.infra.backup.format.manifest import Collection
from src.infra.backup.repository import writer as writer_module
from src.infra.backup.repository.locks import utcnow

DATA = {"portfolio": {"positions": [{"symbol": "BTC", "qty": "0.5"}], "equity": 10_000}}


def _manager(path: Path) -> BackupManager:
    return BackupManager(BackupConfig(backup_path=str(path), retention_days=0))


@pytest.fixture
def format1() -> Iterator[None]:
    """Repositories created by the test are format 1 (fossils: one object per chunk)."""
    with format1_repositories():
        yield


FORMATS = pytest.mark.parametrize("repository_format", [1, 2], ids=["format1", "format2"])


def _pending_collection(path: Path) -> tuple[BackupManager, set[str]]:
    """A repository whose only backup was deleted, with a collection record listing all of its
    chunks while they are all still in ``chunks/`` (the pruner's moves have not happened)."""
    manager = _manager(path)
    first = manager.create_backup(DATA)
    assert repo_format(path) == 1  # fossils: one object per chunk
    repository = manager.repository
    chunks = repository.chunk_ids()
    manager.create_backup({"other": 1})  # the last good backup may not be deleted otherwise
    manager.delete_backup(first)
    chunks -= {ref.id for m in repository.list_snapshots() for e in m.entries for ref in e.chunks}
    record = Collection(time=utcnow(), fossils=sorted(chunks))
    repository.store.put(collection_key("20261204T000000000000Z", 0), msgspec.json.encode(record))
    return _manager(path), chunks


def _move_before_commit(monkeypatch: pytest.MonkeyPatch, move: Any) -> None:
    """Run ``move(store)`` (the pruner's work) after the backup wrote its chunks, just before
    it checks them and commits its manifest."""
    original = writer_module.revalidate

    def revalidate(store: Any, chunk_ids: Any) -> None:
        move(store)
        original(store, chunk_ids)

    monkeypatch.setattr(writer_module, "revalidate", revalidate)


@pytest.mark.usefixtures("format1")
def test_a_chunk_moved_to_fossils_meanwhile_is_back_in_chunks_before_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, listed = _pending_collection(tmp_path)
    moved: list[str] = []

    def pruner_moves(store: Any) -> None:
        for cid in listed:
            store.move(chunk_key(cid), fossil_key(cid))
            moved.append(cid)

    _move_before_commit(monkeypatch, pruner_moves)
    backup_id = manager.create_backup(DATA)
    assert moved  # the move happened between the backup's writes and its commit
    store = manager.repository.store
    for cid in listed:
        assert store.exists(chunk_key(cid)), cid  # brought back: a later delete cannot hit it
        assert not store.exists(fossil_key(cid)), cid
    assert _manager(tmp_path).load_backup(backup_id) == DATA


@pytest.mark.usefixtures("format1")
def test_a_chunk_deleted_meanwhile_fails_the_backup_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, listed = _pending_collection(tmp_path)
    before = {info.backup_id for info in manager.list_backups()}

    def pruner_moves_and_deletes(store: Any) -> None:
        for cid in listed:
            store.move(chunk_key(cid), fossil_key(cid))
            store.delete(fossil_key(cid))

    _move_before_commit(monkeypatch, pruner_moves_and_deletes)
    with pytest.raises(StorageError, match="reclaimed"):
        manager.create_backup(DATA)
    assert {info.backup_id for info in _manager(tmp_path).list_backups()} == before


@FORMATS
def test_without_a_pending_collection_nothing_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repository_format: int
) -> None:
    """The common case costs no extra store call: no chunk is listed, none is revalidated."""
    make_repository(tmp_path, repository_format)
    manager = _manager(tmp_path)
    manager.create_backup(DATA)
    store = manager.repository.store
    calls: list[str] = []
    original_move, original_exists = store.move, store.exists

    def move(source: str, destination: str, **kwargs: Any) -> None:
        calls.append(f"move {source}")
        original_move(source, destination, **kwargs)

    def exists(key: str) -> bool:
        calls.append(f"exists {key}")
        return original_exists(key)

    monkeypatch.setattr(store, "move", move)
    monkeypatch.setattr(store, "exists", exists)
    manager.create_backup(DATA)
    assert not [c for c in calls if "fossils/" in c or c.startswith("move")], calls


@FORMATS
def test_a_collection_record_without_an_offset_is_damage(
    tmp_path: Path, repository_format: int
) -> None:
    """A naive time would fail later as a TypeError (compared with an aware one): it is
    refused when the record is read, naming it."""
    make_repository(tmp_path, repository_format)
    manager = _manager(tmp_path)
    manager.create_backup(DATA)
    key = collection_key("20261204T000000000000Z", 0)
    manager.repository.store.put(key, b'{"time":"2026-12-04T10:00:00","fossils":[]}')
    with pytest.raises(CorruptDataError, match="damaged collection record"):
        manager.prune()
