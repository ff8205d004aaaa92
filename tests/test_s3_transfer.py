"""``sync`` between format-2 repositories (``repository/pack_transfer.py``): packs copied whole,
byte for byte, when the backups copied need most of them, the rest read in coalesced reads and
packed anew; an interrupted sync resumes without uploading anything twice; a damaged pack is
never copied. Against a real SeaweedFS where S3 is the point."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.errors import IntegrityError, StorageError
from src.infra.backup.format.layout import PACK_PREFIX, pack_key
from src.infra.backup.repository import pack_transfer
from src.infra.backup.repository.replication import Replicator, open_replica, sync
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.s3 import S3Store
from src.infra.backup.storage.testing.faulty import FaultyStore
from tests.conftest import S3Bucket
from tests.factories import fresh_manager
from tests.test_pack_reads import CountingStore

MIB = 1024 * 1024


def make_backups(manager: BackupManager, count: int) -> list[str]:
    """Backups that share a history and each add 1.5 MiB of their own."""
    history = [{"n": n, "price": n * 0.25} for n in range(20_000)]
    ids = []
    for n in range(count):
        history.append({"n": 10**6 + n, "price": 1.0})
        state = {"history": history, "blob": os.urandom(int(1.5 * MIB)), "n": n}
        ids.append(manager.create_backup(state))
    return ids


def pack_ids(store: Store) -> set[str]:
    return {key.rsplit("/", 1)[-1] for key in store.list(PACK_PREFIX)}


def test_sync_to_s3_copies_packs_whole_and_byte_for_byte(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    local = fresh_manager(tmp_path / "repo")
    ids = make_backups(local, 3)
    source = local.repository
    counting = CountingStore(S3Store(s3_bucket.url, s3_bucket.options))
    replica = open_replica(source, counting, create=True)

    report = sync(source, replica, verify=True)
    assert report.copied == ids and report.verified == 3
    source_packs = pack_ids(source.store)
    assert report.packs_copied == len(source_packs)
    # Named by their hashes: the same names mean the same bytes (each checked on the way).
    assert pack_ids(counting.inner) == source_packs
    uploaded = [key for key in counting.put_keys if key.startswith(PACK_PREFIX)]
    assert sorted(uploaded) == sorted(pack_key(pack) for pack in source_packs)  # each once
    assert report.blobs_copied == len(replica.chunk_ids())

    remote = BackupManager(s3_bucket.config())
    for backup_id in ids:
        assert remote.load_backup(backup_id) == local.load_backup(backup_id)
    assert remote.check().clean


def test_packs_mostly_unused_are_repacked_from_coalesced_reads(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    """A sync --from S3 of a backup that needs a small part of a pack: its blobs are read in
    a few ranged requests and packed anew, not the whole pack."""
    remote = BackupManager(s3_bucket.config())
    kept = os.urandom(150_000).hex()
    big = remote.create_backup({"big": os.urandom(1_500_000).hex(), "kept": kept})
    small = remote.create_backup({"kept": kept})  # all of its chunks are in big's pack
    remote.delete_backup(big)
    counting = CountingStore(S3Store(s3_bucket.url, s3_bucket.options))
    source = Repository.open(counting, create=False)
    assert len(pack_ids(counting.inner)) == 1
    replica = open_replica(source, LocalStore(tmp_path / "copy"), create=True)
    counting.ranged = 0

    report = sync(source, replica)
    assert report.copied == [small] and report.packs_copied == 0
    assert report.blobs_copied >= 16
    assert counting.ranged <= report.blobs_copied // 8, (counting.ranged, report.blobs_copied)
    assert not pack_ids(replica.store) & pack_ids(counting.inner)  # packed anew
    assert fresh_manager(tmp_path / "copy").load_backup(small) == {"kept": kept}


class Recording(FaultyStore):
    """A fault-injecting store that also records the key of every object it was asked to
    write (a write whose answer a fault loses is recorded: it landed)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.written: list[str] = []

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        self.written.append(key)
        super().put(key, data, exclusive=exclusive, durable=durable)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        batch = list(items)
        self.written.extend(key for key, _ in batch)
        super().put_many(batch)


