"""Temp files of restores: named after their writer, removed by the next restore once the
writer is gone, never a temp file of a restore still running, never the user's own files.

The last test kills real in-place restores with SIGKILL while they write a 40 MB file.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.files import restore_temp
from src.infra.backup.files.restore_temp import (
    HOST_TAG,
    clean_stale_temps,
    restore_temp_tag,
    stale_reason,
    write_restore_temp,
)
from src.infra.backup.storage.local import LocalStore, write_temp_file

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TAGGED = re.compile(r"\.tmp-(\d+)-([0-9a-f]{8})-[0-9a-f]{16}")
OTHER_HOST = "0badc0de" if HOST_TAG != "0badc0de" else "1badc0de"


def temp_name(pid: int, host: str = HOST_TAG) -> str:
    return f".tmp-{pid}-{host}-{secrets.token_hex(8)}"


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A running process (another restore in progress, as far as the sweep can tell)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_restore_temp_files_name_their_writer(tmp_path: Path) -> None:
    temp = write_restore_temp(tmp_path, [b"abc", b"def"])
    match = TAGGED.fullmatch(temp.name)
    assert match is not None, temp.name
    assert int(match.group(1)) == os.getpid() and match.group(2) == HOST_TAG
    assert temp.read_bytes() == b"abcdef"
    assert restore_temp_tag() == f"{os.getpid()}-{HOST_TAG}-"
    # The store's own temp files keep their names (.tmp-<16 hex>); readers match the prefix.
    assert re.fullmatch(r"\.tmp-[0-9a-f]{16}", write_temp_file(tmp_path, b"x").name)


def test_sweep_removes_only_abandoned_restore_temps(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    gone = dead_pid()
    names = {
        "dead": temp_name(gone),
        "running": temp_name(sleeper.pid),
        "mine": temp_name(os.getpid()),
        "other_host_dead": temp_name(gone, host=OTHER_HOST),
        "old_style": f".tmp-{secrets.token_hex(8)}",
        "user_file": ".tmp-notes.txt",
        "user_file_2": f".tmp-{gone}-{HOST_TAG}-not-ours",
        "regular": "data.json",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / temp_name(gone)).mkdir()  # a directory is never touched
    link = tmp_path / temp_name(gone)  # a link a killed restore left: removed, not followed
    link.symlink_to(tmp_path / "data.json")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / temp_name(gone)).write_bytes(b"below: not this directory")

    removed = clean_stale_temps(tmp_path, force=True)
    assert sorted(removed) == sorted([tmp_path / names["dead"], link])
    assert (tmp_path / "data.json").read_bytes() == b"partial"
    left = {p.name for p in tmp_path.iterdir()}
    assert names["dead"] not in left
    assert {v for k, v in names.items() if k != "dead"} <= left
    assert len(list(sub.iterdir())) == 1

    # Once the other restore has died (killed, not yet reaped: a zombie), its file goes too.
    sleeper.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while restore_temp._running(sleeper.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert clean_stale_temps(tmp_path, force=True) == [tmp_path / names["running"]]


def test_untouched_for_hours_is_stale_whoever_wrote_it(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """A live PID (perhaps reused after a crash), another host, or an old-style name: removed
    only once untouched for STALE_AFTER; the user's own ``.tmp-*`` files never."""
    names = [
        temp_name(sleeper.pid),
        temp_name(dead_pid(), host=OTHER_HOST),
        f".tmp-{secrets.token_hex(8)}",
    ]
    for name in [*names, ".tmp-notes.txt"]:
        (tmp_path / name).write_bytes(b"partial")
    st = (tmp_path / names[0]).stat()
    now = max(st.st_mtime, st.st_ctime)
    for name in names:
        assert stale_reason(name, st, now + 60) is None
        reason = stale_reason(name, st, now + restore_temp.STALE_AFTER + 1)
        assert reason is not None and "untouched" in reason
    assert stale_reason(".tmp-notes.txt", st, now + 10 * restore_temp.STALE_AFTER) is None
    assert clean_stale_temps(tmp_path, force=True) == []


def test_a_directory_is_swept_once_per_interval(tmp_path: Path) -> None:
    assert clean_stale_temps(tmp_path / "missing") == []  # nothing there: no error
    assert clean_stale_temps(tmp_path, force=True) == []
    (tmp_path / temp_name(dead_pid())).write_bytes(b"x")
    assert clean_stale_temps(tmp_path) == []  # swept a moment ago
    assert len(clean_stale_temps(tmp_path, force=True)) == 1


