"""File trees restored as they were: symbolic links, directories, hard links, owners; special
files never opened; files that vanish or cannot be read are warnings, never a failed backup;
restore never writes through a symbolic link, whatever a hostile manifest says."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryError, RecoveryManager
from src.infra.backup.cli.context import EXIT_WARNINGS
from src.infra.backup.files.archiver import FileInput, RecordedEntry, entry_sources
from src.infra.backup.files.sources import scan_sources
from src.infra.backup.format.manifest import FORMAT_VERSION
from tests.helpers import MAIN_SCRIPT, run_cli_inline

IS_ROOT = os.geteuid() == 0


def tree_manager(root: Path, sources: list[str] | None = None) -> BackupManager:
    return BackupManager(
        BackupConfig(
            backup_path=str(root / "repo"),
            sources=sources or ["state/"],
            base_dir=str(root),
            retention_days=0,
        )
    )


def make_tree(root: Path, outside: Path) -> Path:
    """A state directory with links, empty directories, modes and a hard link."""
    state = root / "state"
    (state / "empty" / "deeper").mkdir(parents=True)
    (state / "locked").mkdir()
    (state / "data.json").write_text('{"equity": 1}\n')
    (state / "locked" / "inside.txt").write_text("inside\n")
    os.symlink("data.json", state / "current.json")  # relative link
    os.symlink(str(outside), state / "elsewhere")  # a link to a directory outside: not followed
    os.symlink("missing-target", state / "dangling")
    (state / "big.bin").write_bytes(os.urandom(300_000))
    os.link(state / "big.bin", state / "big-copy.bin")
    os.chmod(state / "empty", 0o750)
    os.chmod(state / "locked", 0o711)
    os.utime(state / "empty" / "deeper", ns=(1_600_000_000_123_456_789,) * 2)
    os.utime(state / "empty", ns=(1_600_000_001_000_000_000,) * 2)
    os.utime(state / "current.json", ns=(1_650_000_000_000_000_000,) * 2, follow_symlinks=False)
    return state


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "not-ours.txt").write_text("must never be backed up\n")
    return folder


def test_links_directories_and_hard_links_round_trip(tmp_path: Path, outside: Path) -> None:
    state = make_tree(tmp_path, outside)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    manifest = manager.repository.read_manifest(backup_id)
    kinds = {e.name: e.kind for e in manifest.entries}
    assert kinds["state/current.json"] == "symlink"
    assert kinds["state/elsewhere"] == "symlink"
    assert kinds["state/dangling"] == "symlink"
    assert kinds["state/empty/deeper"] == "dir"
    # the first name in sort order holds the content: "big-copy.bin" < "big.bin"
    assert kinds["state/big-copy.bin"] == "file" and kinds["state/big.bin"] == "hardlink"
    assert not any("not-ours" in name for name in kinds)  # the link was not followed
    assert manifest.format == FORMAT_VERSION
    assert manager.get_backup_info(backup_id).warnings == []
    # The hard link is stored once: its entry has no chunks of its own.
    by_name = {e.name: e for e in manifest.entries}
    assert by_name["state/big.bin"].target == "state/big-copy.bin"
    assert not by_name["state/big.bin"].chunks and not by_name["state/big.bin"].lists

    target = tmp_path / "restored"
    RecoveryManager(manager).restore_to_directory(backup_id, target, verify=True)
    out = target / "state"
    assert os.readlink(out / "current.json") == "data.json"
    assert os.readlink(out / "elsewhere") == str(outside)
    assert os.readlink(out / "dangling") == "missing-target"
    assert (out / "current.json").lstat().st_mtime_ns == 1_650_000_000_000_000_000
    assert (out / "empty" / "deeper").is_dir() and not any((out / "empty" / "deeper").iterdir())
    assert stat.S_IMODE((out / "empty").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "locked").stat().st_mode) == 0o711
    assert (out / "empty" / "deeper").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert (out / "empty").stat().st_mtime_ns == 1_600_000_001_000_000_000
    assert (out / "big.bin").read_bytes() == (state / "big.bin").read_bytes()
    assert (out / "big.bin").stat().st_ino == (out / "big-copy.bin").stat().st_ino
    assert (out / "locked" / "inside.txt").read_text() == "inside\n"


@pytest.mark.skipif(not IS_ROOT, reason="only root can give files another owner")
def test_owner_is_restored_when_running_as_root(tmp_path: Path, outside: Path) -> None:
    state = make_tree(tmp_path, outside)
    os.chown(state / "data.json", 1234, 5678)
    os.chown(state / "empty", 4321, 8765)
    os.chown(state / "current.json", 1111, 2222, follow_symlinks=False)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    target = tmp_path / "restored"
    RecoveryManager(manager).restore_to_directory(backup_id, target)
    out = target / "state"
    assert ((out / "data.json").stat().st_uid, (out / "data.json").stat().st_gid) == (1234, 5678)
    assert ((out / "empty").stat().st_uid, (out / "empty").stat().st_gid) == (4321, 8765)
    link = (out / "current.json").lstat()
    assert (link.st_uid, link.st_gid) == (1111, 2222)


def test_fifo_and_socket_are_never_opened_and_are_warned_about(
    tmp_path: Path, outside: Path
) -> None:
    state = make_tree(tmp_path, outside)
    os.mkfifo(state / "pipe")  # opening it for reading would block the backup forever
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "bot.sock"))
    try:
        manager = tree_manager(tmp_path)
        backup_id = manager.create_backup(None, include_files=True)
    finally:
        server.close()
    info = manager.get_backup_info(backup_id)
    assert len(info.warnings) == 2
    assert any(str(state / "pipe") in w and "FIFO" in w for w in info.warnings)
    assert any(str(state / "bot.sock") in w and "socket" in w for w in info.warnings)
    names = {e.name for e in manager.repository.read_manifest(backup_id).entries}
    assert "state/pipe" not in names and "state/bot.sock" not in names
    assert "state/data.json" in names


def test_a_file_that_vanished_before_it_was_read_is_a_warning(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "keep.json").write_text("{}\n")
    (state / "gone.json").write_text("{}\n")
    manager = tree_manager(tmp_path)
    repository = manager.open_repository(create=True)
    scan = scan_sources(["state/"], tmp_path)
    (state / "gone.json").unlink()  # between listing and reading
    manifest = repository.create_snapshot(
        "manual", entry_sources(scan.items), base_dir=str(tmp_path), warnings=scan.warnings
    )
    assert [e.name for e in manifest.entries if e.kind == "file"] == ["state/keep.json"]
    assert len(manifest.warnings) == 1
    assert str(state / "gone.json") in manifest.warnings[0]
    assert "vanished" in manifest.warnings[0]


def test_temp_files_of_a_killed_restore_are_never_backed_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "a.json").write_text("{}\n")
    (state / ".tmp-123-abcdef01-0123456789abcdef").write_text("half a restore\n")
    manager = tree_manager(tmp_path, ["state/", "state/*", "state/.tmp-*"])
    backup_id = manager.create_backup(None, include_files=True)
    names = {e.name for e in manager.repository.read_manifest(backup_id).entries}
    assert names == {"state", "state/a.json"}


def test_cli_create_with_warnings_exits_10_and_lists_them(tmp_path: Path, outside: Path) -> None:
    state = make_tree(tmp_path, outside)
    os.mkfifo(state / "pipe")
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "./repo"\nsources = ["state/"]\nretention_days = 0\n'
    )
    result = run_cli_inline("create", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_WARNINGS == 10, result.stderr
    created = json.loads(result.stdout)
    assert len(created["warnings"]) == 1 and "pipe" in created["warnings"][0]
    assert "pipe" in result.stderr  # named on stderr too
    shown = run_cli_inline("show", created["backup_id"], cwd=tmp_path)
    assert shown.returncode == 0 and "FIFO" in shown.stdout
    listed = json.loads(run_cli_inline("list", "--json", cwd=tmp_path).stdout)
    assert listed[0]["warnings"] == created["warnings"]
    os.unlink(state / "pipe")
    clean = run_cli_inline("create", "--json", cwd=tmp_path)
    assert clean.returncode == 0 and json.loads(clean.stdout)["warnings"] == []


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(
    not IS_ROOT or SETPRIV is None, reason="needs root and setpriv to drop the read override"
)
def test_unreadable_file_is_skipped_with_a_warning(tmp_path: Path) -> None:
    """Root reads everything, so the backup runs in a real process whose capabilities to
    override file permissions are dropped (setpriv): the file is really unreadable to it."""
    project = tmp_path / "project"
    state = project / "state"
    state.mkdir(parents=True)
    (state / "ok.json").write_text("{}\n")
    (state / "secret-ish.bin").write_bytes(b"x" * 100)
    os.chmod(state / "secret-ish.bin", 0o000)
    (project / "config.toml").write_text(
        '[backup]\nbackup_path = "./repo"\nsources = ["state/"]\nretention_days = 0\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "PEAK_TRADE_CONFIG_PATH"}
    assert SETPRIV is not None
    result = subprocess.run(
        [
            SETPRIV,
            "--bounding-set=-dac_override,-dac_read_search",
            *(sys.executable, "-B", str(MAIN_SCRIPT), "create", "--json"),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_WARNINGS, result.stderr
    created = json.loads(result.stdout)
    assert created["files"] == ["state/ok.json"]
    assert len(created["warnings"]) == 1
    assert "secret-ish.bin" in created["warnings"][0]
    assert "Permission denied" in created["warnings"][0]


def _hostile_backup(manager: BackupManager, outside: Path, tmp_path: Path) -> str:
    """A backup holding a link ``a -> outside`` and a file ``a/b``, as a forged manifest
    could (the archiver itself never produces it)."""
    payload = tmp_path / "payload"
    payload.write_text("escaped\n")
    repository = manager.open_repository(create=True)
    manifest = repository.create_snapshot(
        "manual",
        [RecordedEntry("a", "symlink", target=str(outside)), FileInput("a/b", payload)],
        base_dir=str(tmp_path / "project"),
    )
    return manifest.backup_id


def test_hostile_manifest_link_then_file_below_it_is_refused(tmp_path: Path, outside: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    manager = BackupManager(
        BackupConfig(
            backup_path=str(tmp_path / "repo"),
            sources=["a"],
            base_dir=str(project),
            retention_days=0,
        )
    )
    backup_id = _hostile_backup(manager, outside, tmp_path)
    before = sorted(p.name for p in outside.iterdir())
    recovery = RecoveryManager(manager)
    target = tmp_path / "restored"
    with pytest.raises(RecoveryError, match="lies below 'a', which the backup holds as a symbolic"):
        recovery.restore_to_directory(backup_id, target)
    assert not target.exists()  # nothing written at all
    with pytest.raises(RecoveryError, match="symbolic link"):
        recovery.restore_in_place(backup_id)
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not (outside / "b").exists()
    assert list(project.iterdir()) == []


def test_restore_refuses_a_link_planted_in_the_target(tmp_path: Path, outside: Path) -> None:
    """A target that already holds a link where the backup has a directory: refused, nothing
    written through it."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "a.json").write_text("{}\n")
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    target = tmp_path / "restored"
    target.mkdir()
    os.symlink(outside, target / "state")
    with pytest.raises(RecoveryError, match="symbolic link"):
        RecoveryManager(manager).restore_to_directory(backup_id, target)
    assert not (outside / "a.json").exists()


