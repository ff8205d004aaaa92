"""Large entries are fetched and decoded by threads: order, fossils and damage as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from layout_helpers import write_stored
from stored_chunks import damage_chunk, format1_repositories, is_packed, read_stored

from src.infra.backup import BackupConfig, BackupManager, IntegrityError
from src.infra.backup.format.layout import chunk_key, fossil_key
from src.infra.backup.repository import reader


def _big(tmp_path: Path) -> tuple[BackupManager, str, dict[str, str]]:
    manager = BackupManager(BackupConfig(backup_path=str(tmp_path / "repo"), retention_days=0))
    data = {"blob": os.urandom(3 * 1024 * 1024).hex()}  # about 100 chunks
    backup_id = manager.create_backup(data)
    return manager, backup_id, data


def _refs(manager: BackupManager, backup_id: str) -> list[str]:
    repository = manager.repository
    entry = repository.read_manifest(backup_id).entries[0]
    refs = repository.entry_refs(entry)
    assert len(refs) >= reader.PARALLEL_DECODE_MIN  # the threaded path is the one tested
    return [ref.id for ref in refs]


def test_a_large_entry_loads_in_order(tmp_path: Path) -> None:
    manager, backup_id, data = _big(tmp_path)
    _refs(manager, backup_id)
    assert is_packed(tmp_path / "repo")  # the default format: the chunks are in packs
    assert BackupManager(manager.config).load_backup(backup_id) == data


def test_a_large_entry_loads_in_order_also_with_a_chunk_in_fossils(tmp_path: Path) -> None:
    with format1_repositories():  # fossils/ (one object per chunk) is format 1's
        manager, backup_id, data = _big(tmp_path)
    ids = _refs(manager, backup_id)
    store = manager.repository.store
    store.move(chunk_key(ids[len(ids) // 2]), fossil_key(ids[len(ids) // 2]))
    assert BackupManager(manager.config).load_backup(backup_id) == data


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_a_damaged_chunk_of_a_large_entry_is_an_integrity_error(
    tmp_path: Path, damage: str
) -> None:
    manager, backup_id, _data = _big(tmp_path)
    ids = _refs(manager, backup_id)
    repo = tmp_path / "repo"
    assert is_packed(repo)  # the default format: the chunks are in packs
    if damage == "missing":
        damage_chunk(repo, ids[-3], "missing")
    else:  # the blob's last byte, where it is stored
        raw = bytearray(read_stored(repo, ids[-3]))
        raw[-1] ^= 0xFF
        write_stored(repo, ids[-3], bytes(raw))
    with pytest.raises(IntegrityError):
        BackupManager(manager.config).load_backup(backup_id)
