"""Restoring a tree into a directory several files at once (``files/tree_restore.py``,
``files/tree_write.py``): the same tree as before, byte for byte, whichever way files are
made durable; files really written at once; the first failure stops the rest and leaves no
temp file and no half-written file; a file is renamed only once its content is durable;
memory and queues bounded. Mechanisms, never timings."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import stat
import threading
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stored_chunks import damage_chunk, is_packed

from src.infra.backup import BackupManager, RecoveryError, RecoveryManager
from src.infra.backup.errors import CorruptDataError, IntegrityError
from src.infra.backup.files import tree_restore, tree_write
from src.infra.backup.format.manifest import ChunkRef, Entry
from tests.factories import fresh_manager, write_tree

MODES = ("syncfs", "fsync")


@pytest.fixture(params=MODES)
def durability(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """Each test runs with both ways of making files durable (syncfs batches where this
    file system has them, an fsync per file everywhere); batches kept small."""
    mode = str(request.param)
    if mode == "fsync":
        monkeypatch.setattr(tree_write, "syncfs_for", lambda fd: None)
    else:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if tree_write.syncfs_for(fd) is None:
                pytest.skip("no safe syncfs for this file system")
        finally:
            os.close(fd)
        monkeypatch.setattr(tree_write, "BATCH_FILES", 7)
        monkeypatch.setattr(tree_write, "BATCH_DIRS", 3)
    monkeypatch.setattr(tree_restore, "FILE_WORKERS", 3)
    monkeypatch.setattr(tree_restore, "IO_WORKERS", 3)
    return mode


def mixed_tree(root: Path, *, small: int = 120, seed: int = 7) -> Path:
    """``root/state``: many small files in nested directories, multi-chunk files (random and
    compressible), an empty file, hard links, symbolic links, directory modes and mtimes."""
    rng = random.Random(seed)
    files = {}
    for i in range(small):
        name = f"d{i % 9}/sub{i % 4}/f{i:04d}.json"
        body = json.dumps({"i": i, "pad": "x" * rng.randint(0, 3000)}).encode()
        files[name] = (
            body,
            (0o644, 0o600, 0o640, 0o444, 0o755)[i % 5],
            1_600_000_000_000_000_000 + i,
        )
    files["big/random.bin"] = (rng.randbytes(900_000), 0o640, 1_650_000_000_123_456_789)
    lines = b"".join(b'{"trade": %d, "price": %d.25}\n' % (i, i * 7) for i in range(60_000))
    files["big/trades.jsonl"] = (lines, 0o600, 1_650_000_001_000_000_000)
    files["empty.txt"] = (b"", 0o644, 1_600_000_000_000_000_000)
    state = write_tree(root / "state", files)
    os.link(state / "big" / "random.bin", state / "big" / "zz-random.bin")  # sorts after it
    os.symlink("big/trades.jsonl", state / "latest.jsonl")
    os.symlink("missing-target", state / "dangling")
    (state / "hollow" / "deeper").mkdir(parents=True)
    os.chmod(state / "hollow", 0o750)
    os.utime(state / "hollow" / "deeper", ns=(1_600_000_000_123_456_789,) * 2)
    for folder in sorted((p for p in state.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        os.utime(folder, ns=(1_610_000_000_000_000_000 + len(folder.parts),) * 2)
    return state


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Relative path -> (kind, mode, mtime, content or link text, hard-link group)."""
    found: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        name = path.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            found[name] = ("link", None, st.st_mtime_ns, os.readlink(path), None)
        elif stat.S_ISDIR(st.st_mode):
            found[name] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, None, None)
        else:
            group = inodes.setdefault(st.st_ino, name) if st.st_nlink > 1 else None
            found[name] = (
                "file",
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns,
                path.read_bytes(),
                group,
            )
    return found


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*")) if root.exists() else []


def tree_manager(tmp_path: Path) -> BackupManager:
    return fresh_manager(tmp_path / "repo", sources=["state/"], base_dir=str(tmp_path))


def damage_stored(manager: BackupManager, ref: ChunkRef, how: str) -> None:
    """Damage the stored chunk of ``ref`` (in a pack, by default: see tests/stored_chunks.py)."""
    repo = manager.config.repository_path
    assert is_packed(repo)  # the default format
    damage_chunk(repo, ref.id, how)  # type: ignore[arg-type]


def entry_named(manager: BackupManager, backup_id: str, name: str) -> Entry:
    (entry,) = [e for e in manager.repository.read_manifest(backup_id).entries if e.name == name]
    return entry