def _blobs_and_manifests(store: Store) -> set[str]:
    return {key for key in store.list("") if key.startswith((PACK_PREFIX, "snapshots/"))}


@pytest.mark.parametrize("way", ["whole packs", "repacked"])
def test_an_interrupted_sync_from_s3_resumes_without_uploading_anything_twice(
    tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    remote = BackupManager(s3_bucket.config())
    ids = make_backups(remote, 4)
    monkeypatch.setattr(pack_transfer, "COPY_BATCH", 1)  # one upload per pack
    if way == "repacked":
        monkeypatch.setattr(pack_transfer, "WHOLE_PACK_SHARE", 2.0)  # never whole
    source = Repository.open(S3Store(s3_bucket.url, s3_bucket.options), create=False)
    target = LocalStore(tmp_path / "copy")
    first = Recording(target)
    first.arm("EIO", at=3, op="put_many")  # the third upload fails: the sync stops there
    with pytest.raises(StorageError):
        sync(source, open_replica(source, first, create=True))
    there = _blobs_and_manifests(target)
    assert any(key.startswith(PACK_PREFIX) for key in there)
    copied_first = {key.split("/")[-1].removesuffix(".json") for key in there} & set(ids)
    assert len(copied_first) < len(ids)

    second = Recording(target)
    replica = open_replica(source, second, create=False)
    present = replica.chunk_ids()
    needed: set[str] = set()
    for backup_id in ids:
        needed.update(source.blob_sizes(source.read_manifest(backup_id)))
    report = sync(source, replica, verify=True)
    assert sorted(report.copied) == sorted(set(ids) - copied_first)
    assert report.blobs_copied == len(needed - present)  # only what was missing
    assert not set(second.written) & there  # nothing already there was uploaded again
    copy = fresh_manager(tmp_path / "copy")
    for backup_id in ids:
        assert copy.load_backup(backup_id) == remote.load_backup(backup_id)
    assert copy.check().clean


def _flip_in_pack(repo: Path, pack_id: str, offset: int) -> None:
    path = repo / pack_key(pack_id)
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_source_pack_is_never_copied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = fresh_manager(tmp_path / "repo")
    good = local.create_backup({"good": os.urandom(300_000).hex()})
    bad = local.create_backup({"bad": os.urandom(300_000).hex()})
    source = local.repository
    refs = source.entry_refs(source.read_manifest(bad).entries[0])
    victim = refs[len(refs) // 2].id
    where = source.locate(victim)
    assert where is not None
    _flip_in_pack(tmp_path / "repo", where.pack, where.offset + where.length // 2)
    replica = open_replica(source, LocalStore(tmp_path / "replica"), create=True)

    with pytest.raises(IntegrityError, match=victim):
        sync(source, replica)
    assert f"pack {where.pack} is not copied whole" in caplog.text
    assert replica.snapshot_ids() == [good]  # the good one arrived; the bad one did not
    assert where.pack not in pack_ids(replica.store)
    assert victim not in replica.chunk_ids()
    assert fresh_manager(tmp_path / "replica").check().clean


def test_a_pack_damaged_where_no_copied_backup_looks_is_not_copied_but_its_blobs_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Damage in a blob of a deleted backup: the pack fails its hash check and is not
    copied; the blobs the copied backup needs are each verified and arrive in a new pack."""
    local = fresh_manager(tmp_path / "repo")
    kept = os.urandom(300_000).hex()
    old = local.create_backup({"kept": kept, "dropped": os.urandom(20_000).hex()})
    source = local.repository
    dropped = next(e for e in source.read_manifest(old).entries if e.name == "dropped")
    victim = source.entry_refs(dropped)[0].id
    backup_id = local.create_backup({"kept": kept})
    local.delete_backup(old)
    (pack,) = pack_ids(source.store)
    where = source.locate(victim)
    assert where is not None and where.pack == pack
    _flip_in_pack(tmp_path / "repo", pack, where.offset + where.length // 2)
    replica = open_replica(source, LocalStore(tmp_path / "replica"), create=True)

    report = sync(source, replica, verify=True)
    assert report.copied == [backup_id] and report.packs_copied == 0
    assert f"pack {pack} is not copied whole (its content does not match" in caplog.text
    assert pack not in pack_ids(replica.store)
    assert victim not in replica.chunk_ids()
    copy = fresh_manager(tmp_path / "replica")
    assert copy.load_backup(backup_id) == {"kept": kept}
    assert copy.check().clean


def test_the_offsite_replicator_resumes_without_uploading_anything_twice(
    tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The off-site outbox (a :class:`Replicator`) fails mid-upload, retries by itself, and
    the retry uploads only what is missing."""
    monkeypatch.setattr(pack_transfer, "COPY_BATCH", 1)  # one upload per pack
    local = fresh_manager(tmp_path / "repo")
    ids = make_backups(local, 3)
    target = S3Store(s3_bucket.url, s3_bucket.options)
    recording = Recording(target)
    recording.arm("timeout", at=2, op="put_many")  # the upload lands, its answer is lost
    replicator = Replicator(
        lambda: local.repository,
        lambda source: open_replica(source, recording, create=True),
        backoff_initial=0.05,
    )
    replicator.notify()
    assert replicator.flush(60)
    replicator.stop()
    assert recording.injected, "the fault should have fired"
    report = replicator.last_report
    assert report is not None and report.packs_copied >= 1
    assert sorted(target.list("snapshots/")) == sorted(f"snapshots/{i}.json" for i in ids)
    blobs = [key for key in recording.written if key.startswith(PACK_PREFIX)]
    # The pack whose answer was lost was there already: the retry did not upload it again.
    assert len(blobs) == len(set(blobs)) == len(pack_ids(local.repository.store))
    remote = BackupManager(s3_bucket.config())
    assert remote.load_backup(ids[-1]) == local.load_backup(ids[-1])


def test_the_offsite_outbox_copies_whole_packs(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """``[backup.offsite]`` goes the same way: the replica gets the local packs themselves."""
    options = s3_bucket.options
    manager = BackupManager(
        BackupConfig(
            backup_path=tmp_path / "repo",
            retention_days=0,
            s3={
                "endpoint_url": options.endpoint_url,
                "region": options.region,
                "access_key_id": options.access_key_id,
                "secret_access_key": options.secret_access_key,
            },
            offsite={"path": s3_bucket.url},
        )
    )
    ids = make_backups(manager, 2)
    assert manager.flush_offsite(60)
    local_packs = pack_ids(manager.repository.store)
    assert pack_ids(S3Store(s3_bucket.url, s3_bucket.options)) == local_packs
    remote = BackupManager(s3_bucket.config())
    assert remote.load_backup(ids[-1]) == manager.load_backup(ids[-1])


def test_small_backups_share_a_round_of_whole_packs() -> None:
    plan = pack_transfer.TransferPlan(
        sizes={"a": 5 * MIB, "b": 5 * MIB, "c": MIB},
        by_backup={"1": ["a"], "2": [], "3": ["b", "c"], "4": ["c"]},
    )
    order = ["1", "2", "3", "4"]
    assert plan.group(order, 0, limit=8 * MIB) == ["a", "b"]  # up to the limit
    plan.done.update(["a", "b"])
    assert plan.group(order, 1, limit=8 * MIB) == []  # backup 2 needs none: it goes first
    assert plan.group(order, 2, limit=8 * MIB) == ["c"]
    plan.done.add("c")
    assert plan.group(order, 3, limit=8 * MIB) == []
