"""Unique ids: two backups in one second, and four real processes writing at once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ID_PATTERN = re.compile(r"^[a-z0-9_-]+_\d{8}_\d{6}(_\d+)?$")
ID_PARTS = re.compile(r"^(?P<base>[a-z0-9_-]+_\d{8}_\d{6})(?:_(?P<n>\d+))?$")


def test_two_backups_in_one_second_get_distinct_ids(tmp_path: Path) -> None:
    for attempt in range(10):
        manager = BackupManager(
            BackupConfig(backup_path=tmp_path / f"r{attempt}", retention_days=0)
        )
        # Start right after a second boundary so both land in the same second.
        time.sleep(1.0 - (time.time() % 1.0) + 0.01)
        first = manager.create_backup({"n": 1})
        second = manager.create_backup({"n": 2})
        third = manager.create_backup({"n": 3})
        if ID_PARTS.match(first)["base"] != ID_PARTS.match(third)["base"]:  # type: ignore[index]
            continue  # crossed a second boundary after all: try again
        assert re.fullmatch(r"manual_\d{8}_\d{6}", first), first
        assert second == f"{first}_2"
        assert third == f"{first}_3"
        listed = [info.backup_id for info in manager.list_backups()]
        assert listed == [third, second, first]  # newest first, suffix order respected
        assert [manager.load_backup(i)["n"] for i in (first, second, third)] == [1, 2, 3]
        # A second manager (another "process" view) continues the numbering.
        other = BackupManager(manager.config)
        fourth = other.create_backup({"n": 4})
        if fourth.startswith(first):
            assert fourth == f"{first}_4"
        return
    pytest.fail("could not create three backups within one second in 10 attempts")


def test_id_shape_for_every_type(manager: BackupManager) -> None:
    for backup_type in ("manual", "automatic", "pre_trade", "scheduled", "pre-session", "x9"):
        backup_id = manager.create_backup({"t": backup_type}, backup_type=backup_type)
        assert ID_PATTERN.match(backup_id), backup_id
        assert backup_id.startswith(backup_type + "_")
        info = manager.get_backup_info(backup_id)
        assert info.backup_type == backup_type
        assert info.timestamp.strftime("%Y%m%d_%H%M%S") in backup_id


WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from src.infra.backup import BackupConfig, BackupManager

    repo, worker, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    manager = BackupManager(BackupConfig(backup_path=repo, retention_days=0))
    # Warm up (imports, repo.json) before the start signal, so all writers overlap.
    print("ready", flush=True)
    deadline = time.time() + 30
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.005)
    ids = []
    for n in range(count):
        data = {"portfolio": {"worker": worker, "n": n, "equity": 10000 + n},
                "shared": {"strategy": "ma_crossover", "risk_per_trade": 0.01}}
        ids.append(manager.create_backup(data, backup_type="manual"))
    print(json.dumps(ids))
    """
)


@pytest.mark.slow
def test_four_processes_create_25_backups_each(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(repo), str(w), "25", str(go)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    for proc in workers:  # all have imported and wait for the signal: they will overlap
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n", proc.communicate()[1]
    go.touch()
    results = []
    for proc in workers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))

    all_ids = [backup_id for ids in results for backup_id in ids]
    assert len(all_ids) == 100
    assert len(set(all_ids)) == 100, "duplicate ids"
    for backup_id in all_ids:
        assert ID_PATTERN.match(backup_id), backup_id

    manager = BackupManager(BackupConfig(backup_path=repo, retention_days=0))
    listed = [info.backup_id for info in manager.list_backups()]
    assert sorted(listed) == sorted(all_ids)
    recovery = RecoveryManager(manager)
    for worker, ids in enumerate(results):
        for n, backup_id in enumerate(ids):
            data = manager.load_backup(backup_id)
            assert data["portfolio"] == {"worker": worker, "n": n, "equity": 10000 + n}
            assert recovery.verify_backup(backup_id), backup_id
    # No temp files left by completed writes.
    leftovers = [p for p in repo.rglob(".tmp-*")]
    assert leftovers == []
