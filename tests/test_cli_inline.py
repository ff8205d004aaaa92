"""``run_cli_inline`` (the CLI in this process) gives what ``run_cli_process`` (a child
process) gives, and leaves nothing of the call behind in this process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.cli import output as cli_output
from src.infra.backup.format import crypto
from src.infra.backup.repository import locks
from tests.helpers import CONFIG_ENV, IN_CHILD_ENV, MAIN_SCRIPT, run_cli_inline, run_cli_process

pytestmark = pytest.mark.skipif(
    os.environ.get(IN_CHILD_ENV, "") not in ("", "0"),
    reason=f"${IN_CHILD_ENV}: run_cli_inline runs in a child process, nothing here to test",
)

CONFIG = '[backup]\nbackup_path = "./backups"\nretention_days = 0\nsources = ["data/"]\n'
PASSWORD = "inline passphrase"


@pytest.fixture(scope="module")
def project_with_one_backup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project with one backup of ``data/`` (read-only for the tests here)."""
    root = tmp_path_factory.mktemp("inline")
    (root / "config.toml").write_text(CONFIG)
    (root / "data").mkdir()
    (root / "data" / "a.json").write_text('{"equity": 10000.5}\n')
    (root / "data" / "blob.bin").write_bytes(bytes(range(256)) * 4)
    backup_id = BackupManager(
        BackupConfig(backup_path=root / "backups", sources=["data/"], base_dir=root)
    ).create_backup(None, include_files=True)
    return root, backup_id


def without_status(stderr: str) -> str:
    """``stderr`` without the ``--json`` progress lines, which carry timings."""
    return "".join(
        line
        for line in stderr.splitlines(keepends=True)
        if not line.startswith('{"message_type":"status"')
    )


def same(args: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    inline = run_cli_inline(*args, cwd=cwd, **kwargs)  # type: ignore[arg-type]
    child = run_cli_process(*args, cwd=cwd, **kwargs)  # type: ignore[arg-type]
    assert (inline.returncode, inline.stdout, without_status(inline.stderr)) == (
        child.returncode,
        child.stdout,
        without_status(child.stderr),
    ), args
    return inline


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["list"], 0),
        (["list", "--json"], 0),
        (["--json", "show", "{id}"], 0),
        (["show", "{id}"], 0),
        (["verify", "--all"], 0),
        (["-v", "check"], 0),
        (["--log-json", "-v", "verify", "--json"], 0),
        (["cat", "{id}", "data/a.json"], 0),
        (["--help"], 0),
        (["restore", "--help"], 0),
        (["--version"], 0),
        (["show", "manual_20000101_000000"], 3),
        (["--json", "show", "manual_20000101_000000"], 3),
        (["create", "--tag", "novalue"], 2),
        (["create", "--type", "Pre Trade", "--json"], 2),
        (["no-such-command"], 2),
        (["delete", "{id}"], 7),
        (["delete", "{id}", "--json"], 7),
    ],
)
def test_inline_equals_child_process(
    project_with_one_backup: tuple[Path, str], args: list[str], code: int
) -> None:
    root, backup_id = project_with_one_backup
    result = same([arg.format(id=backup_id) for arg in args], root)
    assert result.returncode == code, result
    if "--json" in args and code != 2:
        json.loads(result.stdout)


def test_inline_equals_child_process_with_input_env_and_config_errors(
    project_with_one_backup: tuple[Path, str], tmp_path: Path
) -> None:
    root, backup_id = project_with_one_backup
    same(["delete", backup_id], root, input="n\n")  # answered no: exit 7
    same(["list"], root, env={"COLUMNS": "80"})
    same(["--json", "list"], tmp_path, env={CONFIG_ENV: str(root / "config.toml")})
    (tmp_path / "config.toml").write_text(CONFIG + "retention_dayz = 3\n")
    assert same(["list"], tmp_path).returncode == 6
    assert same(["--json", "list"], tmp_path).returncode == 6
    (tmp_path / "config.toml").write_text("[backup\n")
    assert same(["list"], tmp_path).returncode == 6