def test_in_place_restore_recreates_links_and_directories(tmp_path: Path, outside: Path) -> None:
    state = make_tree(tmp_path, outside)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    os.unlink(state / "current.json")
    os.symlink("big.bin", state / "current.json")  # now points elsewhere
    os.unlink(state / "dangling")
    (state / "empty" / "deeper").rmdir()
    result = RecoveryManager(manager).restore_in_place(backup_id, verify=True)
    assert os.readlink(state / "current.json") == "data.json"
    assert os.readlink(state / "dangling") == "missing-target"
    assert (state / "empty" / "deeper").is_dir()
    assert (state / "empty" / "deeper").stat().st_mtime_ns == 1_600_000_000_123_456_789
    actions = {a.name: a.action for a in result.actions}
    assert actions["state/current.json"] == "overwrite"
    assert actions["state/dangling"] == "create"
    assert actions["state/empty/deeper"] == "create"
    # The replaced link is in the pre_restore backup, and restoring it undoes the change.
    assert result.pre_restore_id is not None
    RecoveryManager(manager).restore_in_place(result.pre_restore_id)
    assert os.readlink(state / "current.json") == "big.bin"


def test_cat_of_a_link_and_a_hard_link(tmp_path: Path, outside: Path) -> None:
    state = make_tree(tmp_path, outside)
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "./repo"\nsources = ["state/"]\nretention_days = 0\n'
    )
    created = run_cli_inline("create", "--json", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backup_id"]
    link = run_cli_inline("cat", backup_id, "state/current.json", cwd=tmp_path)
    assert link.returncode == 0 and link.stdout == "data.json\n"
    # state/big.bin is the name of a hard link
    hard = run_cli_inline("cat", backup_id, "state/big.bin", "--json", cwd=tmp_path)
    assert hard.returncode == 0, hard.stderr
    assert base64.b64decode(json.loads(hard.stdout)["base64"]) == (state / "big.bin").read_bytes()
    directory = run_cli_inline("cat", backup_id, "state/empty", cwd=tmp_path)
    assert directory.returncode == 2 and "is a directory" in directory.stderr
    assert (state / "big.bin").exists()


def test_the_repository_inside_a_source_is_never_backed_up(tmp_path: Path) -> None:
    (tmp_path / "bot.json").write_text("{}\n")
    manager = tree_manager(tmp_path, ["."])  # the repository is ./repo, inside the source
    first = manager.create_backup(None, include_files=True)
    second = manager.create_backup(None, include_files=True)
    for backup_id in (first, second):
        names = {e.name for e in manager.repository.read_manifest(backup_id).entries}
        assert names == {"bot.json"}
        assert manager.get_backup_info(backup_id).warnings == []


@pytest.mark.parametrize("fmt", ["dir", "tar.gz"])
def test_export_and_import_keep_links_and_directories(
    tmp_path: Path, outside: Path, fmt: str
) -> None:
    from src.infra.backup.app.export import export_backup, import_backup

    make_tree(tmp_path, outside)
    manager = tree_manager(tmp_path)
    backup_id = manager.create_backup(None, include_files=True)
    exported = export_backup(manager, backup_id, tmp_path / "exports", fmt=fmt)  # type: ignore[arg-type]
    if fmt == "dir":  # plain files only: the link is described, never written as a link
        assert not any(p.is_symlink() for p in exported.rglob("*"))
    other = BackupManager(BackupConfig(backup_path=str(tmp_path / "other"), retention_days=0))
    import_backup(other, exported)
    target = tmp_path / "restored"
    RecoveryManager(other).restore_to_directory(backup_id, target)
    out = target / "state"
    assert os.readlink(out / "current.json") == "data.json"
    assert (out / "empty" / "deeper").is_dir()
    assert stat.S_IMODE((out / "empty").stat().st_mode) == 0o750
    assert (out / "big.bin").read_bytes() == (tmp_path / "state" / "big.bin").read_bytes()
