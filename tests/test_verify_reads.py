"""``verify`` and ``check --read-data`` from S3 (a real SeaweedFS) read packed chunks in
coalesced, parallel ranged reads: far fewer GETs than chunks, with a bounded read-ahead, and
exactly the findings of reading chunk by chunk (the path before, and still a local store's):
damage is named by entry, chunk and pack. Format-1 repositories verify the same way."""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.format.layout import PACK_PREFIX, pack_key
from src.infra.backup.format.manifest import Entry
from src.infra.backup.repository import blob_stream, pack_check
from src.infra.backup.repository.check import check_repository
from src.infra.backup.repository.gc import prune
from src.infra.backup.repository.pack_reader import SPAN_LIMIT
from src.infra.backup.repository.reader import VerifyReport, decode_data_payload
from src.infra.backup.repository.repository import Repository
from src.infra.backup.repository.writer import DataInput
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.memory import MemoryStore
from src.infra.backup.storage.s3 import S3Store
from tests.conftest import S3Bucket, create_bucket
from tools.s3_server import SeaweedS3

MIB = 1024 * 1024
VALUE = {"book": os.urandom(MIB).hex()}  # a data entry of about 64 chunks, in chunk lists


def write_tree(root: Path, large: int = 3) -> dict[str, bytes]:
    """Small files, ``large`` files of 7 MiB of random bytes (a pack each, about) and a log."""
    files: dict[str, bytes] = {}
    for n in range(60):
        files[f"state/d{n % 3}/s{n:03d}.json"] = b'{"n": %d, "pad": "%s"}' % (
            n,
            os.urandom(400 + 53 * n).hex().encode(),
        )
    for n in range(large):
        files[f"parquet/part-{n}.bin"] = os.urandom(7 * MIB)
    files["logs/trades.jsonl"] = b"".join(
        b'{"id": %d, "symbol": "BTC-EUR", "qty": %d}\n' % (n, n * 7 % 13) for n in range(40_000)
    )
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


@dataclass
class Stored:
    """One backup of a value and a tree in a bucket of its own (for tests that only read)."""

    config: BackupConfig
    backup_id: str
    chunks: int  # chunk references of its entries
    packs: int
    stored: int  # bytes of its packs


