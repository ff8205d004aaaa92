"""Garbage collection (``prune``): two-phase fossil collection, leases, the prune lock, and
real concurrent writer and pruner processes.

Phase 1 (collect) runs before phase 2 (delete): with ``grace=0`` and no backup running, one
prune collects and deletes, batch by batch (records ``gc/collection-<stamp>-<nnnnn>.json`` of
at most ``COLLECTION_BATCH`` ids). To keep fossils around, a test holds a backup lease during
the prune (as an uncommitted backup does) or uses a grace period.

Several tests here reproduced bugs that have since been fixed; they stay as regression tests,
and each docstring says what it guards.

Fossils (``fossils/``, one object per chunk, records of ``COLLECTION_BATCH`` ids) are format 1's:
those tests run on format-1 repositories (``FORMAT1``). Tests of what holds in any format
(prune basics, leases, the prune lock, real concurrent writers and a pruner) run on both
(``BOTH_FORMATS``; in format 2 a collection names whole packs, see tests/test_packs.py); the
others on the default format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from layout_helpers import age_stored, make_repository, pack_entries, stored_files, stored_state
from stored_chunks import format1_repositories, is_packed, repo_format, stored_chunk_ids

from src.infra.backup import (
    BackupConfig,
    BackupManager,
    IntegrityError,
    RecoveryManager,
    RepositoryBusyError,
)
from src.infra.backup.repository import locks as locks_module
from src.infra.backup.repository.gc import COLLECTION_BATCH, prune, referenced_chunks
from src.infra.backup.repository.locks import (
    BACKUP_LEASE_KIND,
    HOSTNAME,
    ExclusiveLock,
    Lease,
    LeaseRecord,
)
from src.infra.backup.repository.pack_gc import REPACK_BELOW
from src.infra.backup.storage import local as local_store_module
from src.infra.backup.storage.local import LocalStore
from tests.helpers import run_cli_inline

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAIN_SCRIPT = PROJECT_ROOT / "src" / "infra" / "backup" / "__main__.py"
ZERO = timedelta(0)
CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def format1() -> Iterator[None]:
    """Repositories created by the test are format 1 (fossils: one object per chunk)."""
    with format1_repositories():
        yield


FORMAT1 = pytest.mark.usefixtures("format1")
BOTH_FORMATS = pytest.mark.parametrize("repository_format", [1, 2], ids=["format1", "format2"])


def trades(count: int, tag: str = "") -> list[dict[str, Any]]:
    """A trade history of ``count`` dicts (content-defined chunking splits it)."""
    return [
        {"id": i, "sym": "BTC/USDT", "px": 100 + i * 0.25, "qty": i % 7 + 1, "tag": tag}
        for i in range(count)
    ]


def state(n: int, tag: str = "") -> dict[str, Any]:
    return {"history": trades(2000 + 300 * n, tag), "portfolio": {"n": n, "tag": tag}}


def new_manager(repo: Path, **extra: Any) -> BackupManager:
    """A fresh manager (no caches shared with others) on ``repo``, retention off."""
    return BackupManager(BackupConfig(backup_path=repo, retention_days=0, **extra))


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` (hidden ones too) -> (size, mtime_ns)."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def objects(root: Path, prefix: str) -> dict[str, Path]:
    """Chunk id -> file, below ``chunks/`` or ``fossils/``."""
    base = root / prefix
    if not base.exists():
        return {}
    return {p.name: p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")}


def chunk_state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Chunk id -> (bytes, mtime_ns) of everything in ``chunks/``."""
    return {
        cid: (p.read_bytes(), p.stat().st_mtime_ns) for cid, p in objects(root, "chunks").items()
    }


def garbage_bytes(root: Path, garbage: set[str], referenced: set[str]) -> int:
    """The bytes a collection of ``garbage`` frees: the sizes of the objects holding it (its
    chunk files; in format 2 its packs, which must hold nothing still referenced)."""
    holders = stored_files(root)
    doomed = {holders[cid] for cid in garbage}
    assert not any(holders[cid] in doomed for cid in referenced)
    return sum(path.stat().st_size for path in doomed)


def records(root: Path) -> list[dict[str, Any]]:
    """The pending collection records."""
    found: list[dict[str, Any]] = [json.loads(p.read_text()) for p in (root / "gc").glob("*")]
    return found


def assert_collected_not_deleted(root: Path, garbage: set[str]) -> None:
    """Phase 1 is done for ``garbage``, phase 2 is not: in format 1 it is exactly what is in
    ``fossils/``; in format 2 it is still stored, in packs a pending record names."""
    pending = records(root)
    assert pending
    if not is_packed(root):
        assert set(objects(root, "fossils")) == garbage
        return
    assert objects(root, "fossils") == {}
    assert garbage <= stored_chunk_ids(root)
    named = {pack for record in pending for pack in record.get("packs", [])}
    holders = stored_files(root)
    assert {holders[cid].name for cid in garbage} <= named


def assert_deleted(root: Path, garbage: set[str]) -> None:
    """Both phases are done: no fossil, no record, no garbage chunk stored any more."""
    assert objects(root, "fossils") == {}
    assert list((root / "gc").glob("*")) == []
    assert not garbage & stored_chunk_ids(root)


def in_use(manager: BackupManager) -> set[str]:
    return set(referenced_chunks(new_manager(manager.config.repository_path).repository))


