"""Chunking for small repositories: the head cut, fine chunks for values, and old repositories
keeping their old cuts."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import msgspec

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.format.chunking import NEW_REPOSITORY_CHUNKER, Chunker, ChunkerParams
from src.infra.backup.format.manifest import RepoConfig, decode_checked, encode_checked
from src.infra.backup.format.values import encode_value


def trades(count: int, seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [
        {"id": n, "price": rng.random() * 100, "size": rng.randrange(1, 9)} for n in range(count)
    ]


def chunk_set(chunker: Chunker, data: bytes) -> list[bytes]:
    return [bytes(view) for view in chunker.split(data)]


def test_an_append_changes_only_the_head_and_the_tail() -> None:
    chunker = Chunker(NEW_REPOSITORY_CHUNKER)
    history = trades(40_000)
    before = chunk_set(chunker, encode_value({"trades": history}))
    after = chunk_set(chunker, encode_value({"trades": [*history, *trades(5, seed=8)]}))
    assert len(before[0]) == NEW_REPOSITORY_CHUNKER.head_size
    changed = [i for i, chunk in enumerate(after) if chunk not in set(before)]
    assert changed[0] == 0 and all(i >= len(after) - 2 for i in changed[1:]), changed

    old = Chunker(ChunkerParams())  # a repository from before the head cut
    before_old = chunk_set(old, encode_value({"trades": history}))
    after_old = chunk_set(old, encode_value({"trades": [*history, *trades(5, seed=8)]}))
    assert before_old[0] != after_old[0]  # the count in the first chunk: why the head cut exists
    assert len(before_old[0]) > NEW_REPOSITORY_CHUNKER.head_size


def test_fine_chunks_for_values_not_for_files() -> None:
    chunker = Chunker(NEW_REPOSITORY_CHUNKER)
    data = os.urandom(1024 * 1024)
    values = chunk_set(chunker, data)
    files = list(chunker.split_stream(io.BytesIO(data), len(data)))
    assert b"".join(values) == data == b"".join(files)
    assert len(values) > 4 * len(files)  # ~2 KiB against ~32 KiB on average
    large = os.urandom(NEW_REPOSITORY_CHUNKER.fine_below + 1)
    assert len(chunk_set(chunker, large)) < len(large) // (8 * 1024)  # the normal size again


def test_repository_records_its_chunker_and_old_ones_keep_theirs(tmp_path: Path) -> None:
    new = BackupManager(BackupConfig(backup_path=tmp_path / "new", retention_days=0))
    backup_id = new.create_backup({"history": {"trades": trades(20_000)}})
    assert new.repository.chunker.params == NEW_REPOSITORY_CHUNKER
    manifest = new.repository.read_manifest(backup_id)
    (entry,) = manifest.entries
    assert len(entry.chunks) == 1 and entry.lists  # the head inline, the rest in lists
    assert new.load_backup(backup_id) == {"history": {"trades": trades(20_000)}}

    # An old repository: repo.json without head_size / fine_* cuts as before.
    old_dir = tmp_path / "old"
    BackupManager(BackupConfig(backup_path=old_dir, retention_days=0)).create_backup({"a": 1})
    raw = decode_checked((old_dir / "repo.json").read_bytes(), RepoConfig, "repo.json")
    plain = {k: v for k, v in raw.chunker.items() if k in ChunkerParams().to_json()}
    (old_dir / "repo.json").write_bytes(encode_checked(msgspec.structs.replace(raw, chunker=plain)))
    old = BackupManager(BackupConfig(backup_path=old_dir, retention_days=0))
    assert old.repository.chunker.params == ChunkerParams()
    backup_id = old.create_backup({"history": {"trades": trades(80_000)}})
    (entry,) = old.repository.read_manifest(backup_id).entries
    assert entry.chunks == [] and entry.lists
    assert old.load_backup(backup_id) == {"history": {"trades": trades(80_000)}}