@pytest.fixture(scope="module")
def stored(s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    bucket = create_bucket(s3_server, f"verify-{uuid.uuid4().hex[:16]}")
    root = tmp_path_factory.mktemp("verify-reads")
    write_tree(root / "src")
    config = bucket.config(sources=["src/"], base_dir=str(root))
    backup_id = BackupManager(config).create_backup(VALUE, include_files=True)
    repository = BackupManager(config).repository
    entries = repository.read_manifest(backup_id).entries
    packs = list(repository.store.list_info(PACK_PREFIX))
    return Stored(
        config,
        backup_id,
        chunks=sum(len(repository.entry_refs(entry)) for entry in entries),
        packs=len(packs),
        stored=sum(info.size for info in packs),
    )


def opened(config: BackupConfig, *, per_chunk: bool = False) -> tuple[RecoveryManager, Store]:
    """A fresh manager (no caches) and its store; ``per_chunk``: told that its reads are cheap,
    the store makes verify read chunk by chunk (the path before, and a local store's)."""
    manager = BackupManager(config)
    store = manager.repository.store
    if per_chunk:
        store.cheap_exists = True
    return RecoveryManager(manager), store


def gets(store: Store) -> int:
    return store.requests().get("GET", 0)


def findings(report: VerifyReport) -> tuple[Any, ...]:
    return report.ok, report.checked_chunks, report.checked_bytes, report.problems


def both_ways(config: BackupConfig, backup_id: str) -> tuple[VerifyReport, int, VerifyReport]:
    """Verify ``backup_id`` coalesced (its report and GETs) and chunk by chunk (its report)."""
    recovery, store = opened(config)
    before = gets(store)
    report = recovery.verify_backup_report(backup_id)
    made = gets(store) - before
    old = opened(config, per_chunk=True)[0].verify_backup_report(backup_id)
    return report, made, old


def test_verify_from_s3_makes_a_get_per_span_not_per_chunk(stored: Stored) -> None:
    assert stored.packs >= 3 and stored.chunks > 700
    recovery, store = opened(stored.config)
    before = gets(store)
    report = recovery.verify_backup_report(stored.backup_id)
    made = gets(store) - before
    assert report.ok, report.problems
    assert report.checked_chunks == stored.chunks
    # Spans of up to 2 MiB, the chunk lists and the pack headers: about one GET per MiB stored
    # (one per chunk was ~750).
    assert made <= stored.stored // MIB + 2 * stored.packs + 10, made
    assert made <= stored.chunks // 10, (made, stored.chunks)

    old_recovery, old_store = opened(stored.config, per_chunk=True)
    before = gets(old_store)
    old = old_recovery.verify_backup_report(stored.backup_id)
    assert gets(old_store) - before >= stored.chunks  # one GET per chunk
    assert findings(old) == findings(report)


def test_check_data_gets_each_data_entry_whole_one_at_a_time(stored: Stored) -> None:
    recovery, store = opened(stored.config)
    seen: dict[str, object] = {}
    running = [0, 0]  # now, most at once
    lock = threading.Lock()

    def check(entry: Entry, content: bytes) -> None:
        with lock:
            running[0] += 1
            running[1] = max(running)
        seen[entry.name] = decode_data_payload("", entry, content)
        with lock:
            running[0] -= 1

    before = gets(store)
    report = recovery.manager.repository.verify_snapshot(stored.backup_id, check_data=check)
    assert report.ok, report.problems
    assert seen == VALUE  # data entries only, each whole
    assert running[1] == 1
    assert gets(store) - before <= stored.chunks // 10  # from the same coalesced reads
    assert recovery.verify_backup(stored.backup_id, decode=True)


def test_the_read_ahead_of_a_verify_is_bounded(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes of spans being read, or read and not all taken, stay within the budget plus
    a few spans, whatever the size of the backup: one the reading threads start while under
    the budget, one per consumer (a consumer has the span it needs read at once, past the
    budget) and one two consumers share (the end of one's entry, the start of the other's)."""
    streams: list[blob_stream.BlobStream] = []

    class Recorded(blob_stream.BlobStream):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            streams.append(self)

    budget = MIB // 2
    monkeypatch.setattr(blob_stream, "BlobStream", Recorded)
    monkeypatch.setattr(blob_stream, "STREAM_BUDGET", budget)
    recovery, _ = opened(stored.config)
    report = recovery.verify_backup_report(stored.backup_id)
    assert report.ok, report.problems
    (stream,) = streams
    bound = budget + (blob_stream.CONSUMERS + 2) * SPAN_LIMIT
    assert 0 < stream.peak_held <= bound, (stream.peak_held, bound)
    assert stored.stored > 2 * bound  # so the bound is no accident of a small backup


def test_entries_are_checked_in_order_and_a_failure_stops_them() -> None:
    """``each_entry``: results in entry order from two consumers; what ``work`` raises is
    raised at its entry, after the results before it, and no later entry is started."""
    repository = Repository.open(MemoryStore())
    inputs = [DataInput(f"v{n}", os.urandom(40_000 + n), "raw") for n in range(12)]
    entries = list(repository.create_snapshot("manual", inputs).entries)
    repository.store.cheap_exists = False
    started: list[int] = []

    def work(stream: blob_stream.BlobStream, index: int) -> tuple[int, int]:
        started.append(index)
        if index == 5:
            raise RuntimeError("entry 5")
        return index, len(b"".join(stream.chunks(index)))

    results = blob_stream.each_entry(repository, entries, work)
    assert [next(results) for _ in range(5)] == [(n, e.size) for n, e in enumerate(entries[:5])]
    with pytest.raises(RuntimeError, match="entry 5"):
        next(results)
    assert max(started) <= 5 + blob_stream.CONSUMERS  # the others stopped


def test_check_read_data_from_s3_reads_packs_in_bounded_parts(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = BackupManager(stored.config).repository
    store = repository.store
    lengths: list[int] = []
    ranged = store.get_range

    def get_range(key: str, start: int, length: int) -> bytes:
        lengths.append(length)
        return ranged(key, start, length)

    checking = [0, 0]  # packs in their check now, most at once
    lock = threading.Lock()
    check_pack = pack_check._check_pack

    def counted(*args: Any) -> Any:
        with lock:
            checking[0] += 1
            checking[1] = max(checking)
        try:
            return check_pack(*args)
        finally:
            with lock:
                checking[0] -= 1

    monkeypatch.setattr(store, "get_range", get_range)
    monkeypatch.setattr(pack_check, "_check_pack", counted)
    before = gets(store)
    report = check_repository(repository)
    made = gets(store) - before
    assert report.clean, report.to_json()
    assert report.chunks_checked == len(_chunk_ids(stored))
    # Every pack read whole, in parts of at most 2 MiB read in parallel; each chunk list once.
    assert max(lengths) <= SPAN_LIMIT
    assert made <= stored.stored // MIB + 3 * stored.packs + 10, made
    assert 1 <= checking[1] <= pack_check.CHECK_THREADS
    # A local-store-like pass (packs read and checked one by one) finds the same.
    monkeypatch.setattr(store, "cheap_exists", True)
    same = check_repository(Repository.open(store, create=False))
    assert same.to_json() == report.to_json()


def _chunk_ids(stored: Stored) -> set[str]:
    repository = BackupManager(stored.config).repository
    entries = repository.read_manifest(stored.backup_id).entries
    ids = {ref.id for entry in entries for ref in repository.entry_refs(entry)}
    return ids | {lref.id for entry in entries for lref in entry.lists}


# -- damage ------------------------------------------------------------------------------------


def _backup(bucket: S3Bucket, root: Path) -> tuple[BackupConfig, str]:
    write_tree(root / "src", large=1)
    config = bucket.config(sources=["src/"], base_dir=str(root))
    return config, BackupManager(config).create_backup(VALUE, include_files=True)


def _rewrite(store: Store, pack: str, change: Any) -> None:
    key = pack_key(pack)
    store.put(key, change(bytearray(store.get(key))))


def test_a_damaged_chunk_inside_a_coalesced_read_names_its_chunk_and_entry(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    config, backup_id = _backup(s3_bucket, tmp_path)
    repository = BackupManager(config).repository
    entries = {e.name: e for e in repository.read_manifest(backup_id).entries}
    refs = repository.entry_refs(entries["src/parquet/part-0.bin"])
    victim = refs[len(refs) // 2].id  # neighbours before and after it: one coalesced read
    where = repository.locate(victim)
    assert where is not None and len(refs) > 100

    def flip(data: bytearray) -> bytes:
        data[where.offset + where.length // 2] ^= 0x01
        return bytes(data)

    _rewrite(repository.store, where.pack, flip)
    report, made, old = both_ways(config, backup_id)
    assert not report.ok
    (problem,) = report.problems
    assert problem.startswith("entry 'src/parquet/part-0.bin': ") and victim in problem
    assert made < len(refs) // 4  # it was read with its neighbours
    assert findings(old) == findings(report)  # the chunks before it counted, as before

    check = BackupManager(config).check()
    assert check.corrupt_chunks == {victim: [backup_id]}
    assert check.damaged_packs == {where.pack: "content does not match its name"}
    assert check.damaged_pack_users == {where.pack: [backup_id]}


def test_a_cut_and_a_missing_pack_are_reported(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    config, backup_id = _backup(s3_bucket, tmp_path)
    repository = BackupManager(config).repository
    store = repository.store
    prune(repository, grace=timedelta(0))  # an index file lists every pack now
    entries = {e.name: e for e in repository.read_manifest(backup_id).entries}
    refs = repository.entry_refs(entries["src/parquet/part-0.bin"])
    victim = refs[len(refs) // 2].id
    where = repository.locate(victim)
    assert where is not None
    key = pack_key(where.pack)
    whole = store.get(key)

    # The pack ends in the middle of a blob that is read with its neighbours.
    store.put(key, whole[: where.offset + where.length // 2])
    report, _, old = both_ways(config, backup_id)
    assert findings(old) == findings(report)
    named = {problem.split("'")[1]: problem for problem in report.problems}
    assert named["src/parquet/part-0.bin"] == (
        f"entry 'src/parquet/part-0.bin': pack {where.pack}: cut short at chunk {victim}"
    )
    check = BackupManager(config).check()
    assert check.damaged_packs == {where.pack: "content does not match its name"}
    assert check.damaged_pack_users == {where.pack: [backup_id]}

    # The pack is gone.
    store.delete(key)
    first = next(r.id for r in refs if getattr(repository.locate(r.id), "pack", "") == where.pack)
    report, _, old = both_ways(config, backup_id)
    assert findings(old) == findings(report)
    named = {problem.split("'")[1]: problem for problem in report.problems}
    assert named["src/parquet/part-0.bin"] == (
        f"entry 'src/parquet/part-0.bin': chunk {first} is missing from the repository"
    )
    check = BackupManager(config).check()
    assert check.damaged_packs == {where.pack: "listed in the pack index, but missing"}
    assert check.damaged_pack_users == {where.pack: [backup_id]}
    assert check.affected_backups == [backup_id]

    store.put(key, whole)  # put back: intact again
    assert BackupManager(config).check().clean
    assert RecoveryManager(BackupManager(config)).verify_backup(backup_id)


def test_a_damaged_chunk_list_is_named_like_before(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    config, backup_id = _backup(s3_bucket, tmp_path)
    repository = BackupManager(config).repository
    entry = next(e for e in repository.read_manifest(backup_id).entries if e.name == "book")
    victim = entry.lists[-1].id
    where = repository.locate(victim)
    assert where is not None

    def flip(data: bytearray) -> bytes:
        data[where.offset + where.length // 2] ^= 0x01
        return bytes(data)

    _rewrite(repository.store, where.pack, flip)
    report, _, old = both_ways(config, backup_id)
    assert findings(old) == findings(report)
    (problem,) = report.problems
    assert problem.startswith("entry 'book': chunk ") and victim in problem
    check = BackupManager(config).check()
    # Named once for its entry and once more where its pack is read, as before.
    assert check.corrupt_chunks[victim] == [backup_id, backup_id]


# -- format 1: one object per chunk ------------------------------------------------------------


def test_a_format1_repository_on_s3_verifies_the_same(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    Repository.open(S3Store(s3_bucket.url, s3_bucket.options), repo_format=1)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(os.urandom(600_000))
    config = s3_bucket.config(sources=["src/"], base_dir=str(tmp_path))
    backup_id = BackupManager(config).create_backup(VALUE, include_files=True)
    repository = BackupManager(config).repository
    assert not repository.packed
    report, _, old = both_ways(config, backup_id)
    assert report.ok and findings(old) == findings(report)

    refs = repository.entry_refs(repository.read_manifest(backup_id).entries[-1])
    victim = refs[len(refs) // 2].id
    repository.store.put(f"chunks/{victim[:2]}/{victim}", b"not a chunk")
    report, _, old = both_ways(config, backup_id)
    assert findings(old) == findings(report)
    (problem,) = report.problems
    assert "src/a.bin" in problem and victim in problem
