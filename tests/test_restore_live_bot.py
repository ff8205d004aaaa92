"""Restoring next to a running bot (issue 17, part 4): ``restore --in-place`` refuses while the
bot of ``[backup] bot_pidfile`` is alive, a ``RESTORED_FROM`` stamp says what was restored,
and ``restore_backup(..., reconcile=...)`` hands the bot the state and the backup's time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import (
    BackupConfig,
    BackupManager,
    BotRunningError,
    RecoveryError,
    RecoveryManager,
)
from src.infra.backup.app.bot_guard import bot_state
from src.infra.backup.files.restore_stamp import STAMP_NAME, read_stamp
from tests.helpers import run_cli_inline

CONFIG = """[backup]
backup_path = "repo"
retention_days = 0
sources = ["live_runs/"]
bot_pidfile = "run/bot.pid"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "live_runs").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "live_runs" / "positions.json").write_text('{"BTC": 1}\n')
    (root / "config.toml").write_text(CONFIG)
    return root


@pytest.fixture
def bot(project: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live child process (``sleep``) whose PID is in the bot's PID file."""
    child = subprocess.Popen(["sleep", "60"])
    (project / "run" / "bot.pid").write_text(f"{child.pid}\n")
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def manager_for(project: Path) -> BackupManager:
    return BackupManager(
        BackupConfig(
            backup_path=str(project / "repo"),
            sources=["live_runs/"],
            base_dir=str(project),
            retention_days=0,
            bot_pidfile=str(project / "run" / "bot.pid"),
        )
    )


def test_bot_state_alive_stale_missing_and_garbage(
    project: Path, bot: subprocess.Popen[bytes]
) -> None:
    pidfile = project / "run" / "bot.pid"
    state = bot_state(pidfile)
    assert state.alive and state.pid == bot.pid and state.stale is None
    bot.kill()
    bot.wait()
    state = bot_state(pidfile)
    assert not state.alive and state.stale is not None and str(bot.pid) in state.stale
    pidfile.write_text("not a pid\n")
    assert not bot_state(pidfile).alive and "holds no PID" in (bot_state(pidfile).stale or "")
    pidfile.unlink()
    state = bot_state(pidfile)  # no PID file: the bot is simply not running
    assert not state.alive and state.stale is None


def test_cli_in_place_refuses_while_bot_runs_then_force_and_after_exit(
    project: Path, bot: subprocess.Popen[bytes]
) -> None:
    created = run_cli_inline("create", "--json", cwd=project)
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backup_id"]
    target = project / "live_runs" / "positions.json"
    target.write_text('{"BTC": 2}\n')
    refused = run_cli_inline("restore", backup_id, "--in-place", "--json", cwd=project)
    assert refused.returncode == 1, refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert error["type"] == "BotRunningError"
    assert str(bot.pid) in error["message"] and "bot.pid" in error["message"]
    assert target.read_text() == '{"BTC": 2}\n'  # nothing written
    assert not (project / STAMP_NAME).exists()
    assert [i.backup_type for i in manager_for(project).list_backups()] == ["manual"]
    # a dry run only reads: allowed while the bot runs
    dry = run_cli_inline("restore", backup_id, "--in-place", "--dry-run", cwd=project)
    assert dry.returncode == 0, dry.stderr
    text = run_cli_inline("restore", backup_id, "--in-place", cwd=project)
    assert text.returncode == 1 and "--force" in text.stderr and str(bot.pid) in text.stderr
    forced = run_cli_inline("restore", backup_id, "--in-place", "--force", cwd=project)
    assert forced.returncode == 0, forced.stderr
    assert target.read_text() == '{"BTC": 1}\n'
    # once the bot is gone (PID file left behind: stale), the restore goes ahead
    target.write_text('{"BTC": 3}\n')
    bot.kill()
    bot.wait()
    after = run_cli_inline("restore", backup_id, "--in-place", cwd=project)
    assert after.returncode == 0, after.stderr
    assert "stale" in after.stderr and str(bot.pid) in after.stderr
    assert target.read_text() == '{"BTC": 1}\n'


def test_force_only_with_in_place(project: Path) -> None:
    result = run_cli_inline("restore", "--force", cwd=project)
    assert result.returncode == 2 and "--force" in result.stderr


def test_api_in_place_refuses_too_but_not_for_the_bot_itself(
    project: Path, bot: subprocess.Popen[bytes]
) -> None:
    manager = manager_for(project)
    backup_id = manager.create_backup(None, include_files=True)
    recovery = RecoveryManager(manager)
    target = project / "live_runs" / "positions.json"
    target.write_text('{"BTC": 2}\n')
    with pytest.raises(BotRunningError, match=rf"PID {bot.pid}") as caught:
        recovery.restore_in_place(backup_id)
    assert isinstance(caught.value, RecoveryError)
    assert target.read_text() == '{"BTC": 2}\n'
    assert recovery.restore_in_place(backup_id, dry_run=True).counts["overwrite"] == 1
    # the bot restoring its own files in-process: its PID file names this very process
    (project / "run" / "bot.pid").write_text(f"{os.getpid()}\n")
    result = recovery.restore_in_place(backup_id)
    assert result.pre_restore_id is not None and target.read_text() == '{"BTC": 1}\n'
    assert recovery.restore_in_place(backup_id, force=True).dry_run is False


def test_in_place_stamp_beside_files_and_never_backed_up(project: Path) -> None:
    manager = manager_for(project)
    backup_id = manager.create_backup(None, include_files=True)
    info = manager.get_backup_info(backup_id)
    before = datetime.now(timezone.utc)
    RecoveryManager(manager).restore_in_place(backup_id)
    stamp = read_stamp(project)
    assert stamp is not None
    assert stamp["backup_id"] == backup_id and stamp["mode"] == "in-place"
    assert datetime.fromisoformat(str(stamp["backup_time"])) == info.timestamp_utc
    assert datetime.fromisoformat(str(stamp["restored_at"])) >= before
    assert stamp["host"] == socket.gethostname()
    # even a source naming it (CONFIG lists "RESTORED_FROM") never stores the stamp
    config = BackupConfig(
        backup_path=str(project / "repo"),
        sources=["live_runs/", STAMP_NAME, "."],
        base_dir=str(project),
        retention_days=0,
    )
    later = BackupManager(config).create_backup(None, include_files=True)
    assert STAMP_NAME not in manager.get_backup_info(later).files
    # a dry run writes no stamp
    (project / STAMP_NAME).unlink()
    RecoveryManager(manager).restore_in_place(backup_id, dry_run=True)
    assert not (project / STAMP_NAME).exists()


def test_directory_restore_stamp_and_values_restore_writes_none(project: Path) -> None:
    manager = manager_for(project)
    backup_id = manager.create_backup({"portfolio": {"equity": 1}}, include_files=True)
    result = run_cli_inline("restore", backup_id, "--target", "out", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stamp"] == str(project / "out" / STAMP_NAME)
    stamp = read_stamp(project / "out")
    assert stamp is not None and stamp["backup_id"] == backup_id and stamp["mode"] == "directory"
    assert set(stamp) >= {"backup_id", "backup_time", "restored_at", "host", "user"}
    files_before = sorted(p.name for p in project.iterdir())
    assert RecoveryManager(manager).restore_backup(backup_id) == {"portfolio": {"equity": 1}}
    assert sorted(p.name for p in project.iterdir()) == files_before  # values: no stamp


def test_reconcile_gets_state_and_backup_time(project: Path) -> None:
    manager = manager_for(project)
    first = manager.create_backup({"portfolio": {"equity": 1}}, include_files=False)
    calls: list[tuple[dict[str, Any], datetime]] = []

    def reconcile(state: dict[str, Any], backup_time: datetime) -> None:
        calls.append((state, backup_time))

    recovery = RecoveryManager(manager)
    data = recovery.restore_backup(first, reconcile=reconcile)
    assert data == {"portfolio": {"equity": 1}}
    assert calls == [(data, manager.get_backup_info(first).timestamp_utc)]
    assert calls[0][1].tzinfo is not None
    # no id: the newest backup that restores
    second = manager.create_backup({"portfolio": {"equity": 2}}, include_files=False)
    calls.clear()
    assert recovery.restore_backup(reconcile=reconcile) == {"portfolio": {"equity": 2}}
    assert calls[0][1] == manager.get_backup_info(second).timestamp_utc
    # the seed's call is unchanged
    assert recovery.restore_backup(first) == {"portfolio": {"equity": 1}}


def test_reconcile_error_propagates_unchanged(project: Path) -> None:
    manager = manager_for(project)
    backup_id = manager.create_backup({"portfolio": {"equity": 1}}, include_files=False)

    class ExchangeMismatchError(Exception):
        pass

    def reconcile(state: dict[str, Any], backup_time: datetime) -> None:
        raise ExchangeMismatchError("BTC position differs from the exchange")

    with pytest.raises(ExchangeMismatchError, match="differs") as caught:
        RecoveryManager(manager).restore_backup(backup_id, reconcile=reconcile)
    if sys.version_info >= (3, 11):
        assert any(backup_id in note for note in caught.value.__notes__)


def test_arestore_backup_passes_reconcile(project: Path) -> None:
    import asyncio

    manager = manager_for(project)
    backup_id = manager.create_backup({"portfolio": {"equity": 1}}, include_files=False)
    seen: list[str] = []
    data = asyncio.run(
        RecoveryManager(manager).arestore_backup(
            backup_id, reconcile=lambda state, when: seen.append(when.isoformat())
        )
    )
    assert data == {"portfolio": {"equity": 1}} and len(seen) == 1