def test_inline_equals_child_process_on_an_encrypted_repository(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.json").write_text("{}\n")
    env = {"PEAK_BACKUP_PASSWORD": PASSWORD}
    created = run_cli_inline("init", "--encryption", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    assert run_cli_inline("create", cwd=tmp_path, env=env).returncode == 0
    assert same(["--json", "verify"], tmp_path, env=env).returncode == 0
    assert same(["list"], tmp_path, env={"PEAK_BACKUP_PASSWORD": "wrong"}).returncode == 8
    assert same(["--json", "list"], tmp_path).returncode == 8  # stdin is not a terminal


def test_binary_output(project_with_one_backup: tuple[Path, str]) -> None:
    root, backup_id = project_with_one_backup
    inline = run_cli_inline("cat", backup_id, "data/blob.bin", cwd=root, text=False)
    child = subprocess.run(
        [sys.executable, str(MAIN_SCRIPT), "cat", backup_id, "data/blob.bin"],
        cwd=root,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert inline.returncode == child.returncode == 0
    assert inline.stdout == child.stdout == bytes(range(256)) * 4


def test_a_call_leaves_this_process_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "config.toml").write_text(CONFIG)
    monkeypatch.setenv("PEAK_TEST_MARKER", "kept")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "elsewhere.toml"))
    logger = logging.getLogger("src.infra.backup")
    request.addfinalizer(lambda level=logger.level: logger.setLevel(level))  # for later tests
    logger.setLevel(logging.ERROR)
    before = {
        "cwd": os.getcwd(),
        "argv": list(sys.argv),
        "env": dict(os.environ),
        "root_handlers": list(logging.getLogger().handlers),
        "root_level": logging.getLogger().level,
        "level": logger.level,
        "sigterm": signal.getsignal(signal.SIGTERM),
        "stdout": sys.stdout,
    }
    result = run_cli_inline("--log-json", "-v", "create", cwd=root, env={"COLUMNS": "90"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("{")  # the call's log lines went to its own stderr
    assert {
        "cwd": os.getcwd(),
        "argv": list(sys.argv),
        "env": dict(os.environ),
        "root_handlers": list(logging.getLogger().handlers),
        "root_level": logging.getLogger().level,
        "level": logger.level,
        "sigterm": signal.getsignal(signal.SIGTERM),
        "stdout": sys.stdout,
    } == before
    # The consoles are built again for the next call's streams (a child process builds them).
    assert all(isinstance(c.get(), Console) for c in (cli_output.stdout, cli_output.stderr))


def test_a_call_does_not_see_the_config_path_of_the_test(
    project_with_one_backup: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like ``cli_env``: the child gets our environment without $PEAK_TRADE_CONFIG_PATH."""
    root, backup_id = project_with_one_backup
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.toml"))
    listed = run_cli_inline("list", "--json", cwd=root)
    assert listed.returncode == 0, listed.stderr
    assert [b["backup_id"] for b in json.loads(listed.stdout)] == [backup_id]


def test_caches_and_locks_of_a_call_do_not_outlive_it(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "data").mkdir()
    env = {"PEAK_BACKUP_PASSWORD": PASSWORD}
    keys_before = dict(crypto._cache)
    held_before = dict(locks._held_here)
    assert run_cli_inline("init", "--encryption", cwd=tmp_path, env=env).returncode == 0
    assert run_cli_inline("prune", "--grace", "0s", cwd=tmp_path, env=env).returncode == 0
    assert dict(crypto._cache) == keys_before
    assert dict(locks._held_here) == held_before


def test_unexpected_exception_is_a_traceback_and_status_1(
    project_with_one_backup: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the interpreter does with an exception nobody caught."""
    root, _backup_id = project_with_one_backup

    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(BackupManager, "list_backups", boom)
    result = run_cli_inline("list", cwd=root)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: unexpected" in result.stderr
