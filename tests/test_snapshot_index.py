"""The snapshot index: a fresh process lists many backups from one object, and the index is
only ever a cache (stale, damaged, forged or foreign indexes never change what is listed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.app.maintenance import plan_checked
from src.infra.backup.format.index import (
    PLAIN_MAGIC,
    IndexedSummary,
    ListingBasis,
    _Untokened,
    decode_index,
    decode_index_file,
    encode_index,
    summarize,
)
from src.infra.backup.format.layout import INDEX_KEY
from src.infra.backup.format.values import ENCODING_NAME, encode_value
from src.infra.backup.repository.catalog import INDEX_REWRITE_UNKNOWN
from src.infra.backup.repository.repository import Repository
from src.infra.backup.repository.snapshot_writer import DataInput
from src.infra.backup.storage.base import ObjectInfo
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.testing.faulty import FaultyStore

PASSWORD = "correct horse battery staple"
START = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


class RecordingStore(FaultyStore):
    """Records the key of every ``get``."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.got: list[str] = []

    def get(self, key: str) -> bytes:
        self.got.append(key)
        return super().get(key)


def backup_id(n: int) -> str:
    return f"pre_trade_{(START + timedelta(minutes=n)).astimezone():%Y%m%d_%H%M%S}"


def fill(repo: Repository, count: int, first: int = 0) -> None:
    for n in range(first, first + count):
        repo.create_snapshot_as(
            backup_id(n),
            START + timedelta(minutes=n),
            "pre_trade",
            [DataInput("portfolio", encode_value({"cash": n}), ENCODING_NAME)],
            tags={"n": str(n)},
        )


def open_repo(path: Path, *, encrypted: bool = False) -> tuple[Repository, RecordingStore]:
    store = RecordingStore(LocalStore(path))
    repo = Repository.open(
        store,
        passphrase=(lambda: PASSWORD) if encrypted else None,
        encryption="aes-256-gcm" if encrypted else "none",
    )
    store.got.clear()
    return repo, store


def manifest_reads(store: RecordingStore) -> int:
    return sum(key.startswith("snapshots/") for key in store.got)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_fresh_process_lists_from_the_index(repo_dir: Path, encrypted: bool) -> None:
    repo, _ = open_repo(repo_dir, encrypted=encrypted)
    fill(repo, 100)
    repo.list_summaries()  # reads 100 manifests (this process made them: none) ...
    fresh, store = open_repo(repo_dir, encrypted=encrypted)
    listed = fresh.list_summaries()  # ... a fresh process had to read them all, once
    assert len(listed) == 100 and manifest_reads(store) == 100
    assert (repo_dir / INDEX_KEY).exists()

    again, store = open_repo(repo_dir, encrypted=encrypted)
    summaries = again.list_summaries()
    assert manifest_reads(store) == 0 and store.got == [INDEX_KEY]
    assert summaries == [summarize(m) for m in again.list_snapshots()]
    assert [s.backup_id for s in summaries] == [backup_id(n) for n in reversed(range(100))]
    if encrypted:  # tags and notes of an encrypted repository stay confidential
        assert b"pre_trade" not in (repo_dir / INDEX_KEY).read_bytes()


def test_new_backups_are_read_from_their_manifests(repo_dir: Path) -> None:
    repo, _ = open_repo(repo_dir)
    fill(repo, INDEX_REWRITE_UNKNOWN)
    open_repo(repo_dir)[0].list_summaries()  # writes the index
    fill(repo, 5, first=1000)
    repo.delete_snapshot(backup_id(3))
    fresh, store = open_repo(repo_dir)
    ids = [s.backup_id for s in fresh.list_summaries()]
    assert manifest_reads(store) == 5  # only the new ones
    assert backup_id(3) not in ids  # an indexed backup that is gone stays gone
    assert len(ids) == INDEX_REWRITE_UNKNOWN + 5 - 1