def test_restore_into_a_directory_removes_leftovers(tmp_path: Path) -> None:
    base = tmp_path / "bot"
    (base / "state").mkdir(parents=True)
    (base / "state" / "a.txt").write_bytes(b"a")
    manager = BackupManager(
        BackupConfig(
            backup_path=tmp_path / "repo", sources=["state/"], base_dir=base, retention_days=0
        )
    )
    leftover = base / "state" / temp_name(dead_pid())
    leftover.write_bytes(b"torn")
    backup_id = manager.create_backup({"x": 1}, include_files=True)
    assert manager.get_backup_info(backup_id).file_paths == ["state/a.txt"]  # never backed up
    target = tmp_path / "out"
    (target / "state").mkdir(parents=True)
    stale = target / "state" / temp_name(dead_pid())
    stale.write_bytes(b"torn")
    RecoveryManager(manager).restore_to_directory(backup_id, target)
    assert not stale.exists()
    assert sorted(p.name for p in (target / "state").iterdir()) == ["a.txt"]


def test_the_store_keeps_its_own_temp_handling(tmp_path: Path) -> None:
    """Repository temp files are collected by prune, not by restores: a restore never
    writes into the repository, and the store's writes leave nothing behind."""
    store = LocalStore(tmp_path / "repo")
    store.put("chunks/ab/abcdef", b"data")
    assert not list((tmp_path / "repo").rglob(".tmp-*"))
    leftover = tmp_path / "repo" / "chunks" / "ab" / f".tmp-{secrets.token_hex(8)}"
    leftover.write_bytes(b"x")
    assert [info.key for info in store.list_temporary()] == [
        f"chunks/ab/{leftover.name}",
    ]


# -- a real restore, killed with SIGKILL while it writes ---------------------------------

BIG_SIZE = 40 * 1024 * 1024

CHILD = """
import sys
from src.infra.backup import BackupConfig, BackupManager, RecoveryManager

repo, base, backup_id = sys.argv[1:4]
manager = BackupManager(BackupConfig(
    backup_path=repo, sources=["data/"], base_dir=base, retention_days=0,
))
RecoveryManager(manager).restore_in_place(backup_id)
print("done", flush=True)
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(240)
def test_restores_killed_mid_write_leave_temps_the_next_restore_removes(
    tmp_path: Path,
) -> None:
    base = tmp_path / "bot"
    data = base / "data"
    (data / "deep").mkdir(parents=True)
    big = data / "big.bin"
    rng = random.Random(7)
    big.write_bytes(rng.randbytes(BIG_SIZE))
    os.chmod(big, 0o640)
    os.utime(big, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    (data / "deep" / "small.txt").write_bytes(b"small\n")
    repo = tmp_path / "repo"
    manager = BackupManager(
        BackupConfig(backup_path=repo, sources=["data/"], base_dir=base, retention_days=0)
    )
    backup_id = manager.create_backup(None, include_files=True)
    good = sha256(big)
    edited = rng.randbytes(BIG_SIZE)

    def edit() -> None:
        big.write_bytes(edited)
        (data / "deep" / "small.txt").write_bytes(b"edited\n")

    edit()
    edited_sha = sha256(big)
    leftovers: set[str] = set()  # temp files of the last killed restore
    kills = interrupted = 0
    for _attempt in range(20):
        if interrupted >= 3:
            break
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(repo), str(base), backup_id],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        prefix = f".tmp-{child.pid}-"
        deadline = time.monotonic() + 60
        seen = False
        while child.poll() is None and time.monotonic() < deadline:
            if any(name.startswith(prefix) for name in os.listdir(data)):
                seen = True
                break
            time.sleep(0.001)
        if seen:
            time.sleep(random.uniform(0, 0.02))  # somewhere in the 40 MB write
            child.send_signal(signal.SIGKILL)
            kills += 1
        _out, err = child.communicate(timeout=60)
        assert child.returncode in (0, -signal.SIGKILL), err.decode()
        # Never torn: the old content or the restored one.
        assert sha256(big) in (edited_sha, good)
        left = {n for n in os.listdir(data) if n.startswith(".tmp-")}
        if seen:
            # This restore swept the leftovers of the ones killed before, before it wrote.
            assert left <= {n for n in left if n.startswith(prefix)}, left
        if left:
            interrupted += 1
            leftovers = left
        if sha256(big) == good:  # it finished before the kill: make the next one write again
            edit()
    print(f"\n{kills} kills, {interrupted} left a temp file behind")
    assert leftovers, "no restore was ever killed mid-write"
    assert set(os.listdir(data)) == {"big.bin", "deep", *leftovers}

    # The backups never hold them, and a successful restore removes them.
    later = manager.create_backup(None, include_files=True)
    assert sorted(manager.get_backup_info(later).file_paths) == [
        "data/big.bin",
        "data/deep/small.txt",
    ]
    result = RecoveryManager(manager).restore_in_place(backup_id, verify=True)
    assert result.verified
    assert set(os.listdir(data)) == {"big.bin", "deep"}
    assert not list(base.rglob(".tmp-*"))
    assert sha256(big) == good
    st = big.stat()
    assert st.st_mode & 0o7777 == 0o640 and st.st_mtime_ns == 1_700_000_000_123_456_789
    assert (data / "deep" / "small.txt").read_bytes() == b"small\n"
