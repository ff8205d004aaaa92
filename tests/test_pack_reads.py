"""Coalesced reads of packed blobs (``repository/pack_reader.py``): a restore from S3 (a real
SeaweedFS) reads many blobs per ranged request, the bytes come back exact, and damage inside
a coalesced read still fails with an integrity error naming the chunk. The span planner and
the multi-consumer stream are also tested on their own (no server)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from src.infra.backup import BackupManager, IntegrityError, RecoveryManager
from src.infra.backup.files.tree_restore import restore_tree
from src.infra.backup.format.layout import pack_key
from src.infra.backup.format.manifest import Entry
from src.infra.backup.repository.blob_stream import BlobStream
from src.infra.backup.repository.pack_index import Location
from src.infra.backup.repository.pack_reader import SpanPlanner, coalesced_blobs
from src.infra.backup.repository.repository import Repository
from src.infra.backup.repository.snapshot_writer import DataInput
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.memory import MemoryStore
from src.infra.backup.storage.s3 import S3Store
from src.infra.backup.storage.testing.delegating import DelegatingStore
from tests.conftest import S3Bucket

KIB = 1024
Range = tuple[str, int, int]


class CountingStore(DelegatingStore):
    """Delegates to ``inner`` (its parallel calls stay parallel); counts ranged reads and
    whole reads, and records the key of every object written."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.ranged = 0
        self.bytes_read = 0  # by get_range
        self.gets = 0
        self.put_keys: list[str] = []
        self._lock = threading.Lock()

    def _count(
        self, ranges: Iterable[tuple[str, int, int] | None]
    ) -> Iterator[tuple[str, int, int] | None]:
        for item in ranges:
            if item is not None:
                with self._lock:
                    self.ranged += 1
            yield item

    def get(self, key: str) -> bytes:
        self.gets += 1
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self.inner.get_range(key, start, length)
        with self._lock:
            self.ranged += 1
            self.bytes_read += len(data)
        return data

    def get_many(self, keys: Iterable[str]) -> Iterator[bytes | None]:
        def counted() -> Iterator[str]:
            for key in keys:
                self.gets += 1
                yield key

        return self.inner.get_many(counted())

    def get_range_many(
        self, ranges: Iterable[tuple[str, int, int] | None]
    ) -> Iterator[bytes | None]:
        return self.inner.get_range_many(self._count(ranges))

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        self.inner.put(key, data, exclusive=exclusive, durable=durable)
        self.put_keys.append(key)

    def put_versioned(self, key: str, data: bytes, *, exclusive: bool = False) -> str:
        version = self.inner.put_versioned(key, data, exclusive=exclusive)
        self.put_keys.append(key)
        return version

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        batch = list(items)
        self.inner.put_many(batch)
        self.put_keys.extend(key for key, _ in batch)


def counted_s3(bucket: S3Bucket) -> tuple[Repository, CountingStore]:
    """The repository in ``bucket``, opened afresh (no caches) on a counting store."""
    counting = CountingStore(S3Store(bucket.url, bucket.options))
    return Repository.open(counting, create=False), counting