def wrap_read_chunk(
    manager: BackupManager, monkeypatch: pytest.MonkeyPatch, hook: Callable[[ChunkRef], None]
) -> None:
    """Call ``hook`` before every chunk the restore reads."""
    repository = manager.repository
    real = repository.read_chunk

    def read_chunk(ref: ChunkRef) -> bytes:
        hook(ref)
        return real(ref)

    monkeypatch.setattr(repository, "read_chunk", read_chunk)


# -- the tree, as it was -----------------------------------------------------------------------


DATA = {"portfolio": {"equity": [1.5, 2.5], "open": {"BTC": 0.1}}, "notes": ["a", "b"]}


@pytest.mark.parametrize("verify", [False, True])
def test_tree_is_restored_identically(tmp_path: Path, durability: str, verify: bool) -> None:
    state = mixed_tree(tmp_path)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(DATA, include_files=True)
    manifest = manager.repository.read_manifest(backup_id)
    assert max(len(manager.repository.entry_refs(e)) for e in manifest.entries) > 10
    target = tmp_path / "restored"
    result = RecoveryManager(manager).restore_to_directory(backup_id, target, verify=verify)

    assert snapshot(target / "state") == snapshot(state)
    for name, value in DATA.items():
        assert json.loads((target / f"{name}.json").read_text()) == value
    assert temp_files(target) == []
    assert result.verified is verify

    def where(entry: Entry) -> Path:
        return target / (f"{entry.name}.json" if entry.kind == "data" else entry.name)

    # data and files in entry order, then hard links, then symbolic links
    entries = manifest.entries
    contents = [where(e) for e in entries if e.kind in ("data", "file")]
    links = [where(e) for e in entries if e.kind == "hardlink"]
    assert result.written == contents + links + [where(e) for e in entries if e.kind == "symlink"]
    assert result.bytes_written == sum(path.stat().st_size for path in contents)


