"""Crash safety: a writer SIGKILLed at random moments never leaves a partial backup.

A child process backs up a deterministic, growing state (and two real files) in a loop; the
parent kills it at a random moment, over and over, each time a new child against the same
repository. After every kill, every listed backup must load, verify, and equal exactly the
state the child would have written for the index stored inside it.

Each kill lands inside the backup loop: the parent waits until the child says it is ready
(imported, manager open), so no kill is spent on interpreter startup. A third of the kills
come at a random moment (encoding, chunking, writing, anything); a third while the child is
stopped in the middle of its n-th object write (the temporary file written and fsync'ed, not
yet renamed into place; n random); a third in the middle of writing a backup's manifest, the
commit point (that backup must then not exist). On a fast disk a random moment rarely falls
inside a write, so the last two kinds make sure the kills mid-write happen every run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KILLS = 12  # 4 at a random moment, 4 mid-write, 4 mid-commit

# Shared by the child (which writes) and the parent (which regenerates and compares).
GENERATOR = """
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD")
STATIC_CONFIG = "[strategy]\\nname = 'ma_crossover'\\nfast_period = 10\\nslow_period = 30\\n"


def trade(j):
    return {
        "id": j,
        "timestamp": f"2025-12-17T{(j // 3600) % 24:02d}:{(j // 60) % 60:02d}:{j % 60:02d}",
        "symbol": SYMBOLS[j % 4],
        "side": "buy" if j % 3 else "sell",
        "size": round(0.001 * (j % 100 + 1), 6),
        "price": 50000.0 + (j % 1000) * 0.5,
    }


def make_state(i):
    n = 20000 + 40 * (i % 500)
    return {
        "portfolio": {
            "index": i,
            "as_of": datetime(2025, 12, 17, 10, 0, tzinfo=timezone.utc) + timedelta(seconds=i),
            "equity": 10000.0 + i,
            "cash": Decimal("5000.00") - Decimal(i) / 100,
            "positions": [{"symbol": s, "size": 0.1 * (k + 1), "entry_price": 50000 + i}
                          for k, s in enumerate(SYMBOLS)],
        },
        "history": {
            "index": i,
            "trades": [trade(j) for j in range(n)],
            "performance": {"total_return": 0.15, "sharpe_ratio": 1.8, "n": n},
        },
    }


def journal_text(i):
    return "".join(f'{{"i": {i}, "line": {k}, "pnl": {k * 0.25}}}\\n'
                   for k in range(200 + 5 * (i % 500)))


def write_files(workdir, i):
    workdir = Path(workdir)
    static = workdir / "static.toml"
    if not static.exists():
        static.write_text(STATIC_CONFIG)
    runs = workdir / "live_runs"
    runs.mkdir(exist_ok=True)
    (runs / "journal.jsonl").write_text(journal_text(i))
"""

CHILD = (
    GENERATOR
    + """
import sys
from src.infra.backup import BackupConfig, BackupManager

repo, workdir, start, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if pause:  # "<directory or any>:<n>": stop in the n-th object write there, for the kill
    import time
    from src.infra.backup.storage import local

    where, nth = pause.split(":")
    real_write_temp_file, seen = local.write_temp_file, [0]

    def write_temp_file(directory, data, **options):
        temp = real_write_temp_file(directory, data, **options)
        if where in ("any", directory.name):
            seen[0] += 1
            if seen[0] == int(nth):
                print("paused", temp, flush=True)  # written and synced, not renamed yet
                time.sleep(3600)
        return temp

    local.write_temp_file = write_temp_file
manager = BackupManager(BackupConfig(
    backup_path=repo, retention_days=0, sources=["static.toml", "live_runs/"], base_dir=workdir,
))
print("ready", flush=True)
i = start
while True:
    write_files(workdir, i)
    backup_id = manager.create_backup(make_state(i), backup_type=("automatic", "pre_trade")[i % 2])
    print("committed", i, backup_id, flush=True)
    i += 1
