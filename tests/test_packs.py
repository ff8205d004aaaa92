"""Packs (repository format 2): the pack and index formats, writing, ranged reads, ``check``,
and garbage collection (collect whole, repack, the two phases, a writer past its lease).

Format-1 behaviour (one object per chunk, fossils) is tested in test_gc.py on format-1
repositories; the frozen fixtures in tests/data keep the old layout readable.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.errors import CorruptDataError, IntegrityError, StorageError
from src.infra.backup.format.crypto import create_encryption
from src.infra.backup.format.layout import PACK_INDEX_PREFIX, PACK_PREFIX, pack_key
from src.infra.backup.format.packs import (
    PACK_SIZE,
    TRAILER_SIZE,
    PackEntry,
    build_pack,
    decode_index,
    decode_pack_header,
    encode_index,
    header_span,
)
from src.infra.backup.repository.gc import prune
from src.infra.backup.repository.locks import BACKUP_LEASE_KIND, Lease
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.testing.faulty import FaultyStore

ZERO = timedelta(0)


def _manager(repo: Path, **extra: Any) -> BackupManager:
    return BackupManager(BackupConfig(backup_path=str(repo), retention_days=0, **extra))


def _files(root: Path, prefix: str) -> dict[str, Path]:
    base = root / prefix
    if not base.exists():
        return {}
    return {p.name: p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _state(n: int) -> dict[str, Any]:
    return {"history": [{"id": i, "px": i * 0.5, "tag": f"s{n}"} for i in range(3000 + n * 400)]}


# -- the formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True])
def test_pack_and_index_round_trip(encrypted: bool) -> None:
    keys = create_encryption("pw", aead="aes-256-gcm", cache_key="t")[1] if encrypted else None
    blobs = [(f"{n:064x}", _noise(1000 + n, n), 2000 + n) for n in range(5)]
    pack_id, data, table = build_pack(blobs, keys)
    offset, length = header_span(data[-TRAILER_SIZE:], len(data), "p")
    assert offset == sum(len(b) for _, b, _ in blobs)
    assert decode_pack_header(data[offset : offset + length], offset, keys, "p") == table
    for (cid, blob, size), entry in zip(blobs, table, strict=True):
        assert (entry.id, entry.size) == (cid, size)
        assert data[entry.offset : entry.offset + entry.length] == blob
    index_id, stored = encode_index([PackEntry(pack_id, table)], keys)
    assert decode_index(stored, index_id, keys, "i") == [PackEntry(pack_id, table)]
    with pytest.raises(CorruptDataError, match="does not match its name"):
        decode_index(stored[:-1] + bytes([stored[-1] ^ 1]), index_id, keys, "i")
    if encrypted:
        plain_id, plain = encode_index([PackEntry(pack_id, table)], None)
        with pytest.raises(CorruptDataError, match="not encrypted"):
            decode_index(plain, plain_id, keys, "i")


def test_damaged_pack_trailers_and_headers_are_refused() -> None:
    _, data, _ = build_pack([("a" * 64, b"x" * 100, 100)], None)
    with pytest.raises(CorruptDataError, match="bad trailer"):
        header_span(data[-TRAILER_SIZE:-8] + b"XXXX" + data[-4:], len(data), "p")
    with pytest.raises(CorruptDataError, match="too short"):
        header_span(data[-3:], 3, "p")
    lying = (len(data)).to_bytes(4, "little") + data[-8:]
    with pytest.raises(CorruptDataError, match="impossible header length"):
        header_span(lying, len(data), "p")
    offset, length = header_span(data[-TRAILER_SIZE:], len(data), "p")
    with pytest.raises(CorruptDataError, match="outside the pack"):
        decode_pack_header(data[offset : offset + length], 50, None, "p")  # blob past the data


# -- writing and reading ----------------------------------------------------------------------


def test_a_new_repository_writes_packs_of_at_least_the_pack_size(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    big = _noise(3 * PACK_SIZE + 12345, 1)
    (source / "big.bin").write_bytes(big)
    manager = _manager(tmp_path / "repo", sources=["src/"], base_dir=str(tmp_path))
    backup_id = manager.create_backup({"state": _state(1)})
    repo = tmp_path / "repo"
    assert not _files(repo, "chunks")  # no object per chunk
    packs = _files(repo, PACK_PREFIX)
    sizes = sorted(p.stat().st_size for p in packs.values())
    assert len(packs) == 4 and all(size >= PACK_SIZE for size in sizes[1:]), sizes
    assert not _files(repo, PACK_INDEX_PREFIX)  # writers write packs only (prune indexes them)
    restored = tmp_path / "restored"
    RecoveryManager(_manager(repo)).restore_to_directory(backup_id, restored, verify=True)
    assert (restored / "src" / "big.bin").read_bytes() == big
    assert _manager(repo).load_backup(backup_id) == {"state": _state(1)}
    assert _manager(repo).check().clean


def test_a_chunk_is_read_with_a_ranged_get(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    backup_id = _manager(repo).create_backup({"a": _state(1), "b": 7})
    store = FaultyStore(LocalStore(repo))
    repository = Repository.open(store, create=False)
    manifest = repository.read_manifest(backup_id)
    repository.pack_index.ensure_loaded()
    store.reset()
    entry = next(e for e in manifest.entries if e.name == "b")
    repository.read_entry(entry)
    assert store.calls["get_range"] == len(entry.chunks) == 1
    assert store.calls["get"] == 0


def test_many_small_backups_share_few_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    manager = _manager(repo)
    for n in range(10):
        manager.create_backup(_state(n), "pre_trade")
    packs, indexes = _files(repo, PACK_PREFIX), _files(repo, PACK_INDEX_PREFIX)
    assert len(packs) == 10 and not indexes  # one small pack each, described by its header
    report = prune(_manager(repo).repository, grace=ZERO)
    assert report.packs_repacked >= 8  # the small packs were merged
    assert len(_files(repo, PACK_PREFIX)) == 1 and len(_files(repo, PACK_INDEX_PREFIX)) == 1
    fresh = _manager(repo)
    assert [fresh.load_backup(i.backup_id) for i in reversed(fresh.list_backups())] == [
        _state(n) for n in range(10)
    ]
    assert fresh.check().clean


# -- garbage collection -----------------------------------------------------------------------


def _two_backups_one_deleted(repo: Path, tmp_path: Path) -> tuple[BackupManager, str, str]:
    """A file tree backed up twice (the second time half of it replaced), the first deleted."""
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    for n in range(4):
        (source / f"f{n}.bin").write_bytes(_noise(PACK_SIZE // 2, n))
    manager = _manager(repo, sources=["src/"], base_dir=str(tmp_path))
    first = manager.create_backup({"n": 1})
    for n in range(2):
        (source / f"f{n}.bin").write_bytes(_noise(PACK_SIZE // 2, 100 + n))
    second = manager.create_backup({"n": 2})
    manager.delete_backup(first, force=True)
    return manager, first, second


def test_prune_deletes_dead_packs_and_repacks_partly_dead_ones(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _, _, second = _two_backups_one_deleted(repo, tmp_path)
    before = {name: path.stat().st_size for name, path in _files(repo, PACK_PREFIX).items()}
    report = prune(_manager(repo).repository, grace=ZERO)
    assert report.packs_collected and report.packs_deleted, report
    after = {name: path.stat().st_size for name, path in _files(repo, PACK_PREFIX).items()}
    assert set(after) != set(before)
    assert sum(after.values()) < sum(before.values())
    fresh = _manager(repo)
    assert fresh.load_backup(second) == {"n": 2}
    assert RecoveryManager(fresh).verify_backup(second)
    assert fresh.check().clean
    assert not list((repo / "gc").glob("*.json"))  # the records are done with
    assert len(_files(repo, PACK_INDEX_PREFIX)) == 1


def test_a_backup_lease_from_before_the_record_keeps_collected_packs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _, _, second = _two_backups_one_deleted(repo, tmp_path)
    before = set(_files(repo, PACK_PREFIX))
    lease = Lease(LocalStore(repo), BACKUP_LEASE_KIND, timedelta(minutes=10)).acquire()
    try:
        report = prune(_manager(repo).repository, grace=ZERO)
    finally:
        lease.release()
    assert report.packs_collected and not report.packs_deleted
    assert report.postponed
    assert before <= set(_files(repo, PACK_PREFIX))  # nothing deleted yet
    assert _manager(repo).load_backup(second) == {"n": 2}
    report = prune(_manager(repo).repository, grace=ZERO)  # the backup has finished
    assert report.packs_deleted
    assert _manager(repo).check().clean


def test_a_chunk_used_again_after_collection_keeps_its_pack(tmp_path: Path) -> None:
    """A backup that started before the collection re-used a chunk the collection found
    dead (its parent was deleted meanwhile): phase 2 sees the new reference and keeps it."""
    repo = tmp_path / "repo"
    manager = _manager(repo)
    first = manager.create_backup({"only": _noise(200_000, 5)})
    manager.delete_backup(first, force=True)
    lease = Lease(LocalStore(repo), BACKUP_LEASE_KIND, timedelta(minutes=10)).acquire()
    try:
        report = prune(_manager(repo).repository, grace=ZERO)
        assert report.packs_collected == 1 and not report.packs_deleted
        # The same content committed while the record is pending (written again: the
        # chunks are "dead" in the record, so the writer does not take them as stored).
        again = _manager(repo).create_backup({"only": _noise(200_000, 5)})
    finally:
        lease.release()
    prune(_manager(repo).repository, grace=ZERO)
    assert _manager(repo).load_backup(again) == {"only": _noise(200_000, 5)}
    assert _manager(repo).check().clean


def test_a_writer_past_its_lease_copies_chunks_out_of_collected_packs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    manager = _manager(repo)
    first = manager.create_backup({"big": _noise(300_000, 9)})
    repository = _manager(repo).repository
    refs = [ref.id for e in repository.read_manifest(first).entries for ref in e.chunks]
    manager.delete_backup(first, force=True)
    lease = Lease(LocalStore(repo), BACKUP_LEASE_KIND, timedelta(minutes=10)).acquire()
    try:
        prune(_manager(repo).repository, grace=ZERO)  # collected, not deleted
    finally:
        lease.release()
    collected = repository.collected_chunks()
    packs = collected.packs
    assert packs and all(cid in collected for cid in refs)
    repository.revalidate(refs, packs)  # as a backup past its lease does before committing
    for pack_id in packs:  # what phase 2 will do once that backup has committed
        LocalStore(repo).delete(pack_key(pack_id))
    fresh = _manager(repo).repository
    for cid in refs:
        assert any(loc.pack not in packs for loc in fresh.pack_index.locations(cid) or [])
        assert fresh.chunk_present(cid)
        assert fresh.read_blob(cid)


def test_a_chunk_gone_for_good_fails_the_revalidation(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    manager = _manager(repo)
    first = manager.create_backup({"big": _noise(300_000, 9)})
    repository = _manager(repo).repository
    refs = [ref.id for e in repository.read_manifest(first).entries for ref in e.chunks]
    manager.delete_backup(first, force=True)
    prune(_manager(repo).repository, grace=ZERO)
    with pytest.raises(StorageError, match="reclaimed"):
        repository.revalidate(refs, frozenset())


# -- check ------------------------------------------------------------------------------------


def test_check_reports_a_damaged_pack_with_the_backups_it_affects(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    manager = _manager(repo)
    backup_id = manager.create_backup({"a": _noise(100_000, 3)})
    (pack_path,) = _files(repo, PACK_PREFIX).values()
    data = bytearray(pack_path.read_bytes())
    data[len(data) // 3] ^= 0x40
    os.chmod(pack_path, 0o600)
    pack_path.write_bytes(bytes(data))
    report = _manager(repo).check()
    assert not report.clean
    assert pack_path.name in report.damaged_packs
    assert report.affected_backups == [backup_id]
    assert report.to_json()["damaged_packs"][pack_path.name]["backups"] == [backup_id]


def test_an_index_entry_of_a_repacked_pack_is_stale_not_damage(tmp_path: Path) -> None:
    """A prune that dies between deleting repacked packs and rewriting the index leaves an
    index file listing a deleted pack whose live chunks are in the new pack: check calls it a
    stale entry, not damage (found by the soak, where kills land there)."""
    repo = tmp_path / "repo"
    manager = _manager(repo)
    doomed = manager.create_backup({"a": _noise(100_000, 5), "b": _noise(100_000, 6)})
    kept = manager.create_backup({"a": _noise(100_000, 5)})
    prune(_manager(repo).repository, grace=ZERO)  # an index file lists the one pack
    (old_index,) = _files(repo, PACK_INDEX_PREFIX).values()
    saved, (old_pack,) = old_index.read_bytes(), _files(repo, PACK_PREFIX)
    _manager(repo).delete_backup(doomed)
    report = prune(_manager(repo).repository, grace=ZERO)
    assert report.packs_repacked == 1 and old_pack not in _files(repo, PACK_PREFIX)
    old_index.write_bytes(saved)  # as if the index had not been rewritten yet
    check = _manager(repo).check()
    assert check.clean and check.stale_index_entries == 1, check.to_json()
    assert _manager(repo).load_backup(kept) == {"a": _noise(100_000, 5)}


def test_check_reports_a_missing_pack(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    manager = _manager(repo)
    first = manager.create_backup({"a": _noise(100_000, 3)})
    manager.create_backup({"b": _noise(100_000, 4)})
    prune(_manager(repo).repository, grace=ZERO)  # an index file now lists both packs
    store = LocalStore(repo)
    repository = _manager(repo).repository
    repository.pack_index.refresh()
    pack_of_first = repository.pack_index.locate(
        repository.read_manifest(first).entries[0].chunks[0].id
    )
    assert pack_of_first is not None
    store.delete(pack_key(pack_of_first.pack))
    report = _manager(repo).check()
    assert report.damaged_packs[pack_of_first.pack].startswith("listed in the pack index")
    assert report.affected_backups == [first]


def test_a_damaged_index_file_is_reported_and_the_pack_headers_stand_in(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    manager = _manager(repo)
    backup_id = manager.create_backup({"a": _noise(100_000, 3)})
    prune(_manager(repo).repository, grace=ZERO)  # writes the index file
    (index_path,) = _files(repo, PACK_INDEX_PREFIX).values()
    os.chmod(index_path, 0o600)
    index_path.write_bytes(index_path.read_bytes()[:-3])
    report = _manager(repo).check()
    assert f"{PACK_INDEX_PREFIX}{index_path.name}" in report.damaged_packs
    assert not report.missing_chunks and not report.affected_backups
    assert _manager(repo).load_backup(backup_id) == {"a": _noise(100_000, 3)}
    prune(_manager(repo).repository, grace=ZERO)  # writes it again, whole
    assert _manager(repo).check().clean


def test_a_pack_with_a_damaged_header_that_no_index_lists(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    backup_id = _manager(repo).create_backup({"a": _noise(100_000, 3)})
    (pack_path,) = _files(repo, PACK_PREFIX).values()
    os.chmod(pack_path, 0o600)
    data = bytearray(pack_path.read_bytes())
    data[-TRAILER_SIZE - 5] ^= 0xFF  # inside the header
    pack_path.write_bytes(bytes(data))
    report = _manager(repo).check()
    assert pack_path.name in report.damaged_packs
    assert backup_id in report.affected_backups
    with pytest.raises(IntegrityError, match="missing"):  # references unknown: no prune
        prune(_manager(repo).repository, grace=ZERO)
    assert pack_path.exists()
