"""The package's version, the CLI's --version, and ``BackupManager.backup_dir``."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import src.infra.backup as backup
from src.infra.backup import BackupConfig, BackupManager, ConfigError
from src.infra.backup.cli import run


def test_version_is_the_installed_distribution_version() -> None:
    assert backup.__version__ == importlib.metadata.version("peak-trade-backup")
    assert "__version__" in backup.__all__


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"peak-backup, version {backup.__version__}"


def test_backup_dir_of_a_local_repository(tmp_path: Path) -> None:
    manager = BackupManager(BackupConfig(backup_path=str(tmp_path / "repo")))
    assert manager.backup_dir == tmp_path / "repo"
    assert not manager.backup_dir.exists()  # asking for it creates nothing


def test_backup_dir_of_an_s3_repository_says_there_is_none() -> None:
    manager = BackupManager(BackupConfig(backup_path="s3://bucket/bots/one"))
    with pytest.raises(ConfigError, match=r"s3://bucket/bots/one.*not a local directory"):
        _ = manager.backup_dir
