"""Garbage collection (``prune``): two-phase fossil collection, leases, the prune lock, and
real concurrent writer and pruner processes.

Tests marked ``xfail(strict=True)`` reproduce bugs found while writing this file; each names
the suspected place in ``src/``. When a bug is fixed its test passes and the strict marker makes
that visible, so the marker can be dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from src.infra.backup import (
    BackupConfig,
    BackupManager,
    IntegrityError,
    RecoveryManager,
    RepositoryBusyError,
)
from src.infra.backup.gc import prune, referenced_chunks
from src.infra.backup.locks import HOSTNAME, ExclusiveLock, Lease, LeaseRecord
from src.infra.backup.repository import BACKUP_LEASE_KIND
from src.infra.backup.storage.local import LocalStore

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAIN_SCRIPT = PROJECT_ROOT / "src" / "infra" / "backup" / "__main__.py"
ZERO = timedelta(0)
CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]


# -- helpers ------------------------------------------------------------------------------


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


# -- prune basics ---------------------------------------------------------------------------


def test_prune_collects_then_deletes_only_unreferenced_chunks(
    manager: BackupManager, repo_dir: Path
) -> None:
    kept, garbage = make_garbage(manager, count=5)
    referenced = in_use(manager)
    before = chunk_state(repo_dir)
    assert garbage <= set(before) and referenced <= set(before)

    first = manager.prune(grace=ZERO)
    assert first.fossilized == len(garbage), first
    assert first.referenced_chunks == len(referenced)
    assert set(objects(repo_dir, "fossils")) == garbage
    after = chunk_state(repo_dir)
    assert set(after) == referenced
    for cid in referenced:  # referenced chunks are never touched: same bytes, same mtime
        assert after[cid] == before[cid], cid
    assert_all_good(repo_dir, kept)

    second = manager.prune(grace=ZERO)
    total = first.deleted + second.deleted
    assert total == len(garbage), (first, second)
    assert first.deleted_bytes + second.deleted_bytes == sum(len(before[cid][0]) for cid in garbage)
    assert objects(repo_dir, "fossils") == {}
    assert list((repo_dir / "gc").glob("*")) == []
    assert chunk_state(repo_dir) == {cid: before[cid] for cid in referenced}
    report = new_manager(repo_dir).check()
    assert report.clean and report.orphaned_chunks == 0 and report.fossils == 0, report.to_json()
    assert_all_good(repo_dir, kept)
    # Nothing left to do; the repository keeps working.
    third = manager.prune(grace=ZERO)
    assert (third.fossilized, third.deleted, third.resurrected) == (0, 0, 0)
    extra = manager.create_backup(state(9))
    kept[extra] = state(9)
    assert_all_good(repo_dir, kept)
    print(
        f"\nprune basics: {len(garbage)} garbage chunks of {len(before)}; "
        f"run 1 {first.fossilized} fossilized/{first.deleted} deleted, "
        f"run 2 {second.deleted} deleted ({second.deleted_bytes} bytes)"
    )


@pytest.mark.xfail(
    strict=True,
    reason="BUG gc.py:118-120: prune() runs phase 2 (_delete_collected) before phase 1 "
    "(_collect), so a collection is never deleted in the run that made it, although the "
    "module docstring says 'in a later run (or the same one)' and grace=0 allows it",
)
def test_grace_zero_prune_deletes_in_the_same_run(manager: BackupManager, repo_dir: Path) -> None:
    _, garbage = make_garbage(manager)
    report = manager.prune(grace=ZERO)
    assert report.deleted == len(garbage), report
    assert objects(repo_dir, "fossils") == {}


def test_prune_dry_run_reports_and_changes_nothing(
    repo_dir: Path, tmp_path: Path, run_cli: CliRunner
) -> None:
    (tmp_path / "config.toml").write_text(
        f'[backup]\nbackup_path = "{repo_dir}"\nretention_days = 0\n'
    )
    manager = new_manager(repo_dir)
    kept, garbage = make_garbage(manager, count=4)
    sizes = {cid: p.stat().st_size for cid, p in objects(repo_dir, "chunks").items()}

    def dry_run() -> dict[str, Any]:
        before = listing(repo_dir)
        result = run_cli("--json", "prune", "--dry-run", "--grace", "0s", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert listing(repo_dir) == before, "a dry run changed the repository"
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed

    # Phase 1 pending: the garbage would be collected, and freed once deleted.
    report = dry_run()
    assert report["dry_run"] is True
    assert report["fossilized"] == len(garbage)
    assert report["fossilized_bytes"] == sum(sizes[c] for c in garbage)
    assert report["freed_bytes"] == sum(sizes[c] for c in garbage)
    assert objects(repo_dir, "fossils") == {}

    # Phase 2 pending: the fossils would be deleted.
    manager.prune(grace=ZERO)
    assert set(objects(repo_dir, "fossils")) == garbage
    report = dry_run()
    assert report["deleted"] == len(garbage)
    assert report["freed_bytes"] == sum(sizes[c] for c in garbage)
    assert report["fossilized"] == 0
    assert set(objects(repo_dir, "fossils")) == garbage

    # The human form says it is a dry run.
    text = run_cli("prune", "--dry-run", "--grace", "0s", cwd=tmp_path)
    assert text.returncode == 0 and "Dry run" in text.stdout, text
    assert_all_good(repo_dir, kept)


def test_default_grace_collects_only_old_chunks_and_deletes_only_old_collections(
    repo_dir: Path,
) -> None:
    manager = new_manager(repo_dir)  # prune_grace defaults to 1h
    assert manager.config.grace == timedelta(hours=1)
    kept, garbage = make_garbage(manager)
    referenced = in_use(manager)

    young = manager.prune()
    assert young.fossilized == 0 and young.deleted == 0, young
    assert objects(repo_dir, "fossils") == {}

    # Age every chunk by two hours: now the garbage is old enough, the rest still in use.
    two_hours_ago = time.time() - 7200
    for path in objects(repo_dir, "chunks").values():
        os.utime(path, (two_hours_ago, two_hours_ago))
    old = manager.prune()
    assert old.fossilized == len(garbage) and old.deleted == 0, old
    assert set(objects(repo_dir, "fossils")) == garbage
    assert set(objects(repo_dir, "chunks")) == referenced  # old but referenced: kept

    again = manager.prune()  # the collection is younger than an hour
    assert again.deleted == 0 and any("younger" in p for p in again.postponed), again

    repository = manager.repository
    short = timedelta(seconds=1)
    soon = prune(repository, grace=short)
    if soon.deleted == 0:  # the usual case: less than a second since the collection
        assert soon.postponed, soon
        assert set(objects(repo_dir, "fossils")) == garbage
        time.sleep(1.1)
        soon = prune(repository, grace=short)
    assert soon.deleted == len(garbage), soon
    assert objects(repo_dir, "fossils") == {}
    assert_all_good(repo_dir, kept)


# -- fossils and the reader fallback --------------------------------------------------------


def fossilize_in_use(manager: BackupManager, repo: Path, backup_id: str) -> set[str]:
    """Run phase 1 while ``backup_id``'s manifest is away (as if the backup had not committed
    yet), then put the manifest back: its own chunks now sit in ``fossils/``."""
    manifest = repo / "snapshots" / f"{backup_id}.json"
    aside = repo.parent / "manifest.aside"
    shutil.move(manifest, aside)
    try:
        report = prune(new_manager(repo).repository, grace=ZERO)
    finally:
        shutil.move(aside, manifest)
    fossils = set(objects(repo, "fossils"))
    assert report.fossilized == len(fossils) > 0
    return fossils


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


@pytest.mark.xfail(
    strict=True,
    reason="BUG repository.py verify_snapshot (read_data=False branch, "
    "`elif not self.store.exists(chunk_key(ref.id))`): structure verification ignores "
    "fossils/, so a backup that reads fine is reported damaged (and delete_backup, which uses "
    "it, no longer counts it as a good backup)",
)
def test_structure_verify_accepts_fossilized_chunks(repo_dir: Path) -> None:
    manager = new_manager(repo_dir)
    manager.create_backup({"config": {"a": 1}})
    target = manager.create_backup(state(1, tag="S"))
    fossilize_in_use(manager, repo_dir, target)
    recovery = RecoveryManager(new_manager(repo_dir))
    assert recovery.verify_backup(target)  # full read: fine
    report = recovery.verify_backup_report(target, read_data=False)
    assert report.ok, report.problems


@pytest.mark.xfail(
    strict=True,
    reason="BUG gc.py (docstring claim 'A backup that started after a collection cannot refer "
    "to its fossils' + _delete_collected's lease check) / repository.py _known_chunks: a backup "
    "learns chunks from its parent without checking them; when the parent itself committed "
    "while its chunks were fossils and is deleted before the child commits, phase 2 deletes "
    "the chunks the child is about to reference (leases started > CLOCK_SKEW after the "
    "collection do not block; nor does a child whose lease appears after prune() listed the "
    "leases, which loses the chunk within seconds) -> the committed child is unreadable",
)
def test_child_of_a_parent_with_fossils_does_not_lose_chunks(repo_dir: Path) -> None:
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


@pytest.mark.xfail(
    strict=True,
    reason="BUG repository.py _commit (suffix search starts at 1: the id of a deleted backup "
    "is handed out again) + read_manifest's per-process cache (list_snapshots only evicts ids "
    "absent at listing time): a long-lived pruner keeps the deleted backup's manifest under "
    "the reused id, computes the wrong references and deletes the new backup's chunks",
)
def test_reused_id_does_not_make_a_pruner_delete_live_chunks(repo_dir: Path) -> None:
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
            pytest.fail(f"id not reused ({old} -> {new}): the bug is fixed")
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


def test_leases_live_dead_expired_and_foreign(repo_dir: Path) -> None:
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
    assert set(objects(repo_dir, "fossils")) == garbage
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
    assert objects(repo_dir, "fossils") == {}
    assert_all_good(repo_dir, kept)


# -- the prune lock ---------------------------------------------------------------------------


def write_config(directory: Path, repo: Path) -> None:
    (directory / "config.toml").write_text(
        f'[backup]\nbackup_path = "{repo}"\nretention_days = 0\n'
    )


def test_second_prune_is_busy_then_retry_lock_waits(
    repo_dir: Path, tmp_path: Path, run_cli: CliRunner
) -> None:
    write_config(tmp_path, repo_dir)
    manager = new_manager(repo_dir)
    kept, _ = make_garbage(manager)
    store = LocalStore(repo_dir)
    lock = ExclusiveLock(store, "prune", timedelta(minutes=30)).acquire()
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
    finally:
        timer = threading.Timer(1.0, lock.release)
        timer.start()
    started = time.monotonic()
    waited = run_cli("--json", "prune", "--grace", "0s", "--retry-lock", "5s", cwd=tmp_path)
    elapsed = time.monotonic() - started
    timer.join()
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    assert json.loads(waited.stdout)["fossilized"] > 0
    assert elapsed >= 0.5, f"--retry-lock returned after {elapsed:.2f} s: it did not wait"
    assert not (repo_dir / "locks" / "prune.lock").exists()
    assert_all_good(repo_dir, kept)
    print(f"\n--retry-lock 5s succeeded after {elapsed:.2f} s (lock released after 1 s)")


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    from src.infra.backup.locks import ExclusiveLock
    from src.infra.backup.storage.local import LocalStore
    ExclusiveLock(LocalStore(sys.argv[1]), "prune", timedelta(minutes=30)).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_lock_of_a_sigkilled_prune_is_broken_at_once(repo_dir: Path) -> None:
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
    started = time.monotonic()
    report = manager.prune(grace=ZERO)  # no waiting allowed
    elapsed = time.monotonic() - started
    assert report.fossilized == len(garbage)
    assert elapsed < 2.0, elapsed
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


@pytest.mark.xfail(
    strict=True,
    reason="BUG locks.py ExclusiveLock.acquire (stale-lock branch: `_holder()` then "
    "`self.store.delete(self.key)`): breaking a stale lock is check-then-delete, so a contender "
    "that read the stale lock deletes the lock another process has just taken, and both "
    "'hold' it (release() also deletes without checking ownership)",
)
def test_two_contenders_breaking_a_stale_lock_do_not_both_get_it(repo_dir: Path) -> None:
    (repo_dir / "locks").mkdir()
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
    races = 0

    def retry(function, *args, **kwargs):
        # A listing that raced with another process's delete fails before anything is
        # written or deleted (the known bug test_listing_survives_a_concurrent_delete):
        # count it and try again, so the rest of the scenario still runs.
        global races
        while True:
            try:
                return function(*args, **kwargs)
            except FileNotFoundError:
                races += 1

    def note(**record):
        log.write(json.dumps(record) + "\\n")
        log.flush()
        os.fsync(log.fileno())

    while not os.path.exists(go):
        time.sleep(0.005)
    for n in range(start, count):
        data = make_state(writer, n)
        backup_id = retry(manager.create_backup, data, backup_type=backup_type)
        note(op="commit", id=backup_id, n=n, sha=digest(data))
        if n % 3 == 2 and len(live) >= 3:
            victim = live.pop(0)
            note(op="delete", id=victim)  # intent first: a kill may come in between
            retry(manager.delete_backup, victim, force=True)
            note(op="deleted", id=victim)
        live.append(backup_id)
    print(f"done {races}", flush=True)
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
             "postponed": 0, "stale_leases_removed": 0, "list_races": 0}
    while not os.path.exists(stop):
        try:
            report = manager.prune(grace=timedelta(0))
        except RepositoryBusyError:
            stats["busy"] += 1
            continue
        except FileNotFoundError:  # the known listing race: count it, go on
            stats["list_races"] += 1
            continue
        stats["prunes"] += 1
        for key in ("fossilized", "deleted", "resurrected", "stale_leases_removed"):
            stats[key] += getattr(report, key)
        stats["postponed"] += len(report.postponed)
        time.sleep(0.02)
    print(json.dumps(stats), flush=True)
    """
)


