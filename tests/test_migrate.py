"""``migrate``: the committed format-1 repositories (tests/data/format1) upgraded to format 2 in
place restore exactly as before; a migrate killed half-way leaves a readable repository that
a rerun finishes; prune then reclaims the loose copies."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from src.infra.backup.app.recovery import RecoveryManager
from src.infra.backup.repository.migrate import migrate_repository
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.local import LocalStore
from tests.helpers import PROJECT_ROOT, run_cli_inline
from tests.stored_chunks import repo_format
from tests.test_format_compat import (
    EXPECTED,
    FIXTURE_DIR,
    GENERATOR,
    PASSPHRASE,
    _backups,
    _manager,
    assert_same,
)

ZERO = timedelta(0)


@pytest.fixture(params=sorted(EXPECTED["repositories"]))
def old_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    name: str = request.param
    copy = tmp_path / f"format1-{name}"
    shutil.copytree(FIXTURE_DIR / name, copy)
    yield name, copy


def _loose(path: Path) -> set[str]:
    chunks = path / "chunks"
    return {p.name for p in chunks.rglob("*") if p.is_file()} if chunks.exists() else set()


def _assert_restores(name: str, path: Path) -> None:
    manager = _manager(name, path)
    recovery = RecoveryManager(manager)
    for backup in _backups(name):
        assert_same(
            manager.load_backup(backup["id"]),
            GENERATOR.backup_values(backup["values_step"]),
            backup["id"],
        )
        assert recovery.verify_backup(backup["id"])
    report = manager.check()
    assert report.clean, report.to_json()


def test_migrate_upgrades_in_place_and_prune_reclaims_the_loose_copies(
    old_repo: tuple[str, Path],
) -> None:
    name, path = old_repo
    loose_before = _loose(path)
    manager = _manager(name, path)
    report = migrate_repository(manager.repository)
    assert (report.format_before, report.format_after) == (1, 2)
    assert report.chunks_packed and report.packs_written and not report.damaged
    assert repo_format(path) == 2
    assert _loose(path) == loose_before  # still there until prune
    _assert_restores(name, path)
    # A new backup in the upgraded repository goes into a pack.
    fresh = _manager(name, path)
    new_id = fresh.create_backup({"after": "migrate"})
    assert _loose(path) == loose_before
    prune = fresh.prune(grace=ZERO)
    assert prune.deleted > 0
    assert not _loose(path)
    _assert_restores(name, path)
    assert _manager(name, path).load_backup(new_id) == {"after": "migrate"}
    again = migrate_repository(_manager(name, path).repository)
    assert again.format_before == again.format_after == 2 and not again.chunks_packed


def test_migrate_cli(old_repo: tuple[str, Path], tmp_path: Path) -> None:
    name, path = old_repo
    encrypted = EXPECTED["repositories"][name]["encryption"] != "none"
    config = tmp_path / "config.toml"
    config.write_text(f'[backup]\nbackup_path = "{path}"\n')
    env = {"PEAK_BACKUP_PASSWORD": PASSPHRASE} if encrypted else {}
    result = run_cli_inline("--config", str(config), "--json", "migrate", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["format_before"] == 1 and answer["format_after"] == 2
    result = run_cli_inline("--config", str(config), "migrate", env=env, cwd=tmp_path)
    assert result.returncode == 0 and "already in format 2" in result.stdout
    _assert_restores(name, path)


KILLED_MIGRATE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from src.infra.backup.repository import blob_writer
    from src.infra.backup.repository.repository import Repository
    from src.infra.backup.repository.migrate import migrate_repository
    from src.infra.backup.storage.local import LocalStore
    written = blob_writer.BlobWriter._write_packs
    def slow(self, groups):
        written(self, groups)
        print("packs", flush=True)
        import time
        time.sleep(60)  # killed here: packs written, repo.json not yet switched
    blob_writer.BlobWriter._write_packs = slow
    migrate_repository(Repository.open(LocalStore(sys.argv[1]), create=False))
    """
)


def test_a_migrate_killed_half_way_leaves_a_readable_repository_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "repo"
    shutil.copytree(FIXTURE_DIR / "plain", path)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_MIGRATE, str(path), str(PROJECT_ROOT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while process.stdout.readline().strip() != "packs":
        assert time.monotonic() < deadline and process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert repo_format(path) == 1  # not switched: still a format-1 repository
    _assert_restores("plain", path)  # with extra packs beside its chunks
    report = migrate_repository(Repository.open(LocalStore(path), create=False))
    assert report.already_packed > 0  # the killed run's packs are used, not written again
    assert repo_format(path) == 2
    _assert_restores("plain", path)