def assert_all_good(repo: Path, expected: dict[str, dict[str, Any]]) -> None:
    """With fresh managers: exactly ``expected`` backups exist, each loads equal and verifies;
    ``check`` is clean."""
    manager = new_manager(repo)
    assert sorted(i.backup_id for i in manager.list_backups()) == sorted(expected)
    recovery = RecoveryManager(manager)
    for backup_id, data in expected.items():
        assert manager.load_backup(backup_id) == data, backup_id
        assert recovery.verify_backup(backup_id), backup_id
    report = manager.check()
    assert report.clean, report.to_json()


def make_garbage(
    manager: BackupManager, count: int = 4
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """``count`` backups of a growing history; all but the last two deleted. Returns the
    remaining backups (id -> data) and the chunks only the deleted ones used."""
    ids = {}
    for n in range(count):
        data = state(n, tag=f"g{n}")
        ids[manager.create_backup(data)] = data
    before = in_use(manager)
    doomed = list(ids)[: count - 2]
    for backup_id in doomed:
        manager.delete_backup(backup_id, force=True)
        del ids[backup_id]
    garbage = before - in_use(manager)
    assert garbage, "the deleted backups must have had chunks of their own"
    return ids, garbage


def write_lease(
    repo: Path, name: str, *, pid: int, started: datetime, expires: datetime, host: str = HOSTNAME
) -> Path:
    record = LeaseRecord(BACKUP_LEASE_KIND, host, pid, started, expires)
    path = repo / "locks" / f"{BACKUP_LEASE_KIND}-{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(msgspec.json.encode(record))
    return path


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


def utc(offset: timedelta = ZERO) -> datetime:
    return datetime.now(timezone.utc) + offset


def backup_running(repo: Path) -> Lease:
    """A live backup lease, as an uncommitted backup holds: it keeps every collection made
    while it is held from being deleted (phase 2 postpones it)."""
    return Lease(LocalStore(repo), BACKUP_LEASE_KIND, timedelta(minutes=10)).acquire()


def collect_only(repo: Path) -> Any:
    """Phase 1 alone: a prune (grace 0) while a backup is running, so nothing is deleted (in
    format 2 the collected packs stay, named by the pending records)."""
    lease = backup_running(repo)
    try:
        report = prune(new_manager(repo).repository, grace=ZERO)
    finally:
        lease.release()
    assert report.deleted == 0 and report.resurrected == 0, report
    return report


RECORD_NAME = re.compile(r"collection-\d{8}T\d{12}Z-\d{5}\.json")


# -- prune basics ---------------------------------------------------------------------------


@BOTH_FORMATS
def test_prune_collects_then_deletes_only_unreferenced_chunks(
    manager: BackupManager, repo_dir: Path, repository_format: int
) -> None:
    """With grace 0 and no backup running, one prune collects exactly the unreferenced chunks
    and deletes them in the same run; referenced chunks are never touched."""
    make_repository(repo_dir, repository_format)
    kept, garbage = make_garbage(manager, count=5)
    referenced = in_use(manager)
    before = stored_state(repo_dir)  # chunk id -> (stored blob, mtime of its chunk file/pack)
    assert garbage <= set(before) and referenced <= set(before)
    if repository_format == 1:
        assert before == chunk_state(repo_dir)
    freed = garbage_bytes(repo_dir, garbage, referenced)

    first = manager.prune(grace=ZERO)
    assert first.fossilized == len(garbage), first
    assert first.deleted == first.fossilized and first.resurrected == 0, first
    assert first.postponed == [], first
    assert first.referenced_chunks == len(referenced)
    if repository_format == 1:
        assert freed == sum(len(before[cid][0]) for cid in garbage)
    assert first.fossilized_bytes == first.deleted_bytes == freed, first
    assert first.freed_bytes == freed
    assert_deleted(repo_dir, garbage)
    # Referenced chunks are never touched: same bytes, same mtime (of the chunk file; in
    # format 2 of the pack holding it).
    assert stored_state(repo_dir) == {cid: before[cid] for cid in referenced}
    report = new_manager(repo_dir).check()
    assert report.clean and report.orphaned_chunks == 0 and report.fossils == 0, report.to_json()
    assert_all_good(repo_dir, kept)

    # Nothing left to do; the repository keeps working.
    second = manager.prune(grace=ZERO)
    assert (second.fossilized, second.deleted, second.resurrected) == (0, 0, 0), second
    extra = manager.create_backup(state(9))
    kept[extra] = state(9)
    assert_all_good(repo_dir, kept)


@BOTH_FORMATS
def test_grace_zero_prune_deletes_in_the_same_run(
    manager: BackupManager, repo_dir: Path, repository_format: int
) -> None:
    """Regression (prune used to run phase 2 before phase 1, so a collection was only ever
    deleted by a later run): with grace 0 the collection is deleted in the run that made it."""
    make_repository(repo_dir, repository_format)
    _, garbage = make_garbage(manager)
    report = manager.prune(grace=ZERO)
    assert report.fossilized == report.deleted == len(garbage), report
    assert report.postponed == [], report
    assert_deleted(repo_dir, garbage)


def unique_garbage(manager: BackupManager, chunks: int) -> tuple[str, set[str]]:
    """A kept backup, and at least ``chunks`` chunks that only a deleted backup used."""
    kept = manager.create_backup({"keep": "k"})
    before = in_use(manager)
    # Incompressible unique bytes of about 32 KiB per chunk (the default average size).
    payload = os.urandom(32 * 1024 * (chunks + 8)).hex()
    doomed = manager.create_backup({"blob": payload})
    manager.delete_backup(doomed, force=True)
    garbage = stored_chunk_ids(manager.config.repository_path) - before
    assert len(garbage) > chunks, len(garbage)
    return kept, garbage


@FORMAT1
def test_collection_records_are_batched(repo_dir: Path) -> None:
    """Phase 1 writes one ``gc/collection-<stamp>-<nnnnn>.json`` record per batch of at most
    ``COLLECTION_BATCH`` chunk ids, all of one run sharing the stamp; together they name
    exactly the collected chunks. A collection a running backup may depend on is kept."""
    manager = new_manager(repo_dir)
    kept, garbage = unique_garbage(manager, 2 * COLLECTION_BATCH + 1)
    collect_only(repo_dir)
    records = sorted((repo_dir / "gc").iterdir())
    assert len(records) == math.ceil(len(garbage) / COLLECTION_BATCH), [r.name for r in records]
    for record in records:
        assert RECORD_NAME.fullmatch(record.name), record.name
    assert len({r.name.rsplit("-", 1)[0] for r in records}) == 1, "one stamp per run"
    assert [r.name.rsplit("-", 1)[1] for r in records] == [
        f"{n:05d}.json" for n in range(len(records))
    ]
    named: list[str] = []
    for record in records:
        fossils = json.loads(record.read_text())["fossils"]
        assert 0 < len(fossils) <= COLLECTION_BATCH, (record.name, len(fossils))
        named.extend(fossils)
    assert len(named) == len(set(named)) and set(named) == garbage
    assert set(objects(repo_dir, "fossils")) == garbage

    # No backup running any more: the next prune deletes every batch.
    report = prune(new_manager(repo_dir).repository, grace=ZERO)
    assert report.fossilized == 0 and report.deleted == len(garbage), report
    assert objects(repo_dir, "fossils") == {} and list((repo_dir / "gc").iterdir()) == []
    assert_all_good(repo_dir, {kept: {"keep": "k"}})


@FORMAT1
def test_grace_zero_prune_frees_space_batch_by_batch(repo_dir: Path) -> None:
    """With grace 0 each batch is deleted before the next is collected (prune must work on a
    nearly full disk): whenever a collection record is written, no fossil is waiting."""
    manager = new_manager(repo_dir)
    kept, garbage = unique_garbage(manager, 2 * COLLECTION_BATCH + 1)
    repository = new_manager(repo_dir).repository
    store = repository.store
    original_put = store.put
    waiting: list[int] = []

    def put(key: str, data: bytes, **kwargs: Any) -> None:
        if key.startswith("gc/"):
            waiting.append(len(objects(repo_dir, "fossils")))
        original_put(key, data, **kwargs)

    store.put = put  # type: ignore[method-assign]
    report = prune(repository, grace=ZERO)
    assert report.fossilized == report.deleted == len(garbage), report
    assert waiting == [0] * math.ceil(len(garbage) / COLLECTION_BATCH), waiting
    assert objects(repo_dir, "fossils") == {} and list((repo_dir / "gc").iterdir()) == []
    assert_all_good(repo_dir, {kept: {"keep": "k"}})


@BOTH_FORMATS
def test_prune_dry_run_reports_and_changes_nothing(
    repo_dir: Path, tmp_path: Path, run_cli: CliRunner, repository_format: int
) -> None:
    (tmp_path / "config.toml").write_text(
        f'[backup]\nbackup_path = "{repo_dir}"\nretention_days = 0\n'
    )
    make_repository(repo_dir, repository_format)
    manager = new_manager(repo_dir)
    kept, garbage = make_garbage(manager, count=4)
    freed = garbage_bytes(repo_dir, garbage, in_use(manager))
    if repository_format == 1:
        sizes = {cid: p.stat().st_size for cid, p in objects(repo_dir, "chunks").items()}
        assert freed == sum(sizes[c] for c in garbage)

    def dry_run() -> dict[str, Any]:
        before = listing(repo_dir)
        result = run_cli("--json", "prune", "--dry-run", "--grace", "0s", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert listing(repo_dir) == before, "a dry run changed the repository"
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed

    # Phase 1 pending: the garbage would be collected and (grace 0) deleted in the same run.
    report = dry_run()
    assert report["dry_run"] is True
    assert report["fossilized"] == len(garbage)
    assert report["fossilized_bytes"] == freed
    assert report["deleted"] == len(garbage)
    assert report["freed_bytes"] == freed
    assert objects(repo_dir, "fossils") == {}
    assert garbage <= stored_chunk_ids(repo_dir)

    # Phase 2 pending (the collection was made while a backup ran, which has finished since):
    # the fossils (format 2: the collected packs) would be deleted.
    collect_only(repo_dir)
    assert_collected_not_deleted(repo_dir, garbage)
    report = dry_run()
    assert report["deleted"] == len(garbage)
    assert report["freed_bytes"] == freed
    assert report["fossilized"] == 0
    assert_collected_not_deleted(repo_dir, garbage)

    # The human form says it is a dry run.
    text = run_cli("prune", "--dry-run", "--grace", "0s", cwd=tmp_path)
    assert text.returncode == 0 and "Dry run" in text.stdout, text
    assert_all_good(repo_dir, kept)


@BOTH_FORMATS
def test_default_grace_collects_only_old_chunks_and_deletes_only_old_collections(
    repo_dir: Path, repository_format: int
) -> None:
    make_repository(repo_dir, repository_format)
    manager = new_manager(repo_dir)  # prune_grace defaults to 1h
    assert manager.config.grace == timedelta(hours=1)
    kept, garbage = make_garbage(manager)
    referenced = in_use(manager)

    young = manager.prune()
    assert young.fossilized == 0 and young.deleted == 0, young
    assert objects(repo_dir, "fossils") == {}
    assert list((repo_dir / "gc").glob("*")) == []

    # Age every chunk (chunk file, or pack) by two hours: now the garbage is old enough, the
    # rest still in use.
    age_stored(repo_dir, 7200)
    old = manager.prune()
    assert old.fossilized == len(garbage) and old.deleted == 0, old
    assert_collected_not_deleted(repo_dir, garbage)
    # Old but referenced: kept (format 1: in chunks/, the garbage in fossils/; format 2: the
    # collected packs stay until phase 2).
    stays = referenced if repository_format == 1 else referenced | garbage
    assert stored_chunk_ids(repo_dir) == stays

    again = manager.prune()  # the collection is younger than an hour
    assert again.deleted == 0 and any("younger" in p for p in again.postponed), again

    repository = manager.repository
    short = timedelta(seconds=1)
    soon = prune(repository, grace=short)
    if soon.deleted == 0:  # the usual case: less than a second since the collection
        assert soon.postponed, soon
        assert_collected_not_deleted(repo_dir, garbage)
        time.sleep(1.1)
        soon = prune(repository, grace=short)
    assert soon.deleted == len(garbage), soon
    assert_deleted(repo_dir, garbage)
    assert stored_chunk_ids(repo_dir) == referenced
    assert_all_good(repo_dir, kept)


# -- fossils and the reader fallback --------------------------------------------------------


def fossilize_in_use(manager: BackupManager, repo: Path, backup_id: str) -> set[str]:
    """Run phase 1 while ``backup_id``'s manifest is away and its backup lease is held (as if
    the backup had not committed yet), then put the manifest back: its own chunks now sit in
    ``fossils/`` and the collection record is pending."""
    manifest = repo / "snapshots" / f"{backup_id}.json"
    aside = repo.parent / "manifest.aside"
    shutil.move(manifest, aside)
    try:
        report = collect_only(repo)
    finally:
        shutil.move(aside, manifest)
    assert repo_format(repo) == 1  # fossils: one object per chunk
    fossils = set(objects(repo, "fossils"))
    assert report.fossilized == len(fossils) > 0
    return fossils


@FORMAT1
def test_fossilized_chunks_still_read_and_are_brought_back(repo_dir: Path) -> None:
    manager = new_manager(repo_dir)
    base = {"config": {"strategy": "ma_crossover"}}
    first = manager.create_backup(base)
    data = state(3, tag="X")
    target = manager.create_backup(data)
    fossils = fossilize_in_use(manager, repo_dir, target)
    assert fossils & in_use(manager), "chunks in use must be among the fossils"
    assert not (fossils & set(objects(repo_dir, "chunks")))

    # Readers fall back to fossils/: load, verify, restore and check all work.
    fresh = new_manager(repo_dir)
    assert fresh.load_backup(target) == data
    recovery = RecoveryManager(fresh)
    assert recovery.verify_backup(target)
    assert recovery.restore_latest_backup() == data
    report = fresh.check()
    assert report.clean and report.fossils == len(fossils), report.to_json()
    # A new backup deduplicating against the fossilized parent commits and reads fine.
    child_data = state(3, tag="X") | {"extra": [1, 2, 3]}
    child = fresh.create_backup(child_data)
    assert new_manager(repo_dir).load_backup(child) == child_data

    # Phase 2 with no backup running: every fossil in use comes back to chunks/.
    result = prune(new_manager(repo_dir).repository, grace=ZERO)
    assert result.resurrected == len(fossils), result
    assert result.deleted == 0
    assert fossils <= set(objects(repo_dir, "chunks"))
    assert objects(repo_dir, "fossils") == {}
    assert_all_good(repo_dir, {first: base, target: data, child: child_data})
    report = new_manager(repo_dir).check()
    assert report.orphaned_chunks == 0 and report.fossils == 0, report.to_json()


@FORMAT1
def test_structure_verify_accepts_fossilized_chunks(repo_dir: Path) -> None:
    """Regression: structure verification (``read_data=False``, also used by delete_backup to
    count good backups) used to look only in ``chunks/`` and reported a backup whose chunks
    sit in ``fossils/`` as damaged, although it reads fine."""
    manager = new_manager(repo_dir)
    manager.create_backup({"config": {"a": 1}})
    target = manager.create_backup(state(1, tag="S"))
    fossilize_in_use(manager, repo_dir, target)
    recovery = RecoveryManager(new_manager(repo_dir))
    assert recovery.verify_backup(target)  # full read: fine
    report = recovery.verify_backup_report(target, read_data=False)
    assert report.ok, report.problems


@FORMAT1
def test_child_of_a_parent_with_fossils_does_not_lose_chunks(repo_dir: Path) -> None:
    """Regression: a backup used to learn chunks from its parent unchecked. When the parent
    committed while its chunks were fossils and was deleted before the child committed, phase 2
    deleted chunks the child referenced (its lease started long after the collection, so it
    did not block). Now a backup reads the pending collection records after taking its lease
    and writes collected chunks again instead of reusing them unseen."""
    writer = new_manager(repo_dir)
    writer.create_backup({"base": "b"})
    payload = {"x": "payload-X" * 1000}
    parent = writer.create_backup(payload)
    fossilize_in_use(writer, repo_dir, parent)  # the parent committed while a collection ran
    # Time passes: the collection is now 10 minutes old (beyond CLOCK_SKEW).
    (record,) = (repo_dir / "gc").iterdir()
    collection = json.loads(record.read_text())
    old = datetime.fromisoformat(collection["time"].replace("Z", "+00:00"))
    collection["time"] = (old - timedelta(minutes=10)).isoformat()
    record.write_text(json.dumps(collection))

    child_manager = new_manager(repo_dir)
    pruner = new_manager(repo_dir)
    done: list[bool] = []

    def meanwhile(_amount: int) -> None:
        # The child has learned its parent's chunks; now retention deletes the parent and a
        # prune runs, before the child commits.
        if not done:
            done.append(True)
            pruner.repository.delete_snapshot(parent)
            prune(pruner.repository, grace=ZERO)

    child = child_manager.create_backup(payload, progress=meanwhile)
    assert done
    assert new_manager(repo_dir).load_backup(child) == payload


def test_reused_id_does_not_make_a_pruner_delete_live_chunks(repo_dir: Path) -> None:
    """Regression: another process may hand out the id of a deleted backup again (ids are
    time-based; the suffix search of a fresh process starts at 1). A long-lived pruner used to
    keep the deleted backup's manifest cached under that id, load the wrong data, compute the
    wrong references and delete the new backup's chunks. Manifests are now cached by the
    stored object's version."""
    config = BackupConfig(backup_path=repo_dir, retention_days=0)
    for _attempt in range(10):
        writer1, writer2, pruner = (BackupManager(config) for _ in range(3))
        writer1.create_backup({"keep": "k"})
        time.sleep(1.0 - (time.time() % 1.0) + 0.01)  # old and new in the same second
        old = writer1.create_backup({"v": "old-content" * 100})
        pruner.list_backups()  # the long-lived pruner has seen (and cached) it
        writer2.delete_backup(old)
        new = writer2.create_backup({"v": "new-content" * 100})
        if new != old:
            continue  # the second rolled over: the scenario did not arise, try again
        problems = []
        if pruner.load_backup(new) != {"v": "new-content" * 100}:
            problems.append("the long-lived process loads the deleted backup's data")
        prune(pruner.repository, grace=ZERO)
        prune(pruner.repository, grace=ZERO)
        try:
            new_manager(repo_dir).load_backup(new)
        except IntegrityError as exc:
            problems.append(f"after its prunes the new backup is lost: {exc}")
        assert problems == []
        return
    pytest.fail("could not stay within one second")


# -- leases ---------------------------------------------------------------------------------


@BOTH_FORMATS
def test_leases_live_dead_expired_and_foreign(repo_dir: Path, repository_format: int) -> None:
    make_repository(repo_dir, repository_format)
    manager = new_manager(repo_dir)
    kept, garbage = make_garbage(manager)
    store = LocalStore(repo_dir)

    # A live backup lease in this process, started before the collection.
    lease = Lease(store, BACKUP_LEASE_KIND, timedelta(minutes=10)).acquire()
    first = manager.prune(grace=ZERO)
    assert first.fossilized == len(garbage)
    blocked = manager.prune(grace=ZERO)
    assert blocked.deleted == 0 and blocked.resurrected == 0, blocked
    assert blocked.postponed and "still running" in blocked.postponed[0], blocked.postponed
    assert f"pid {os.getpid()}" in blocked.postponed[0]
    assert_collected_not_deleted(repo_dir, garbage)
    assert_all_good(repo_dir, kept)
    lease.release()

    # A lease of another host cannot be checked for a PID: unexpired, it blocks.
    foreign = write_lease(
        repo_dir,
        "foreign",
        pid=1,
        host="another-host.example",
        started=utc(-timedelta(hours=1)),
        expires=utc(timedelta(minutes=10)),
    )
    blocked = manager.prune(grace=ZERO)
    assert blocked.deleted == 0 and "another-host.example" in blocked.postponed[0], blocked
    assert_collected_not_deleted(repo_dir, garbage)
    foreign.unlink()

    # A dead PID on this host and an expired lease of a live PID block nothing, and go.
    dead = write_lease(
        repo_dir,
        "dead",
        pid=dead_pid(),
        started=utc(-timedelta(hours=1)),
        expires=utc(timedelta(minutes=10)),
    )
    expired = write_lease(
        repo_dir,
        "expired",
        pid=os.getpid(),
        started=utc(-timedelta(hours=1)),
        expires=utc(-timedelta(seconds=1)),
    )
    freed = manager.prune(grace=ZERO)
    assert freed.deleted == len(garbage), freed
    assert freed.postponed == []
    assert freed.stale_leases_removed == 2
    assert not dead.exists() and not expired.exists()
    assert_deleted(repo_dir, garbage)
    assert_all_good(repo_dir, kept)


# -- the prune lock ---------------------------------------------------------------------------


def write_config(directory: Path, repo: Path) -> None:
    (directory / "config.toml").write_text(
        f'[backup]\nbackup_path = "{repo}"\nretention_days = 0\n'
    )


@BOTH_FORMATS
def test_second_prune_is_busy_then_retry_lock_waits(
    repo_dir: Path,
    tmp_path: Path,
    run_cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    repository_format: int,
) -> None:
    write_config(tmp_path, repo_dir)
    make_repository(repo_dir, repository_format)
    manager = new_manager(repo_dir)
    kept, garbage = make_garbage(manager)
    store = LocalStore(repo_dir)
    lock = ExclusiveLock(store, "prune", timedelta(minutes=30)).acquire()
    lock_path = repo_dir / "locks" / "prune.lock"
    try:
        with pytest.raises(RepositoryBusyError, match="prune"):
            manager.prune(grace=ZERO)
        result = run_cli("--json", "prune", "--grace", "0s", cwd=tmp_path)
        assert result.returncode == 5, (result.stdout, result.stderr)
        error = json.loads(result.stdout)["error"]
        assert error["type"] == "RepositoryBusyError" and error["exit_code"] == 5
        assert f"pid {os.getpid()}" in error["message"]
        text = run_cli("prune", "--grace", "0s", cwd=tmp_path)
        assert text.returncode == 5 and "Traceback" not in text.stderr, text
        assert list((repo_dir / "gc").glob("*")) == []  # the busy prunes did nothing
        assert garbage <= stored_chunk_ids(repo_dir)

        # --retry-lock: the prune (in this process, so its waits can be seen) finds the lock
        # held and waits; the holder lets go during that wait, not before; the prune then
        # succeeds. The lock loop's sleeps are intercepted: no wall-clock time is involved.
        events: list[str] = []
        real_sleep = time.sleep

        def lock_wait(seconds: float) -> None:
            if sys._getframe(1).f_globals.get("__name__") != locks_module.__name__:
                real_sleep(seconds)
                return
            events.append("lock wait")
            if lock_path.exists():
                lock.release()
                events.append("holder released")

        with monkeypatch.context() as patch:
            patch.setattr(time, "sleep", lock_wait)
            waited = run_cli_inline(
                "--json", "prune", "--grace", "0s", "--retry-lock", "5s", cwd=tmp_path
            )
    finally:
        lock.release()  # (a no-op once released: it removes only its own lock)
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    assert json.loads(waited.stdout)["fossilized"] > 0
    assert events == ["lock wait", "holder released"], events
    assert not lock_path.exists()
    assert_deleted(repo_dir, garbage)
    assert_all_good(repo_dir, kept)


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    from src.infra.backup.repository.locks import ExclusiveLock
    from src.infra.backup.storage.local import LocalStore
    ExclusiveLock(LocalStore(sys.argv[1]), "prune", timedelta(minutes=30)).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


@BOTH_FORMATS
def test_lock_of_a_sigkilled_prune_is_broken_at_once(
    repo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    repository_format: int,
) -> None:
    make_repository(repo_dir, repository_format)
    manager = new_manager(repo_dir)
    kept, garbage = make_garbage(manager)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(repo_dir)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RepositoryBusyError, match=f"pid {holder.pid}"):
            manager.prune(grace=ZERO)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()  # reaped: the PID is gone (a zombie would still look alive)
    assert (repo_dir / "locks" / "prune.lock").exists()
    # At once: the lock of the dead PID is broken (logged as such), and nothing waited for it
    # (every sleep during the prune is recorded instead of slept).
    sleeps: list[float] = []
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(time, "sleep", sleeps.append)
        report = manager.prune(grace=ZERO)  # lock_wait 0: a live holder would raise
    assert sleeps == [], f"the prune waited: {sleeps}"
    assert f"breaking stale prune lock of {HOSTNAME} pid {holder.pid}" in caplog.text
    assert report.fossilized == report.deleted == len(garbage), report
    assert_deleted(repo_dir, garbage)
    assert not (repo_dir / "locks" / "prune.lock").exists()
    assert_all_good(repo_dir, kept)


class PausingStore(LocalStore):
    """Reads the prune lock, then waits for ``resume`` before returning what it read, so a
    contender acts on a stale view of the lock (a slow disk or scheduler can do the same)."""

    def __init__(self, root: Path, paused: threading.Event, resume: threading.Event) -> None:
        super().__init__(root)
        self.paused, self.resume, self.armed = paused, resume, True

    def get(self, key: str) -> bytes:
        data = super().get(key)
        if key.endswith("prune.lock") and self.armed:
            self.armed = False
            self.paused.set()
            self.resume.wait(10)
        return data


@BOTH_FORMATS
def test_two_contenders_breaking_a_stale_lock_do_not_both_get_it(
    repo_dir: Path, repository_format: int
) -> None:
    """Regression: breaking a stale lock used to be check-then-delete, so a contender acting
    on a stale read deleted the lock another one had just taken and both held it. Breaking now
    takes a ``.break`` token and re-reads the lock; release only removes its own lock."""
    make_repository(repo_dir, repository_format)
    (repo_dir / "locks").mkdir(exist_ok=True)
    stale = LeaseRecord(
        "prune", HOSTNAME, dead_pid(), utc(-timedelta(hours=1)), utc(timedelta(minutes=30))
    )
    (repo_dir / "locks" / "prune.lock").write_bytes(msgspec.json.encode(stale))
    paused, resume = threading.Event(), threading.Event()
    slow_store = PausingStore(repo_dir, paused, resume)
    results: dict[str, Any] = {}

    def slow() -> None:
        try:
            results["slow"] = ExclusiveLock(slow_store, "prune", timedelta(minutes=30)).acquire()
        except RepositoryBusyError as exc:
            results["slow"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    assert paused.wait(10)  # the slow contender has read the stale lock
    results["fast"] = ExclusiveLock(LocalStore(repo_dir), "prune", timedelta(minutes=30)).acquire()
    resume.set()
    thread.join(10)
    holders = [name for name, value in results.items() if isinstance(value, ExclusiveLock)]
    assert len(holders) == 1, f"both contenders hold the prune lock: {holders}"
    assert isinstance(results["slow"], RepositoryBusyError), results
    lock_path = repo_dir / "locks" / "prune.lock"
    on_disk = msgspec.json.decode(lock_path.read_bytes(), type=LeaseRecord)
    assert on_disk.started == results["fast"].started  # the winner's lock, intact
    # A lock object that does not hold the lock leaves it alone on release; the holder's goes.
    ExclusiveLock(LocalStore(repo_dir), "prune", timedelta(minutes=30)).release()
    assert lock_path.exists()
    results["fast"].release()
    assert not lock_path.exists()
    assert not (repo_dir / "locks" / "prune.lock.break").exists()


# -- real concurrent writers and a pruner ------------------------------------------------------

STATE_CODE = textwrap.dedent(
    """
    import hashlib, json

    def make_state(writer, n):
        # Shared trade history (deduplicated across writers) growing with n, plus own data.
        history = [{"id": i, "sym": "BTC/USDT", "px": round(100 + i * 0.25, 2),
                    "qty": i % 7 + 1, "side": "buy" if i % 2 else "sell"}
                   for i in range(2000 + 40 * n)]
        return {"history": history,
                "portfolio": {"writer": writer, "n": n, "equity": 10000 + 7 * n + writer}}

    def digest(data):
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    """
)

WRITER = STATE_CODE + textwrap.dedent(
    """
    import os, sys, time
    from src.infra.backup import BackupConfig, BackupManager

    repo, writer, count, log_path, go, backup_type = sys.argv[1:7]
    writer, count = int(writer), int(count)
    manager = BackupManager(BackupConfig(backup_path=repo, retention_days=0, auto_prune=False))
    live, start = [], 0
    if os.path.exists(log_path):  # restarted after a kill: resume after the last commit
        with open(log_path) as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record["op"] == "commit":
                    live.append(record["id"])
                    start = max(start, record["n"] + 1)
                elif record["op"] == "delete" and record["id"] in live:
                    live.remove(record["id"])
    log = open(log_path, "a")

    def note(**record):
        log.write(json.dumps(record) + "\\n")
        log.flush()
        os.fsync(log.fileno())

    while not os.path.exists(go):
        time.sleep(0.005)
    for n in range(start, count):
        data = make_state(writer, n)
        backup_id = manager.create_backup(data, backup_type=backup_type)
        note(op="commit", id=backup_id, n=n, sha=digest(data))
        if n % 3 == 2 and len(live) >= 3:
            victim = live.pop(0)
            note(op="delete", id=victim)  # intent first: a kill may come in between
            manager.delete_backup(victim, force=True)
            note(op="deleted", id=victim)
        live.append(backup_id)
    print("done", flush=True)
    """
)

PRUNER = textwrap.dedent(
    """
    import json, os, sys, time
    from datetime import timedelta
    from src.infra.backup import BackupConfig, BackupManager, RepositoryBusyError

    repo, stop = sys.argv[1], sys.argv[2]
    manager = BackupManager(BackupConfig(backup_path=repo, retention_days=0, auto_prune=False))
    stats = {"prunes": 0, "busy": 0, "fossilized": 0, "deleted": 0, "resurrected": 0,
             "postponed": 0, "stale_leases_removed": 0}
    while not os.path.exists(stop):
        try:
            report = manager.prune(grace=timedelta(0))
        except RepositoryBusyError:
            stats["busy"] += 1
            continue
        stats["prunes"] += 1
        for key in ("fossilized", "deleted", "resurrected", "stale_leases_removed"):
            stats[key] += getattr(report, key)
        stats["postponed"] += len(report.postponed)
        time.sleep(0.02)
    print(json.dumps(stats), flush=True)
    """
)


def assert_only_packs_a_prune_keeps(repo: Path, referenced: set[str]) -> None:
    """Format 2: a pack keeps the blobs of deleted backups (orphans) until they are more than
    ``1 - REPACK_BELOW`` of its blobs; then a prune repacks it, and a pack of nothing but
    orphans goes whole. After a prune with nothing running no other pack is left, and the
    packs the index lists are the packs stored."""
    packs = pack_entries(repo)
    stored = {p.name for p in (repo / "packs").rglob("*") if p.is_file()}
    assert set(packs) == {name for name in stored if not name.startswith(".")}
    for pack_id, entry in packs.items():
        live = sum(blob.length for blob in entry.blobs if blob.id in referenced)
        data = sum(blob.length for blob in entry.blobs)
        assert live >= REPACK_BELOW * data, (pack_id, live, data)


def read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line torn by the kill
    return records


def test_listing_survives_a_concurrent_delete(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: an object deleted by another process between the directory scan and the
    stat used to raise a raw FileNotFoundError out of every listing (list_backups, prune,
    check); a vanished object is now skipped. The race is forced by deleting a manifest right
    after the directory was read (nothing real hits that window reliably)."""
    manager = new_manager(repo_dir)
    ids = [manager.create_backup({"n": n}) for n in range(3)]
    victim = repo_dir / "snapshots" / f"{ids[1]}.json"
    real_scandir = os.scandir

    class ScanThenDelete:
        def __init__(self, path: str) -> None:
            with real_scandir(path) as entries:
                self.entries = list(entries)
            if Path(path) == victim.parent:
                victim.unlink()  # another process deletes a backup now

        def __enter__(self) -> ScanThenDelete:
            return self

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            return iter(self.entries)

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(local_store_module.os, "scandir", ScanThenDelete)
    keys = [info.key for info in LocalStore(repo_dir).list_info("snapshots/")]
    monkeypatch.undo()
    assert sorted(keys) == sorted(f"snapshots/{i}.json" for i in (ids[0], ids[2]))
    assert [b.backup_id for b in new_manager(repo_dir).list_backups()] == [ids[2], ids[0]]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("shared_type", [False, True], ids=["own-types", "shared-type"])
@BOTH_FORMATS
def test_concurrent_writers_and_pruner_lose_nothing(
    tmp_path: Path, shared_type: bool, repository_format: int
) -> None:
    """3 writer processes (one SIGKILLed midway and restarted) and a pruner looping with
    grace 0 (collecting and deleting in each run). Every backup committed and not deleted must
    list, load equal to what was written and verify; ``check`` must be clean with no fossils
    or orphans left (format 2: orphans only in packs a prune keeps, see
    :func:`assert_only_packs_a_prune_keeps`). Guards, among others, the listing race and the
    reused-id stale cache (regression tests above), which no longer have any escape here."""
    repo = tmp_path / "repo"
    go, stop = tmp_path / "go", tmp_path / "stop"
    writers, per_writer = 3, 30
    logs = [tmp_path / f"writer{w}.log" for w in range(writers)]
    types = ["pre_trade"] * writers if shared_type else [f"w{w}" for w in range(writers)]
    # The repository exists (in the format tested) before anyone races.
    make_repository(repo, repository_format)
    new_manager(repo).create_backup({"seed": 0})

    def start_writer(w: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(repo),
                str(w),
                str(per_writer),
                str(logs[w]),
                str(go),
                types[w],
            ],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = [start_writer(w) for w in range(writers)]
    pruner = subprocess.Popen(
        [sys.executable, "-c", PRUNER, str(repo), str(stop)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    go.touch()

    # SIGKILL writer 0 midway, then restart it (it resumes after its last logged commit).
    kills = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        commits = [r for r in read_log(logs[0]) if r["op"] == "commit"] if logs[0].exists() else []
        if len(commits) >= per_writer // 3 or procs[0].poll() is not None:
            break
        time.sleep(0.01)
    if procs[0].poll() is None:
        time.sleep(0.013 * (os.getpid() % 5))  # a varying moment inside a backup
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].communicate(timeout=30)
        assert procs[0].returncode == -signal.SIGKILL
        kills += 1
        procs[0] = start_writer(0)
    for w, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"writer {w}: {err}"
        assert out.strip().endswith("done"), f"writer {w}: {out}"
    stop.touch()
    out, err = pruner.communicate(timeout=60)
    assert pruner.returncode == 0, f"pruner: {err}"
    pruner_stats = json.loads(out.strip().splitlines()[-1])
    # Nothing runs any more: one prune settles every collection (the killed writer's lease
    # belongs to a dead PID and blocks nothing); a second one finds nothing to do. Packs may
    # take a few passes more (small packs a repack made are merged once there are enough),
    # but prune settles.
    final = [prune(new_manager(repo).repository, grace=ZERO) for _ in range(2)]
    while repository_format == 2 and final[-1].packs_collected and len(final) < 5:
        final.append(prune(new_manager(repo).repository, grace=ZERO))
    assert final[-1].fossilized == final[-1].deleted == final[-1].resurrected == 0, final[-1]
    assert final[-1].packs_collected == final[-1].packs_repacked == 0, final[-1]
    assert final[-1].postponed == [], final[-1]

    # What the writers recorded.
    exec_ns: dict[str, Any] = {}
    exec(compile(STATE_CODE, "<state>", "exec"), exec_ns)
    make_state, digest = exec_ns["make_state"], exec_ns["digest"]
    must_exist: dict[str, tuple[int, int, str]] = {}
    created = deletes = 0
    for w, log in enumerate(logs):
        live: dict[str, tuple[int, int, str]] = {}
        for record in read_log(log):
            if record["op"] == "commit":
                created += 1
                live[record["id"]] = (w, record["n"], record["sha"])
            elif record["op"] == "delete":
                live.pop(record["id"], None)  # intent logged first: may or may not be gone
            elif record["op"] == "deleted":
                deletes += 1
        for backup_id, value in live.items():
            assert backup_id not in must_exist, f"{backup_id} committed by two writers"
            must_exist[backup_id] = value

    manager = new_manager(repo)
    listed = {info.backup_id for info in manager.list_backups()}
    lost = sorted(set(must_exist) - listed)
    wrong: list[str] = []
    unreadable: list[str] = []
    for backup_id in sorted(listed):
        try:
            data = manager.load_backup(backup_id)
        except Exception as exc:
            unreadable.append(f"{backup_id}: {type(exc).__name__}: {exc}")
            continue
        if data == {"seed": 0}:
            continue
        portfolio = data["portfolio"]
        if data != make_state(portfolio["writer"], portfolio["n"]):
            wrong.append(backup_id)
        if backup_id in must_exist:
            w, n, sha = must_exist[backup_id]
            if (portfolio["writer"], portfolio["n"]) != (w, n) or digest(data) != sha:
                wrong.append(backup_id)
    report = manager.check()
    assert lost == [], f"committed, never deleted, but gone: {lost}"
    assert unreadable == [], unreadable
    assert wrong == [], wrong
    assert report.clean, report.to_json()
    assert report.fossils == 0, report.to_json()
    if repository_format == 1:
        assert report.orphaned_chunks == 0, report.to_json()
    else:
        assert_only_packs_a_prune_keeps(repo, set(referenced_chunks(manager.repository)))
    recovery = RecoveryManager(manager)
    for backup_id in listed:
        assert recovery.verify_backup(backup_id), backup_id
    assert kills == 1
    assert created >= writers * per_writer
    assert deletes > 0 and pruner_stats["prunes"] > 0, pruner_stats  # all of it concurrently