def read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line torn by the kill
    return records


@pytest.mark.xfail(
    strict=True,
    reason="BUG storage/local.py list_info/_info (`entry.stat(...)` after os.scandir): an "
    "object deleted by another process between the directory scan and the stat raises a raw "
    "FileNotFoundError (not even a BackupError) out of list_backups, delete_backup, prune "
    "(lease, temp and chunk listings) and check",
)
def test_listing_survives_a_concurrent_delete(repo_dir: Path) -> None:
    manager = new_manager(repo_dir)
    ids = [manager.create_backup({"n": n}) for n in range(3)]
    store = LocalStore(repo_dir)
    listing_iter = store.list_info("snapshots/")
    first = next(listing_iter)  # the directory has been scanned
    for backup_id in ids:  # another process deletes a backup now
        if not first.key.endswith(f"/{backup_id}.json"):
            (repo_dir / "snapshots" / f"{backup_id}.json").unlink()
            break
    rest = list(listing_iter)
    assert len(rest) == 1


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("shared_type", [False, True], ids=["own-types", "shared-type"])
def test_concurrent_writers_and_pruner_lose_nothing(tmp_path: Path, shared_type: bool) -> None:
    """3 writer processes (one SIGKILLed midway and restarted) and a pruner looping with
    grace 0. Any failure fails the test, except manifestations of the two known bugs
    reproduced deterministically above (the listing race, which the processes survive by
    retrying; reused ids with a stale manifest cache), which end it as xfail naming what
    happened."""
    repo = tmp_path / "repo"
    go, stop = tmp_path / "go", tmp_path / "stop"
    writers, per_writer = 3, 30
    logs = [tmp_path / f"writer{w}.log" for w in range(writers)]
    types = ["pre_trade"] * writers if shared_type else [f"w{w}" for w in range(writers)]
    new_manager(repo).create_backup({"seed": 0})  # the repository exists before anyone races
    known: list[str] = []

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

    started = time.monotonic()
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
    races = 0
    for w, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"writer {w}: {err}"
        races += int(out.split("done ")[-1])
    stop.touch()
    out, err = pruner.communicate(timeout=60)
    assert pruner.returncode == 0, f"pruner: {err}"
    pruner_stats = json.loads(out.strip().splitlines()[-1])
    races += pruner_stats["list_races"]
    if races:
        known.append(f"listing raced with a delete {races} times (FileNotFoundError, retried)")
    # Nothing runs any more: two final prunes settle every collection.
    final = [prune(new_manager(repo).repository, grace=ZERO) for _ in range(2)]

    # What the writers recorded.
    exec_ns: dict[str, Any] = {}
    exec(compile(STATE_CODE, "<state>", "exec"), exec_ns)
    make_state, digest = exec_ns["make_state"], exec_ns["digest"]
    must_exist: dict[str, tuple[int, int, str]] = {}
    created = deletes = 0
    commits_per_id: dict[str, int] = {}
    for w, log in enumerate(logs):
        live: dict[str, tuple[int, int, str]] = {}
        for record in read_log(log):
            if record["op"] == "commit":
                created += 1
                commits_per_id[record["id"]] = commits_per_id.get(record["id"], 0) + 1
                live[record["id"]] = (w, record["n"], record["sha"])
            elif record["op"] == "delete":
                live.pop(record["id"], None)  # intent logged first: may or may not be gone
            elif record["op"] == "deleted":
                deletes += 1
        for backup_id, value in live.items():
            assert backup_id not in must_exist, f"{backup_id} committed by two writers"
            must_exist[backup_id] = value
    reused = {backup_id for backup_id, count in commits_per_id.items() if count > 1}

    manager = new_manager(repo)
    listed = {info.backup_id for info in manager.list_backups()}
    lost = sorted(set(must_exist) - listed)
    wrong: list[str] = []
    unreadable: list[str] = []
    for backup_id in sorted(listed):
        try:
            data = manager.load_backup(backup_id)
        except Exception as exc:
            unreadable.append(backup_id)
            print(f"unreadable {backup_id}: {type(exc).__name__}: {exc}")
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
    elapsed = time.monotonic() - started
    print(
        f"\nconcurrency ({'shared type' if shared_type else 'own types'}): processes "
        f"{writers + 1 + kills}, backups created {created} (logged), deletes {deletes}, "
        f"prunes {pruner_stats['prunes'] + len(final)} (busy {pruner_stats['busy']}), "
        f"fossilized {pruner_stats['fossilized']}, deleted {pruner_stats['deleted']}, "
        f"resurrected {pruner_stats['resurrected'] + sum(r.resurrected for r in final)}, "
        f"postponed {pruner_stats['postponed']}, kills {kills}, listed {len(listed)}, "
        f"list races {races}, ids reused {len(reused)}, lost {len(lost)}, "
        f"unreadable {len(unreadable)}, wrong {len(wrong)}; {elapsed:.1f} s"
    )
    damaged = set(lost) | set(unreadable) | set(wrong)
    if damaged and damaged <= reused:
        known.append(f"backups with reused ids lost or wrong: {sorted(damaged)}")
    else:
        assert lost == [], f"committed, never deleted, but gone: {lost}"
        assert unreadable == [], unreadable
        assert wrong == [], wrong
        assert report.clean, report.to_json()
        assert report.fossils == 0 and report.orphaned_chunks == 0, report.to_json()
        recovery = RecoveryManager(manager)
        for backup_id in listed:
            assert recovery.verify_backup(backup_id), backup_id
    assert kills == 1
    assert created >= writers * per_writer
    if known:
        print("known bugs hit: " + "; ".join(known))
        pytest.xfail("known bugs hit: " + "; ".join(known))
