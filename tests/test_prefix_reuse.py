"""A data entry that shares a prefix with the parent backup's entry is not cut again: its
chunks up to the first difference are found by hashing at the parent's boundaries. The chunks
must be exactly those a full cut gives (content-defined cuts restart at each boundary)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.format.chunking import Chunker
from src.infra.backup.format.values import encode_value


def _trades(n: int, seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [{"id": i, "price": rng.random() * 100, "side": rng.choice("BS")} for i in range(n)]


def _entry_chunk_ids(manager: BackupManager, backup_id: str, name: str) -> list[str]:
    repository = manager.repository
    manifest = repository.read_manifest(backup_id)
    entry = next(e for e in manifest.entries if e.name == name)
    return [ref.id for ref in repository.entry_refs(entry)]


def _changes() -> dict[str, tuple[object, object]]:
    base = _trades(30_000)
    modified = [dict(t) for t in base]
    modified[20_000]["price"] = -1.0
    return {
        "append": (base, [*base, *_trades(5, seed=8)]),
        "change in the middle": (base, modified),
        "change at the start": (base, [{"id": -1}, *base[1:]]),
        "shorter": (base, base[:25_000]),
        "same": (base, list(base)),
    }


@pytest.mark.parametrize("change", list(_changes()))
def test_chunks_equal_a_full_cut(tmp_path: Path, change: str) -> None:
    old, new = _changes()[change]
    manager = BackupManager(BackupConfig(backup_path=str(tmp_path / "a"), retention_days=0))
    manager.create_backup({"history": old})
    second = manager.create_backup({"history": new})
    fresh = BackupManager(BackupConfig(backup_path=str(tmp_path / "b"), retention_days=0))
    alone = fresh.create_backup({"history": new})
    assert _entry_chunk_ids(manager, second, "history") == _entry_chunk_ids(fresh, alone, "history")
    assert BackupManager(manager.config).load_backup(second) == {"history": new}


def test_an_append_hashes_the_shared_prefix_instead_of_cutting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = _changes()["append"]
    manager = BackupManager(BackupConfig(backup_path=str(tmp_path / "a"), retention_days=0))
    manager.create_backup({"history": old})
    cut: list[int] = []
    split_from = Chunker.split_from

    def counting(self: Chunker, data: bytes | memoryview, start: int):  # type: ignore[no-untyped-def]
        cut.append(len(data) - start)
        return split_from(self, data, start)

    monkeypatch.setattr(Chunker, "split_from", counting)
    manager.create_backup({"history": new})
    size = len(encode_value(new))
    assert len(cut) == 1 and cut[0] < size // 10  # only the tail was cut again
