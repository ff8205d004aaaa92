"""Shared fixtures: a throw-away repository, a manager on it, and a CLI runner.

Every test runs with its working directory in its own ``tmp_path`` and without
``$PEAK_TRADE_CONFIG_PATH``, so nothing ever picks up the project's own ``config.toml`` or
writes to ``/work/main/backups``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAIN_SCRIPT = PROJECT_ROOT / "src" / "infra" / "backup" / "__main__.py"
CONFIG_ENV = "PEAK_TRADE_CONFIG_PATH"

CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in its own temporary directory, without a config path from outside."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return tmp_path


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """An empty directory for a backup repository."""
    path = tmp_path / "repo"
    path.mkdir()
    return path


@pytest.fixture
def manager(repo_dir: Path) -> BackupManager:
    """A manager on ``repo_dir`` with retention off."""
    return BackupManager(BackupConfig(backup_path=repo_dir, retention_days=0))


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: ours, minus the config path, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != CONFIG_ENV}
    env.setdefault("COLUMNS", "200")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def run_cli_process(
    *args: str,
    cwd: str | os.PathLike[str],
    input: str | None = None,
    env: dict[str, str] | None = None,
    command: Sequence[str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python <repo>/src/infra/backup/__main__.py *args`` (or ``command + args``).

    ``input=None`` gives the child an empty stdin (``/dev/null``), never the test's own.
    """
    argv = [*(command or [sys.executable, str(MAIN_SCRIPT)]), *args]
    return subprocess.run(
        argv,
        cwd=cwd,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def run_cli() -> CliRunner:
    """``run_cli(*args, cwd=..., input=None, env=None, command=None)`` -> CompletedProcess."""
    return run_cli_process