def test_a_recreated_id_is_never_served_from_the_index(repo_dir: Path) -> None:
    """The index entry of a deleted backup must not describe a new backup under its id."""
    repo, _ = open_repo(repo_dir)
    fill(repo, INDEX_REWRITE_UNKNOWN)
    open_repo(repo_dir)[0].list_summaries()
    target = backup_id(7)
    repo.delete_snapshot(target)
    repo.create_snapshot_as(
        target, START, "pre_trade", [DataInput("other", encode_value(1), ENCODING_NAME)]
    )
    fresh, _ = open_repo(repo_dir)
    summary = next(s for s in fresh.list_summaries() if s.backup_id == target)
    assert summary.data_keys == ("other",) and summary.tags == {}


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "plain-into-encrypted"])
def test_a_bad_index_is_ignored_and_replaced(repo_dir: Path, damage: str) -> None:
    encrypted = damage == "plain-into-encrypted"
    repo, _ = open_repo(repo_dir, encrypted=encrypted)
    fill(repo, INDEX_REWRITE_UNKNOWN)
    expected = [summarize(m) for m in repo.list_snapshots()]
    open_repo(repo_dir, encrypted=encrypted)[0].list_summaries()
    index = repo_dir / INDEX_KEY
    raw = bytearray(index.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif damage == "truncate":
        del raw[len(raw) // 3 :]
    elif damage == "garbage":
        raw[:] = b"not an index at all"
    else:  # a valid plain index of another repository, planted into an encrypted one
        other = repo_dir.parent / "other"
        plain, _ = open_repo(other)
        fill(plain, INDEX_REWRITE_UNKNOWN)
        open_repo(other)[0].list_summaries()
        raw[:] = (other / INDEX_KEY).read_bytes()
    index.write_bytes(bytes(raw))

    fresh, store = open_repo(repo_dir, encrypted=encrypted)
    assert fresh.list_summaries() == expected
    assert manifest_reads(store) == INDEX_REWRITE_UNKNOWN
    decode_index(index.read_bytes(), fresh.keys)  # rewritten, readable again
    again, store = open_repo(repo_dir, encrypted=encrypted)
    assert again.list_summaries() == expected and manifest_reads(store) == 0


def test_a_failed_index_write_never_fails_a_listing(repo_dir: Path) -> None:
    repo, _ = open_repo(repo_dir)
    fill(repo, INDEX_REWRITE_UNKNOWN)
    store = FaultyStore(LocalStore(repo_dir))
    fresh = Repository.open(store)
    store.arm("ENOSPC", at=1, op="put")
    assert len(fresh.list_summaries()) == INDEX_REWRITE_UNKNOWN
    assert store.injected and store.injected[0].key == INDEX_KEY
    assert not (repo_dir / INDEX_KEY).exists()


def test_list_backups_of_a_fresh_manager_matches_the_manifests(repo_dir: Path) -> None:
    """BackupInfo from summaries carries what the manifests say (seed attributes included)."""
    manager = BackupManager(BackupConfig(backup_path=str(repo_dir)))
    for n in range(3):
        manager.create_backup({"portfolio": {"cash": n}, "config": {}}, tags={"n": str(n)})
    fresh = BackupManager(BackupConfig(backup_path=str(repo_dir)))
    infos = fresh.list_backups()
    manifests = fresh.repository.list_snapshots()
    assert [i.backup_id for i in infos] == [m.backup_id for m in manifests]
    for info, manifest in zip(infos, manifests, strict=True):
        assert info.size_bytes == manifest.stats.stored_bytes
        assert info.files == ["portfolio.json", "config.json"]
        assert info.tags == manifest.tags and info.timestamp_utc == manifest.time_utc
        assert info.timestamp == manifest.time_utc.astimezone().replace(tzinfo=None)
        info.files.append("x")  # a caller's edit never leaks into the next listing
    assert fresh.list_backups()[0].files == ["portfolio.json", "config.json"]


class StatCountingStore(RecordingStore):
    """Also counts ``stat`` calls and per-object listings (``list_info`` stats every file)."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.stats = 0
        self.info_listings = 0

    def stat(self, key: str) -> ObjectInfo:
        self.stats += key.startswith("snapshots/")
        return super().stat(key)

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        self.info_listings += 1
        return super().list_info(prefix)

    def list_tokens(self, prefix: str) -> Iterator[tuple[str, str]]:
        return self.inner.list_tokens(prefix)  # names and inode numbers: no stat


def open_counting(path: Path) -> tuple[Repository, StatCountingStore]:
    store = StatCountingStore(LocalStore(path))
    repo = Repository.open(store)
    store.got.clear()
    return repo, store


def test_a_names_only_listing_stats_and_reads_no_manifest(repo_dir: Path) -> None:
    repo, _ = open_repo(repo_dir)
    fill(repo, 100)
    expected = open_repo(repo_dir)[0].list_summaries()  # validated; writes the index
    fresh, store = open_counting(repo_dir)
    assert fresh.list_summaries(validate=False) == expected
    assert (store.stats, store.info_listings, manifest_reads(store)) == (0, 0, 0)
    fill(repo, 3, first=100)  # new backups: read from their manifests, nothing else
    listed = fresh.list_summaries(validate=False)
    assert [s.backup_id for s in listed[:4]] == [backup_id(n) for n in (102, 101, 100, 99)]
    assert (store.stats, manifest_reads(store)) == (3, 3)


def test_a_names_only_listing_notices_a_replaced_manifest(repo_dir: Path) -> None:
    """A manifest replaced under the same id has a new token (the new file existed beside
    the old one before the rename), so the stale summary is never served."""
    repo, _ = open_repo(repo_dir)
    fill(repo, INDEX_REWRITE_UNKNOWN)
    open_repo(repo_dir)[0].list_summaries()  # writes the index, tokens included
    target = backup_id(7)
    replacement = repo_dir / "elsewhere"
    other, _ = open_repo(replacement)
    other.create_snapshot_as(
        target,
        START + timedelta(days=400),
        "pre_trade",
        [DataInput("portfolio", encode_value({"cash": -1}), ENCODING_NAME)],
        tags={"replaced": "yes"},
    )
    stored = (replacement / "snapshots" / f"{target}.json").read_bytes()
    LocalStore(repo_dir).put(f"snapshots/{target}.json", stored)  # write temp, rename
    fresh, store = open_counting(repo_dir)
    summaries = fresh.list_summaries(validate=False)
    assert summaries[0].backup_id == target and summaries[0].tags == {"replaced": "yes"}
    assert manifest_reads(store) == 1 and store.stats == 1


def test_an_index_without_tokens_is_used_and_then_rewritten_with_them(repo_dir: Path) -> None:
    """An index written before listing tokens existed (format 1 without them) still spares
    manifest reads; the names-only listing stats each manifest once and rewrites it."""
    repo, _ = open_repo(repo_dir)
    fill(repo, INDEX_REWRITE_UNKNOWN)
    first = open_repo(repo_dir)[0]
    expected = first.list_summaries()
    entries = decode_index((repo_dir / INDEX_KEY).read_bytes(), None)
    old = [IndexedSummary(e.version, e.summary) for e in entries]  # no token
    LocalStore(repo_dir).put(INDEX_KEY, encode_index(old, None))
    fresh, store = open_counting(repo_dir)
    assert fresh.list_summaries(validate=False) == expected
    assert manifest_reads(store) == 0 and store.stats == INDEX_REWRITE_UNKNOWN
    assert all(e.token for e in decode_index((repo_dir / INDEX_KEY).read_bytes(), None))
    again, store = open_counting(repo_dir)
    assert again.list_summaries(validate=False) == expected and store.stats == 0


def test_a_damaged_manifest_is_read_once_by_names_only_listings(repo_dir: Path) -> None:
    repo, _ = open_repo(repo_dir)
    fill(repo, 3)
    (repo_dir / "snapshots" / f"{backup_id(1)}.json").write_bytes(b"{not json")
    fresh, store = open_counting(repo_dir)
    assert [s.backup_id for s in fresh.list_summaries(validate=False)] == [
        backup_id(2),
        backup_id(0),
    ]
    assert backup_id(1) in fresh.damaged_snapshots()
    reads = manifest_reads(store)
    fill(repo, 1, first=3)
    assert len(fresh.list_summaries(validate=False)) == 3
    assert manifest_reads(store) == reads + 1  # only the new one


def test_summaries_of_backups_sharing_a_time_are_ordered_by_their_ids(repo_dir: Path) -> None:
    repo, _ = open_repo(repo_dir)
    same = START + timedelta(hours=1)
    for name in ("manual_20260301_100000_2", "manual_20260301_100000_10", "manual_20260301_100000"):
        repo.create_snapshot_as(
            name, same, "manual", [DataInput("v", encode_value(1), ENCODING_NAME)]
        )
    fresh, _ = open_counting(repo_dir)
    assert [s.backup_id for s in fresh.list_summaries(validate=False)] == [
        "manual_20260301_100000_10",
        "manual_20260301_100000_2",
        "manual_20260301_100000",
    ]


class ReusedTokenStore(FaultyStore):
    """Every object lists with the same token: what a file system that reuses an inode number
    for a manifest deleted and written again looks like to a names-only listing."""

    def list_tokens(self, prefix: str) -> Iterator[tuple[str, str]]:
        return ((key, "1") for key in self.inner.list(prefix))


def test_retention_never_acts_on_a_stale_summary_of_a_names_only_listing(repo_dir: Path) -> None:
    now = datetime.now(timezone.utc)
    repo, _ = open_repo(repo_dir)
    old_id = "manual_20200101_000000"
    for name, when in ((old_id, now - timedelta(days=400)), ("manual_recent", now)):
        repo.create_snapshot_as(
            name, when, "manual", [DataInput("v", encode_value(1), ENCODING_NAME)]
        )
    store = ReusedTokenStore(LocalStore(repo_dir))
    bot = Repository.open(store)
    config = BackupConfig(backup_path=str(repo_dir), retention_days=30)
    assert [d.backup_id for d in plan_checked(bot, config, protect=[]) if not d.keep] == [old_id]
    # The old backup is deleted and a new one written under its id (another host, sync).
    other, _ = open_repo(repo_dir / "other")
    other.create_snapshot_as(
        old_id, now, "manual", [DataInput("v", encode_value(2), ENCODING_NAME)]
    )
    (repo_dir / "snapshots" / f"{old_id}.json").unlink()
    LocalStore(repo_dir).put(
        f"snapshots/{old_id}.json",
        (repo_dir / "other" / "snapshots" / f"{old_id}.json").read_bytes(),
    )
    stale = bot.list_summaries(validate=False)
    assert next(s for s in stale if s.backup_id == old_id).time_utc < now - timedelta(days=300)
    decisions = plan_checked(bot, config, protect=[])
    assert all(d.keep for d in decisions) and len(decisions) == 2


class _IndexFileOf020(msgspec.Struct, array_like=True):
    """The snapshot index as 0.2.0 reads it: ``[format, entries]``."""

    format: int
    entries: list[_Untokened]


def test_an_index_with_a_listing_basis_reads_as_before_in_older_versions(
    repo_dir: Path,
) -> None:
    """The basis (format 2, network stores) is a trailing element of the index: a reader
    that knows only ``[format, entries]`` (versions before 0.3) takes the entries as always,
    and this version reads an index without one."""
    manager = BackupManager(BackupConfig(backup_path=str(repo_dir), retention_days=0))
    manager.create_backup({"a": 1}, "daily")
    summary = summarize(manager.repository.read_manifest(manager.list_backups()[0].backup_id))
    entries = [IndexedSummary("v1", summary, "t1")]
    basis = ListingBasis("0123456789abcdef", datetime.now(timezone.utc), ("daily",))
    stored = encode_index(entries, None, basis)

    body = stored[len(PLAIN_MAGIC) + 32 :]
    old = msgspec.msgpack.decode(body, type=_IndexFileOf020)
    assert [e.summary for e in old.entries] == [summary]
    assert decode_index_file(stored, None) == (entries, basis)
    assert decode_index_file(encode_index(entries, None), None) == (entries, None)