def test_verify_reports_the_first_file_that_differs(
    tmp_path: Path, durability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files read back in parallel; of two that differ, the first in entry order is named."""
    mixed_tree(tmp_path, small=60)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    repository = manager.repository
    real = repository.file_matches_entry
    bad = ("state/d7/sub3/f0007.json", "state/d2/sub2/f0002.json")

    def matches(path: Path, entry: Entry) -> bool:
        return entry.name not in bad and real(path, entry)

    monkeypatch.setattr(repository, "file_matches_entry", matches)
    target = tmp_path / "restored"
    with pytest.raises(IntegrityError, match=r"restored .*/state/d2/sub2/f0002\.json differs"):
        RecoveryManager(manager).restore_to_directory(backup_id, target, verify=True)
    RecoveryManager(manager).restore_to_directory(backup_id, target)  # without verify: fine


def test_restore_into_a_tree_that_already_has_the_files(tmp_path: Path, durability: str) -> None:
    """Restoring twice into one target replaces every file (atomically) and stays identical."""
    state = mixed_tree(tmp_path, small=30)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    target = tmp_path / "restored"
    RecoveryManager(manager).restore_to_directory(backup_id, target)
    (target / "state" / "d0" / "sub0" / "f0000.json").write_bytes(b"changed")
    RecoveryManager(manager).restore_to_directory(backup_id, target, verify=True)
    assert snapshot(target / "state") == snapshot(state)
    assert temp_files(target) == []


def test_a_link_where_a_file_goes_is_refused(tmp_path: Path, durability: str) -> None:
    mixed_tree(tmp_path, small=10)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    outside = tmp_path / "outside.json"
    outside.write_text("not ours\n")
    target = tmp_path / "restored"
    (target / "state" / "d3" / "sub3").mkdir(parents=True)
    os.symlink(outside, target / "state" / "d3" / "sub3" / "f0003.json")
    with pytest.raises(RecoveryError, match="a link or directory is there"):
        RecoveryManager(manager).restore_to_directory(backup_id, target)
    assert outside.read_text() == "not ours\n"
    assert temp_files(target) == []


# -- several files at once --------------------------------------------------------------------


def test_several_files_are_written_at_once(
    tmp_path: Path, durability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first chunks read by the restore wait for each other at a barrier: a restore that
    wrote one file at a time would break it (BrokenBarrierError) instead of finishing."""
    state = mixed_tree(tmp_path, small=40)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    meeting = threading.Barrier(3, timeout=30)
    calls = itertools.count()
    threads: set[str] = set()

    def hook(ref: ChunkRef) -> None:
        threads.add(threading.current_thread().name)
        if next(calls) < 3:
            meeting.wait()  # three files in progress at the same moment

    wrap_read_chunk(manager, monkeypatch, hook)
    RecoveryManager(manager).restore_to_directory(backup_id, tmp_path / "restored")
    assert len({t for t in threads if t.startswith("peak-backup-restore")}) == 3
    assert snapshot(tmp_path / "restored" / "state") == snapshot(state)


def test_interleaving_takes_every_entry_once_from_several_directories() -> None:
    names = [f"d{i % 5}/f{i:03d}" for i in range(40)] + ["top.txt"]
    entries = [Entry(name=n, kind="file", size=0) for n in sorted(names)]
    order = list(tree_restore._interleaved(entries, 3))
    assert sorted(order) == list(range(len(entries)))
    first = [entries[i].name.partition("/")[0] for i in order[:3]]
    assert len(set(first)) == 3  # three directories in turn, not one after the other


# -- the first failure stops everything, cleanly -----------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "missing"])
@pytest.mark.parametrize("which", ["big/random.bin", "d4/sub0/f0004.json"])
def test_a_damaged_chunk_fails_the_whole_restore_cleanly(
    tmp_path: Path, durability: str, damage: str, which: str
) -> None:
    state = mixed_tree(tmp_path)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    refs = manager.repository.entry_refs(entry_named(manager, backup_id, f"state/{which}"))
    damage_stored(manager, refs[-1], damage)  # the last chunk: a big file is half written then
    target = tmp_path / "restored"
    with pytest.raises(IntegrityError) as caught:
        RecoveryManager(tree_manager(tmp_path)).restore_to_directory(backup_id, target)
    assert isinstance(caught.value, CorruptDataError) == (damage == "flip")
    assert refs[-1].id in str(caught.value)
    assert temp_files(target) == []
    assert not (target / "state" / which).exists()
    restored, original = snapshot(target / "state"), snapshot(state)
    for name, (kind, mode, mtime, content, _) in restored.items():  # whatever is there is whole
        if kind == "file":
            assert (mode, mtime, content) == original[name][1:4]


def test_the_first_failure_stops_the_other_workers(
    tmp_path: Path, durability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a file has failed, no worker starts another file, nor reads another chunk (but
    for one that was already on its way when the failure was flagged)."""
    mixed_tree(tmp_path, small=200)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    manifest = manager.repository.read_manifest(backup_id)
    contents = [e for e in manifest.entries if e.kind in ("data", "file")]
    damaged = contents[len(contents) // 3]
    damage_stored(manager, manager.repository.entry_refs(damaged)[0], "missing")
    # A process that has not read the pack index yet (this one holds it since the backup;
    # a pack index file that changes under a running process is not what is tested here).
    manager = tree_manager(tmp_path)
    writers: list[Any] = []
    real_init = tree_restore._TreeWriter.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        writers.append(self)

    monkeypatch.setattr(tree_restore._TreeWriter, "__init__", init)
    reads = {"before": 0, "after": 0}
    lock = threading.Lock()

    def hook(ref: ChunkRef) -> None:
        with lock:
            reads["after" if writers[0].cancel.is_set() else "before"] += 1

    wrap_read_chunk(manager, monkeypatch, hook)
    with pytest.raises(IntegrityError, match="missing"):
        RecoveryManager(manager).restore_to_directory(backup_id, tmp_path / "restored")
    assert reads["before"] > 0
    assert reads["after"] <= tree_restore.FILE_WORKERS  # a read that had passed its check
    assert temp_files(tmp_path / "restored") == []


def test_a_failing_write_fails_the_restore_and_leaves_no_temp_file(
    tmp_path: Path, durability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed_tree(tmp_path, small=60)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    writes = itertools.count()

    def failing_write(fd: int, data: Any) -> int:
        if next(writes) == 25:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    # only tree_write's own view of the os module: nothing else in the process is touched
    proxy = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    proxy.write = failing_write
    monkeypatch.setattr(tree_write, "os", proxy)
    with pytest.raises(RecoveryError, match="no space left on device"):
        RecoveryManager(manager).restore_to_directory(backup_id, tmp_path / "restored")
    assert temp_files(tmp_path / "restored") == []


# -- durable before named ----------------------------------------------------------------------


def test_a_file_is_renamed_only_after_its_content_is_durable(
    tmp_path: Path, durability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rename follows a flush that started after the file was completely written:
    its own fsync, or a syncfs begun after it was written."""
    state = mixed_tree(tmp_path)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    clock = itertools.count()
    lock = threading.Lock()
    written: dict[str, int] = {}  # temp name -> when it was complete (and fsync'ed if synced)
    flushes: list[tuple[int, int]] = []  # (started, finished) of every syncfs
    renames: list[tuple[str, int]] = []
    real_write_temp, real_rename = tree_write.write_temp, tree_write.rename

    def write_temp(*args: Any, **kwargs: Any) -> tuple[str, int]:
        temp, size = real_write_temp(*args, **kwargs)  # written, and fsync'ed if sync=True
        with lock:
            written[temp] = next(clock)
        return temp, size

    def rename(handle: tree_write.Dir, temp: str, leaf: str) -> None:
        with lock:
            renames.append((temp, next(clock)))
        real_rename(handle, temp, leaf)

    monkeypatch.setattr(tree_restore, "write_temp", write_temp)
    monkeypatch.setattr(tree_write, "rename", rename)
    real_syncfs_for = tree_write.syncfs_for

    def syncfs_for(fd: int) -> Callable[[int], None] | None:
        real = real_syncfs_for(fd)
        if real is None:
            return None

        def syncfs(sync_fd: int) -> None:
            started = next(clock)
            real(sync_fd)
            flushes.append((started, next(clock)))

        return syncfs  # type: ignore[return-value]

    if durability == "syncfs":
        monkeypatch.setattr(tree_write, "syncfs_for", syncfs_for)
    RecoveryManager(manager).restore_to_directory(backup_id, tmp_path / "restored")
    assert snapshot(tmp_path / "restored" / "state") == snapshot(state)
    assert len(renames) == len(written) > 100
    for temp, renamed_at in renames:
        done = written[temp]
        assert done < renamed_at
        if durability == "syncfs":  # a whole syncfs between the end of the write and the rename
            assert any(done < started and finished < renamed_at for started, finished in flushes)
    if durability == "syncfs":
        assert 1 < len(flushes) < len(renames)  # batches: fewer flushes than files


# -- bounded memory and queues -----------------------------------------------------------------


def test_memory_does_not_grow_with_the_file_size(tmp_path: Path, durability: str) -> None:
    """Python's allocations while restoring a 4 MB and a 24 MB file: the same, small peak
    (one chunk per worker, never a whole file)."""
    peaks = []
    for size in (4_000_000, 24_000_000):
        base = tmp_path / str(size)
        rng = random.Random(size)
        half = size // 2
        body = rng.randbytes(half) + b"".join(b"%08d," % i for i in range(half // 9 + 1))[:half]
        write_tree(base / "state", {"db.bin": (body, 0o600, 1_600_000_000_000_000_000)})
        manager = fresh_manager(base / "repo", sources=["state/"], base_dir=str(base))
        backup_id = manager.create_backup(None, include_files=True)
        recovery = RecoveryManager(manager)
        manager.repository.read_manifest(backup_id)  # cached: not counted
        tracemalloc.start()
        try:
            recovery.restore_to_directory(backup_id, base / "restored")
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert (base / "restored" / "state" / "db.bin").read_bytes() == body
    assert peaks[1] < 2_000_000  # a few chunks of at most 128 KiB per worker
    assert peaks[1] < peaks[0] + 500_000  # 6 x the file, not 6 x the memory


def test_written_files_waiting_for_their_batch_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a slow flush, writers wait: at most two batches of temp files exist at once
    (plus one per writer being written)."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    real = tree_write.syncfs_for(fd)
    os.close(fd)
    if real is None:
        pytest.skip("no safe syncfs for this file system")
    monkeypatch.setattr(tree_write, "BATCH_FILES", 5)
    monkeypatch.setattr(tree_restore, "FILE_WORKERS", 3)
    target = tmp_path / "restored"
    seen: list[int] = []
    event = threading.Event()

    def slow_syncfs(sync_fd: int) -> None:
        seen.append(len(temp_files(target)))
        event.wait(0.02)
        real(sync_fd)

    monkeypatch.setattr(tree_write, "syncfs_for", lambda fd: slow_syncfs)
    state = mixed_tree(tmp_path, small=80)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    RecoveryManager(manager).restore_to_directory(backup_id, target)
    assert snapshot(target / "state") == snapshot(state)
    assert max(seen) <= 2 * 5 + 3
    assert len(seen) >= 80 // (2 * 5)  # small batches: many flushes


def test_durability_is_chosen_safely() -> None:
    """``syncfs`` only where it reports write errors and flushes: never on /proc, say."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert tree_write.syncfs_for(fd) is None
    finally:
        os.close(fd)