def write_files(root: Path) -> dict[str, bytes]:
    """Small files in a few directories and two larger ones (random and compressible)."""
    files: dict[str, bytes] = {}
    for n in range(120):
        files[f"state/d{n % 3}/s{n:03d}.json"] = (
            (b'{"n": %d, "pad": "' % n) + os.urandom(512 + 97 * n).hex().encode() + b'"}'
        )
    files["parquet/part-0.bin"] = os.urandom(3_000_000)
    files["logs/trades.jsonl"] = b"".join(
        b'{"id": %d, "symbol": "BTC-EUR", "qty": %d}\n' % (n, n * 7 % 13) for n in range(40_000)
    )
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_tree_restore_from_s3_reads_many_blobs_per_request(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    files = write_files(tmp_path / "src")
    config = s3_bucket.config(sources=["src/"], base_dir=str(tmp_path))
    backup_id = BackupManager(config).create_backup(None, include_files=True)

    repository, _ = counted_s3(s3_bucket)
    entries = repository.read_manifest(backup_id).entries
    chunks = sum(len(repository.entry_refs(e)) for e in entries if e.kind == "file")
    lists = sum(len(e.lists) for e in entries)
    assert chunks > 200

    fresh, counting = counted_s3(s3_bucket)
    outcome = restore_tree(fresh, entries, tmp_path / "out", verify=True)
    assert outcome.verified
    assert read_tree(tmp_path / "out" / "src") == files  # exact, byte for byte
    # Every chunk and chunk list was read, but in a few coalesced requests (index files and
    # pack headers aside, which the pack index reads).
    assert 0 < counting.ranged <= (chunks + lists) // 10, (counting.ranged, chunks)

    # The public path gives the same bytes.
    RecoveryManager(BackupManager(config)).restore_to_directory(backup_id, tmp_path / "again")
    assert read_tree(tmp_path / "again" / "src") == files


def test_loading_a_large_value_from_s3_reads_many_chunks_per_request(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    value = {"blob": os.urandom(3 * 1024 * 1024).hex()}  # about 100 chunks
    backup_id = BackupManager(s3_bucket.config()).create_backup(value)
    repository, counting = counted_s3(s3_bucket)
    manifest = repository.read_manifest(backup_id)
    (entry,) = manifest.entries
    before = counting.ranged
    assert repository.read_value(manifest, entry) == value["blob"]
    chunks = len(repository.entry_refs(entry))
    assert chunks >= 64
    assert counting.ranged - before <= chunks // 8, (counting.ranged - before, chunks)


def _flip(store: Store, location: Location) -> None:
    """Flip one bit in the middle of the stored blob at ``location``, inside its pack."""
    key = pack_key(location.pack)
    data = bytearray(store.get(key))
    data[location.offset + location.length // 2] ^= 0x01
    store.put(key, bytes(data))


def test_a_damaged_blob_inside_a_coalesced_read_names_its_chunk(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(os.urandom(1_000_000))
    config = s3_bucket.config(sources=["src/"], base_dir=str(tmp_path))
    manager = BackupManager(config)
    value_id = manager.create_backup({"blob": os.urandom(2 * 1024 * 1024).hex()})
    files_id = manager.create_backup(None, include_files=True)
    repository, _ = counted_s3(s3_bucket)
    store = S3Store(s3_bucket.url, s3_bucket.options)
    victims = {}
    for backup_id in (value_id, files_id):
        entries = repository.read_manifest(backup_id).entries
        entry = next(e for e in entries if e.kind in ("data", "file"))
        refs = repository.entry_refs(entry)
        victim = refs[len(refs) // 2].id  # neighbours before and after: one coalesced read
        location = repository.locate(victim)
        assert location is not None and len(refs) > 16
        _flip(store, location)
        victims[backup_id] = victim

    with pytest.raises(IntegrityError, match=victims[value_id]):
        BackupManager(config).load_backup(value_id)
    with pytest.raises(IntegrityError, match=victims[files_id]):
        RecoveryManager(BackupManager(config)).restore_to_directory(files_id, tmp_path / "out")


def test_a_blob_past_the_end_of_its_pack_is_left_to_the_reader() -> None:
    """A pack cut short: the blobs it still holds come from the coalesced read, the one past
    its end as ``None`` (the reader then reads it alone and names the damage)."""
    store = MemoryStore()
    store.put("packs/aa/aa", bytes(range(100)))
    wanted = [_at("aa", 0, 40), _at("aa", 40, 40), _at("aa", 80, 40), None]
    got = [None if b is None else bytes(b) for b in coalesced_blobs(store, wanted)]
    assert got == [bytes(range(40)), bytes(range(40, 80)), None, None]


# -- the planner and the stream, without a server ----------------------------------------------


def _at(pack: str, offset: int, length: int) -> Location:
    return Location(pack, offset, length, length)


def _plan(locations: list[Location], **limits: int) -> list[tuple[str, int, int, int]]:
    planner = SpanPlanner(**limits)
    spans = []
    for location in locations:
        planner.add(location)
        spans.extend(planner.ready())
    spans.extend(planner.finish())
    return [(s.pack, s.start, s.end, s.members) for s in spans]


def test_the_planner_joins_near_blobs_and_splits_far_ones() -> None:
    near = [_at("a", 0, 100), _at("a", 100, 100), _at("a", 300, 100)]  # a gap of 100
    assert _plan(near, gap=100) == [("a", 0, 400, 3)]
    assert _plan(near, gap=99) == [("a", 0, 200, 2), ("a", 300, 400, 1)]
    # No read longer than the limit; a blob longer than it is read alone.
    run = [_at("a", n * 100, 100) for n in range(10)]
    assert [end - start for _, start, end, _ in _plan(run, gap=0, limit=300)] == [300] * 3 + [100]
    assert _plan([_at("a", 0, 500), _at("a", 500, 10)], gap=0, limit=300) == [
        ("a", 0, 500, 1),
        ("a", 500, 510, 1),
    ]


def test_the_planner_orders_spans_by_their_first_blob_and_reads_repeats_once() -> None:
    wanted = [_at("a", 0, 10), _at("b", 0, 10), _at("a", 10, 10), _at("a", 0, 10)]
    assert _plan(wanted, gap=0) == [("a", 0, 20, 3), ("b", 0, 10, 1)]
    # A blob wanted again beyond the reach is read again (its span was let go).
    far = [_at("a", 0, 10), _at("b", 0, 50), _at("a", 0, 10)]
    assert _plan(far, gap=0, reach=40) == [("a", 0, 10, 1), ("b", 0, 50, 1), ("a", 0, 10, 1)]


def _stream_entries(values: dict[str, bytes]) -> tuple[Repository, list[Entry]]:
    """A repository in memory holding one backup of ``values`` (raw payloads), and its
    entries."""
    repository = Repository.open(MemoryStore())
    inputs = [DataInput(name, payload, "raw") for name, payload in values.items()]
    manifest = repository.create_snapshot("manual", inputs)
    return repository, list(manifest.entries)


def test_a_stream_serves_consumers_in_any_order_within_a_tiny_budget() -> None:
    values = {f"v{n}": os.urandom(300 * KIB + n) for n in range(6)}
    repository, entries = _stream_entries(values)
    results: dict[int, bytes] = {}
    # A budget of one byte: the planner goes on only while a consumer waits for it.
    with BlobStream(repository, entries, budget=1) as stream:

        def consume(indices: list[int]) -> None:
            for index in indices:
                results[index] = b"".join(stream.chunks(index))

        threads = [threading.Thread(target=consume, args=(o,)) for o in ([5, 3, 1], [4, 2, 0])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
    assert {entries[i].name: data for i, data in results.items()} == values


def test_a_stream_lets_go_of_what_consumers_leave() -> None:
    values = {f"v{n}": os.urandom(200 * KIB) for n in range(4)}
    repository, entries = _stream_entries(values)
    stream = BlobStream(repository, entries, budget=64 * KIB)
    chunks = stream.chunks(0)
    next(chunks)
    chunks.close()  # the rest of entry 0 is let go
    assert b"".join(stream.chunks(1)) == values[entries[1].name]
    stream.close()  # entries 2 and 3 never taken: closing does not wait for them


def test_a_damaged_chunk_list_fails_only_its_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("src.infra.backup.repository.snapshot_writer.CHUNKS_PER_LIST", 4)
    values = {f"v{n}": os.urandom(600 * KIB) for n in range(3)}
    repository, entries = _stream_entries(values)
    assert all(entry.lists for entry in entries)
    victim = entries[1].lists[0].id
    store = repository.store
    location = repository.locate(victim)
    assert location is not None
    key = pack_key(location.pack)
    data = bytearray(store.get(key))
    data[location.offset + location.length // 2] ^= 0x01
    store.put(key, bytes(data))
    fresh = Repository.open(store, create=False)
    with BlobStream(fresh, entries) as stream:
        assert b"".join(stream.chunks(0)) == values[entries[0].name]
        with pytest.raises(IntegrityError, match=victim):
            stream.refs(1)
        assert b"".join(stream.chunks(2)) == values[entries[2].name]


def test_a_consumer_on_a_large_entry_keeps_no_other_waiting() -> None:
    """While one consumer sits in the middle of a large entry, another takes the next entry
    at once: its spans are read ahead of the queue, not after all of the large entry's (which
    would hold them all in memory)."""
    values = {"large": os.urandom(6 * 1024 * KIB), "small": os.urandom(100 * KIB)}
    repository, entries = _stream_entries(values)
    counting = CountingStore(repository.store)
    fresh = Repository.open(counting, create=False)
    fresh.entry_refs(entries[0])  # the pack index and chunk lists: read before counting
    counting.bytes_read = 0
    with BlobStream(fresh, entries, budget=256 * KIB) as stream:
        large = stream.chunks(0)
        first = next(large)  # the consumer of the large entry stops here for now
        assert b"".join(stream.chunks(1)) == values["small"]
        # The first span of the large entry (2 MiB at most) and the small one: not all.
        assert counting.bytes_read < 3 * 1024 * KIB, counting.bytes_read
        assert first + b"".join(large) == values["large"]
