"""Point in time: ``restore --at``, ``get_backup_at`` / ``restore_backup_at`` and
``list --since/--until`` over backups with known times."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from src.infra.backup import (
    BackupConfig,
    BackupManager,
    BackupNotFoundError,
    InvalidInputError,
    RecoveryManager,
)
from src.infra.backup.format.manifest import encode_checked
from src.infra.backup.policy.point_in_time import parse_moment, select_between
from tests.helpers import run_cli_inline

UTC = timezone.utc


def local(text: str) -> datetime:
    """A naive local time as an aware datetime."""
    return datetime.fromisoformat(text).astimezone()


def plant(manager: BackupManager, backup_id: str, when: datetime, data: object) -> None:
    """Store a real backup of ``data``, then re-commit it under ``backup_id`` taken at
    ``when`` (a valid checksummed manifest sharing its chunks)."""
    source = manager.create_backup({"value": data}, backup_type=backup_id.rsplit("_", 2)[0])
    repository = manager.repository
    manifest = repository.read_manifest(source)
    forged = msgspec.structs.replace(manifest, backup_id=backup_id, time_utc=when.astimezone(UTC))
    snapshots = manager.config.repository_path / "snapshots"
    (snapshots / f"{backup_id}.json").write_bytes(encode_checked(forged))
    repository.delete_snapshot(source)


@pytest.fixture
def timeline(tmp_path: Path) -> BackupManager:
    """Backups at 09:00 (pre_trade), 10:00:00.4 (manual), 10:30 (pre_trade) local on
    2025-12-17, and 12:00 on 2025-12-18 (manual)."""
    manager = BackupManager(BackupConfig(backup_path=tmp_path / "repo", retention_days=0))
    plant(manager, "pre_trade_20251217_090000", local("2025-12-17 09:00:00"), "a")
    plant(manager, "manual_20251217_100000", local("2025-12-17 10:00:00.400000"), "b")
    plant(manager, "pre_trade_20251217_103000", local("2025-12-17 10:30:00"), "c")
    plant(manager, "manual_20251218_120000", local("2025-12-18 12:00:00"), "d")
    return manager


def test_parse_moment_forms() -> None:
    assert parse_moment("2025-12-17 10:00") == local("2025-12-17 10:00")
    assert parse_moment("2025-12-17T10:00:00+01:00") == datetime(2025, 12, 17, 9, tzinfo=UTC)
    assert parse_moment("2025-12-17T09:00:00Z") == datetime(2025, 12, 17, 9, tzinfo=UTC)
    assert parse_moment("2025-12-17") == local("2025-12-17 00:00")
    assert parse_moment("2025-12-17", upper=True) == local("2025-12-17 23:59:59.999999")
    assert parse_moment("2025-12-17 10:00", upper=True) == local("2025-12-17 10:00:00.999999")
    assert parse_moment("2025-12-17 10:00:00.5", upper=True) == local("2025-12-17 10:00:00.5")
    naive = datetime(2025, 12, 17, 10)
    assert parse_moment(naive) == naive.astimezone()  # naive = local time
    aware = datetime(2025, 12, 17, 10, tzinfo=UTC)
    assert parse_moment(aware, upper=True) == aware  # datetimes are exact
    assert parse_moment(date(2025, 12, 17), upper=True) == local("2025-12-17 23:59:59.999999")
    for bad in ("yesterday", "2025-13-01", "", "17.12.2025 10:00"):
        with pytest.raises(InvalidInputError, match="ISO format"):
            parse_moment(bad)


def test_get_backup_at_picks_newest_at_or_before(timeline: BackupManager) -> None:
    recovery = RecoveryManager(timeline)
    assert recovery.get_backup_at("2025-12-17 10:15") == "manual_20251217_100000"
    assert recovery.get_backup_at("2025-12-17 10:30") == "pre_trade_20251217_103000"
    # "10:00" covers the second 10:00:00 (the backup is at 10:00:00.4)...
    assert recovery.get_backup_at("2025-12-17 10:00") == "manual_20251217_100000"
    # ...a datetime is exact.
    assert recovery.get_backup_at(datetime(2025, 12, 17, 10)) == "pre_trade_20251217_090000"
    assert recovery.get_backup_at("2025-12-17 10:15", "pre_trade") == "pre_trade_20251217_090000"
    assert recovery.get_backup_at("2030-01-01") == "manual_20251218_120000"
    assert recovery.get_backup_at(date(2025, 12, 17)) == "pre_trade_20251217_103000"
    moment = local("2025-12-17 09:59").astimezone(timezone(timedelta(hours=-5)))
    assert recovery.get_backup_at(moment) == "pre_trade_20251217_090000"  # any zone
    assert recovery.get_backup_at(moment.isoformat()) == "pre_trade_20251217_090000"


def test_get_backup_at_before_everything_is_a_clear_error(timeline: BackupManager) -> None:
    recovery = RecoveryManager(timeline)
    with pytest.raises(BackupNotFoundError, match=r"no backup at or before .*oldest is"):
        recovery.get_backup_at("2025-12-17 08:59:59")
    with pytest.raises(BackupNotFoundError, match="of type 'manual'"):
        recovery.get_backup_at("2025-12-17 09:30", "manual")
    with pytest.raises(InvalidInputError):
        recovery.get_backup_at("2025-12-17 09:30", "Not A Type")
    empty = RecoveryManager(BackupManager(BackupConfig(backup_path="empty", retention_days=0)))
    with pytest.raises(BackupNotFoundError):
        empty.get_backup_at("2025-12-17")


def test_restore_backup_at_returns_the_data(timeline: BackupManager) -> None:
    recovery = RecoveryManager(timeline)
    assert recovery.restore_backup_at("2025-12-17 10:29:59") == {"value": "b"}
    assert recovery.restore_backup_at("2025-12-17 10:45", "pre_trade") == {"value": "c"}
    with pytest.raises(BackupNotFoundError):
        recovery.restore_backup_at("2025-01-01")


def test_select_between_is_inclusive(timeline: BackupManager) -> None:
    backups = timeline.list_backups()
    ids = [b.backup_id for b in select_between(backups, "2025-12-17 09:00", "2025-12-17 10:30")]
    assert ids == [
        "pre_trade_20251217_103000",
        "manual_20251217_100000",
        "pre_trade_20251217_090000",
    ]
    ids = [b.backup_id for b in select_between(backups, since="2025-12-18")]
    assert ids == ["manual_20251218_120000"]
    ids = [b.backup_id for b in select_between(backups, until="2025-12-17")]  # whole day
    assert len(ids) == 3
    assert select_between(backups, "2025-12-19", None) == []


@pytest.fixture
def timeline_cwd(tmp_path: Path, timeline: BackupManager) -> Path:
    """The working directory of ``timeline``'s repository, with a config.toml for it."""
    (tmp_path / "config.toml").write_text('[backup]\nbackup_path = "repo"\nretention_days = 0\n')
    return tmp_path


