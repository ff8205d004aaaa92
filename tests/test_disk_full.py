"""A real full disk: a small tmpfs filled by backups of incompressible data.

Needs root (``mount -t tmpfs``); skipped with the reason otherwise. Checks that the backup
that hits the full disk fails with a ``StorageError`` naming the problem, leaves no partial
backup, harms no earlier one, and that after freeing space (deleting a filler file, or deleting
backups and pruning) backing up works again. The CLI variant checks exit code 1, a plain
message and no traceback.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager, StorageError
from src.infra.backup.repository.check import check_repository
from tests.helpers import run_cli_inline

TMPFS_SIZE = "8m"
STEP = 512 * 1024
MARKERS = ("disk full", "no space left")


def mount_tmpfs(directory: Path) -> None:
    """Mount a small tmpfs on ``directory``, or skip the test saying why not."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root; running as uid {os.geteuid()}")
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if result.returncode != 0:
        pytest.skip(
            f"mount -t tmpfs failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )


def unmount(directory: Path) -> None:
    result = subprocess.run(["umount", str(directory)], capture_output=True, check=False)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A freshly mounted 8 MiB tmpfs, unmounted afterwards."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mount_tmpfs(mountpoint)
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_up(path: Path) -> int:
    """Write ``path`` until the filesystem is full; return the bytes written."""
    written = 0
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                written += os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written
    finally:
        os.close(fd)


def assert_disk_full(exc: BaseException) -> None:
    assert isinstance(exc, StorageError), repr(exc)
    assert any(marker in str(exc).lower() for marker in MARKERS), str(exc)


def manager_on(disk: Path) -> BackupManager:
    return BackupManager(
        BackupConfig(backup_path=disk / "repo", retention_days=0, auto_prune=False)
    )


def fill_with_backups(
    manager: BackupManager,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], StorageError]:
    """Back up growing random data until a backup fails: (made, failed data, error)."""
    made: dict[str, dict[str, Any]] = {}
    size = STEP
    for attempt in range(40):
        data = {"blob": os.urandom(size), "portfolio": {"attempt": attempt}}
        try:
            made[manager.create_backup(data)] = data
        except StorageError as exc:
            return made, data, exc
        size += STEP
    raise AssertionError(f"an 8 MiB disk took {len(made)} backups without filling up")


def assert_intact(disk: Path, made: dict[str, dict[str, Any]]) -> None:
    """A fresh manager lists exactly ``made``; each loads equal and verifies; check is clean."""
    manager = manager_on(disk)
    assert {info.backup_id for info in manager.list_backups()} == set(made)
    recovery = RecoveryManager(manager)
    for backup_id, data in made.items():
        assert manager.load_backup(backup_id) == data
        assert recovery.verify_backup(backup_id)
    report = check_repository(manager.repository)
    assert report.clean, report.to_json()


def test_backup_on_a_full_disk_fails_cleanly_and_recovers(disk: Path) -> None:
    filler = disk / "filler.bin"
    filler.write_bytes(os.urandom(1024 * 1024))
    manager = manager_on(disk)
    made, _failed, error = fill_with_backups(manager)
    print(f"\n[disk-full] {len(made)} backups fit, then: {error}")
    assert made, "not even the first backup fit"
    assert_disk_full(error)
    assert_intact(disk, made)
    # The same manager keeps working for reads.
    for backup_id, data in made.items():
        assert manager.load_backup(backup_id) == data

    # Free space by deleting the filler: backing up works again.
    filler.unlink()
    small = {"portfolio": {"equity": 1234.5}}
    made[manager.create_backup(small)] = small
    assert_intact(disk, made)


def test_full_disk_recovered_by_delete_and_prune(disk: Path) -> None:
    """Free a full disk the way a user would: delete backups and prune with no grace period
    (twice: collect, then delete). Each prune must succeed; then the backup that failed fits.
    The disk is filled to the last block after the failed backup (another writer, say), so
    the outcome does not depend on how much the failed backup happened to leave free."""
    manager = manager_on(disk)
    made, failed, error = fill_with_backups(manager)
    assert_disk_full(error)
    fill_up(disk / "last-bytes.bin")
    assert_intact(disk, made)

    newest = max(made, key=lambda i: len(made[i]["blob"]))
    for backup_id in [i for i in made if i != newest]:
        manager.delete_backup(backup_id)
        del made[backup_id]
    free_before = free_bytes(disk)
    prune_errors: list[StorageError] = []
    deleted = 0
    runs = 0
    while runs < 2 or (prune_errors and runs < 3):  # a third run only after a failed one
        runs += 1
        try:
            deleted += manager.prune(grace=timedelta(0)).deleted
        except StorageError as exc:
            prune_errors.append(exc)
    print(
        f"\n[disk-full] delete + prune on a full disk: free {free_before} -> {free_bytes(disk)} "
        f"bytes, {deleted} chunks deleted, failed prune runs: {[str(e) for e in prune_errors]}"
    )
    # Prune is how a user frees space: it must not itself fail for want of space.
    assert prune_errors == [], (
        f"{len(prune_errors)} of {runs} prune runs failed on the full disk "
        f"({deleted} chunks deleted, {free_bytes(disk)} bytes free): {prune_errors[0]}"
    )
    assert deleted > 0
    assert free_bytes(disk) > len(failed["blob"]) + 256 * 1024
    made[manager.create_backup(failed)] = failed
    assert_intact(disk, made)


def test_cli_create_on_a_full_disk(disk: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "live_runs").mkdir(parents=True)
    (project / "config.toml").write_text(
        f'[backup]\nbackup_path = "{disk / "repo"}"\nretention_days = 0\n'
        'sources = ["config.toml", "live_runs/"]\n'
    )
    (project / "live_runs" / "small.json").write_text('{"equity": 1}\n')
    first = run_cli_inline("create", cwd=project)
    assert first.returncode == 0, first.stderr

    (project / "live_runs" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    fill_up(disk / "filler.bin")
    os.truncate(disk / "filler.bin", max(0, (disk / "filler.bin").stat().st_size - 1024 * 1024))
    result = run_cli_inline("create", cwd=project)
    print(f"\n[disk-full] CLI: exit {result.returncode}, stderr: {result.stderr.strip()}")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert any(marker in result.stderr.lower() for marker in MARKERS), result.stderr
    assert "Traceback" not in result.stderr + result.stdout

    as_json = run_cli_inline("create", "--json", cwd=project)
    assert as_json.returncode == 1
    assert "Traceback" not in as_json.stderr + as_json.stdout
    assert any(marker in as_json.stdout.lower() for marker in MARKERS), as_json.stdout

    listed = run_cli_inline("list", "--json", cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"backup_id"') == 1  # only the first backup

    (disk / "filler.bin").unlink()
    again = run_cli_inline("create", cwd=project)
    assert again.returncode == 0, again.stderr