"""
)

generated: dict[str, Any] = {}
exec(compile(GENERATOR, "<crash-generator>", "exec"), generated)


def temp_files(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for p in repo.rglob(".tmp-*")} if repo.exists() else set()


def check_repository(repo: Path, workdir: Path, verified: dict[str, int]) -> int:
    """Check every listed backup (fully: load, verify, compare) that was not checked before;
    re-check the structure of all. Returns the number of listed backups."""
    manager = BackupManager(BackupConfig(backup_path=repo, retention_days=0))
    infos = manager.list_backups()  # must never fail
    if not infos and not (repo / "repo.json").exists():
        return 0  # killed before it created the repository: nothing to check
    recovery = RecoveryManager(manager)
    repository = manager.repository
    seen_indexes = set(verified.values())
    for info in infos:
        backup_id = info.backup_id
        if backup_id in verified:
            report = recovery.verify_backup_report(backup_id, read_data=False)
            assert report.ok, (backup_id, report.problems)
            continue
        data = manager.load_backup(backup_id)
        index = data["portfolio"]["index"]
        assert data["history"]["index"] == index, backup_id
        assert data == generated["make_state"](index), f"{backup_id}: partial or wrong data"
        assert recovery.verify_backup(backup_id), backup_id
        manifest = repository.read_manifest(backup_id)
        files = {e.name: e for e in manifest.entries if e.kind == "file"}
        assert set(files) == {"static.toml", "live_runs/journal.jsonl"}, backup_id
        assert repository.read_entry(files["static.toml"]).decode() == generated["STATIC_CONFIG"]
        journal = repository.read_entry(files["live_runs/journal.jsonl"]).decode()
        assert journal == generated["journal_text"](index), f"{backup_id}: wrong journal"
        assert index not in seen_indexes, f"index {index} committed twice"
        assert info.backup_type == ("automatic", "pre_trade")[index % 2]
        seen_indexes.add(index)
        verified[backup_id] = index
    listed = {info.backup_id for info in infos}
    assert set(verified) <= listed, "a verified backup disappeared"
    return len(infos)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_at_random_moments_never_leaves_a_partial_backup(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    workdir = tmp_path / "work"
    workdir.mkdir()
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)

    verified: dict[str, int] = {}
    counts = {
        "kills": 0,
        "mid_write": 0,
        "commits_seen": 0,
        "after_commit_before_report": 0,
    }
    for kill in range(KILLS):
        mode = ("moment", "write", "commit")[kill % 3]
        pause = {"moment": "", "write": f"any:{rng.randint(1, 40)}", "commit": "snapshots:1"}
        args = [str(repo), str(workdir), str(kill * 10_000), pause[mode]]
        before_temps = temp_files(repo)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        ready = child.stdout.readline()
        assert ready == "ready\n", (ready, child.communicate()[1])
        before_kill: list[str] = []
        if mode == "moment":
            time.sleep(rng.uniform(0.0, 0.5))  # a random moment in the backup loop
        else:
            for line in child.stdout:  # until the child stops inside the write
                before_kill.append(line)
                if line.startswith("paused"):
                    break
        assert child.poll() is None, child.communicate()[1]  # it must still be running
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err
        counts["kills"] += 1
        lines = [line.rstrip("\n") for line in before_kill] + out.splitlines()
        printed = sum(1 for line in lines if line.startswith("committed"))
        counts["commits_seen"] += printed
        new_temps = temp_files(repo) - before_temps
        if mode != "moment":
            paused = next(line for line in lines if line.startswith("paused")).split()[1]
            # The kill came inside the write: its temporary file is left, nothing else.
            assert str(Path(paused).relative_to(repo)) in new_temps, (mode, paused, new_temps)
        counts["mid_write"] += bool(new_temps)
        listed_before = len(verified)
        check_repository(repo, workdir, verified)
        unreported = len(verified) - listed_before - printed
        assert unreported in (0, 1), f"{unreported} backups appeared that the child never began"
        if mode == "commit":
            assert unreported == 0, "a backup killed while writing its manifest is listed"
        counts["after_commit_before_report"] += unreported

    listed = check_repository(repo, workdir, {})  # at the end: everything, fully, again
    assert listed == len(verified), (seed, counts)
    assert listed > 0, f"no backup was ever committed (seed {seed}, {counts})"
    assert listed >= counts["commits_seen"]
    assert counts["mid_write"] >= 2 * KILLS // 3, counts

    # The repository stays fully usable after all that debris.
    manager = BackupManager(BackupConfig(backup_path=repo, retention_days=0))
    backup_id = manager.create_backup(generated["make_state"](999_999))
    assert manager.load_backup(backup_id)["portfolio"]["index"] == 999_999
    assert RecoveryManager(manager).restore_latest_backup()["history"]["index"] == 999_999