def test_cli_list_since_until(timeline_cwd: Path) -> None:
    result = run_cli_inline(
        "list",
        "--since",
        "2025-12-17 10:00",
        "--until",
        "2025-12-17 10:30",
        "--json",
        cwd=timeline_cwd,
    )
    assert result.returncode == 0, result.stderr
    ids = [b["backup_id"] for b in json.loads(result.stdout)]
    assert ids == ["pre_trade_20251217_103000", "manual_20251217_100000"]
    result = run_cli_inline("list", "--type", "manual", "--until", "2025-12-17", cwd=timeline_cwd)
    assert result.returncode == 0 and "manual_20251217_100000" in result.stdout
    assert "pre_trade" not in result.stdout
    result = run_cli_inline("list", "--since", "2026-01-01", cwd=timeline_cwd)
    assert result.returncode == 0 and "No backups in that time range" in result.stdout
    result = run_cli_inline("list", "--since", "soon", cwd=timeline_cwd)
    assert result.returncode == 2 and "ISO format" in result.stderr


def test_cli_restore_at(timeline_cwd: Path) -> None:
    result = run_cli_inline(
        "restore", "--at", "2025-12-17 10:15", "--target", "out", "--json", cwd=timeline_cwd
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backup_id"] == "manual_20251217_100000"
    assert json.loads((timeline_cwd / "out" / "value.json").read_text()) == "b"
    result = run_cli_inline(
        "restore", "--at", "2025-12-17 10:15", "--type", "pre_trade", cwd=timeline_cwd
    )
    assert result.returncode == 0, result.stderr
    assert (timeline_cwd / "restore" / "pre_trade_20251217_090000" / "value.json").exists()
    result = run_cli_inline("restore", "--at", "2025-12-01 00:00", cwd=timeline_cwd)
    assert result.returncode == 3 and "no backup at or before" in result.stderr
    result = run_cli_inline(
        "restore", "manual_20251217_100000", "--at", "2025-12-17", cwd=timeline_cwd
    )
    assert result.returncode == 2
