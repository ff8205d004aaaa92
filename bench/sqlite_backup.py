"""Live SQLite database, end to end: ``python -m bench.sqlite_backup [--size-mb 200]``.

Backs up a trades database of about N MB (default 200, WAL mode, built by
``bench.sqlite_live``) through ``BackupManager.create_backup`` into a real repository, two
ways in the same run:

- **capture**: as this version does it (SQLite's online backup API, page-aligned chunks);
- **plain**: ``sqlite_detect = false``, the database and its ``-wal`` read as plain files
  (what the previous version did, and what restic and borg do).

Three phases, each for both ways:

1. **Between backups, 1,000 rows changed** (700 new trades, 300 closed), no writer running:
   backup time and the new bytes each backup adds to the repository (``added_bytes``).
2. **A writer process committing** at a bot's pace (50 transactions/s, each 5 trade updates,
   5 journal rows and a counter) during N backups: backup time, the writer's worst commit
   latency during each backup, and every backup restored with ``restore_to_directory`` and
   checked (``integrity_check``, whole transactions, nothing committed before the backup
   started missing): corrupt or torn restores out of N.
3. **Peak memory** of one backup of the database in a fresh process: ``ru_maxrss`` minus the
   RSS just before the backup (after the repository is open).

Nothing is asserted; the figures are printed (``--json`` also as JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.sqlite_live import MB, SEED, Writer, build_database, change_recent, check_copy
from src.infra.backup import BackupConfig, BackupManager, RecoveryManager

WAYS = ("capture", "plain")


def manager_for(work: Path, way: str, repository: str = "") -> BackupManager:
    return BackupManager(
        BackupConfig(
            backup_path=str(work / f"repo-{repository or way}"),
            sources=["bot/"],
            base_dir=str(work),
            retention_days=0,
            auto_prune=False,
            sqlite_detect=way == "capture",
        )
    )


@dataclass
class WayFigures:
    """What one way of backing up measured."""

    way: str
    first_s: float = 0.0
    first_added_mb: float = 0.0
    changed_s: list[float] = field(default_factory=list)
    changed_added_kb: list[float] = field(default_factory=list)
    live_s: list[float] = field(default_factory=list)
    live_added_kb: list[float] = field(default_factory=list)
    live_worst_ms: list[float] = field(default_factory=list)
    live_results: list[str] = field(default_factory=list)
    peak_mib: float = 0.0


def backup(manager: BackupManager) -> tuple[float, int]:
    started = time.perf_counter()
    backup_id = manager.create_backup(None, include_files=True)
    seconds = time.perf_counter() - started
    return seconds, manager.get_backup_info(backup_id).added_bytes


def measure_changes(work: Path, figures: dict[str, WayFigures], rounds: int) -> None:
    db = work / "bot" / "trades.db"
    managers = {way: manager_for(work, way) for way in WAYS}
    for way in WAYS:
        seconds, added = backup(managers[way])
        figures[way].first_s, figures[way].first_added_mb = seconds, added / MB
    rng = random.Random(SEED + 1)
    for _ in range(rounds):
        change_recent(db, rng)
        for way in WAYS:
            seconds, added = backup(managers[way])
            figures[way].changed_s.append(seconds)
            figures[way].changed_added_kb.append(added / 1000)


def measure_live(work: Path, figures: dict[str, WayFigures], rounds: int) -> None:
    db = work / "bot" / "trades.db"
    managers = {way: manager_for(work, way) for way in WAYS}
    writer = Writer(db, work / "writer.state", pause=0.02)
    try:
        for i in range(rounds):
            for way in WAYS:
                manager = managers[way]
                recovery = RecoveryManager(manager)
                before = writer.last()
                writer.new_epoch()
                seconds, added = backup(manager)
                worst = writer.worst_ms()
                target = work / f"restore-{way}-{i}"
                backup_id = manager.list_backups()[0].backup_id
                recovery.restore_to_directory(backup_id, target)
                result = check_copy(target / "bot" / "trades.db", before)
                shutil.rmtree(target)
                data = figures[way]
                data.live_s.append(seconds)
                data.live_added_kb.append(added / 1000)
                data.live_worst_ms.append(worst)
                data.live_results.append(result)
    finally:
        writer.stop()


def memory_child(work: Path, way: str) -> None:
    """Run in a fresh process: one backup into a new repository; print the peak RSS above
    the RSS right before it (MiB)."""
    manager = manager_for(work, way, repository=f"memory-{way}")
    manager.create_backup({"warm": 1})  # imports, repository opened
    baseline_kib = _vm_rss_kib()
    manager.create_backup(None, include_files=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (peak_kib - baseline_kib) / 1024}))


def _vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_memory(work: Path, figures: dict[str, WayFigures]) -> None:
    for way in WAYS:
        out = subprocess.run(
            [sys.executable, "-m", "bench.sqlite_backup", "--memory-child", str(work), way],
            capture_output=True,
            text=True,
            check=True,
        )
        figures[way].peak_mib = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
        shutil.rmtree(work / f"repo-memory-{way}", ignore_errors=True)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_figures(size_mb: float, figures: dict[str, WayFigures]) -> None:
    print(f"\nLive SQLite database of {size_mb:.0f} MB, backed up through create_backup")
    print("(KB = 1000 bytes; 'capture' = SQLite backup API, 'plain' = plain file read)")
    header = (
        f"{'way':<8} {'first s':>8} {'first MB':>9} {'1k rows: s':>11} {'new KB':>8} "
        f"{'live: s':>8} {'new KB':>8} {'worst commit ms':>16} {'bad restores':>13} "
        f"{'peak MiB':>9}"
    )
    print(header)
    for way in WAYS:
        data = figures[way]
        bad = sum(1 for r in data.live_results if r != "ok")
        print(
            f"{way:<8} {data.first_s:8.2f} {data.first_added_mb:9.1f} "
            f"{_median(data.changed_s):11.2f} {_median(data.changed_added_kb):8.0f} "
            f"{_median(data.live_s):8.2f} {_median(data.live_added_kb):8.0f} "
            f"{max(data.live_worst_ms, default=0):16.1f} "
            f"{bad:>6}/{len(data.live_results):<6} {data.peak_mib:9.1f}"
        )
    print("(seconds and new KB are medians; worst commit is the maximum over the live backups)")
    for way in WAYS:
        problems = [r for r in figures[way].live_results if r != "ok"]
        if problems:
            print(f"  {way}: {'; '.join(sorted(set(problems))[:3])}")


def run(size_mb: int, rounds: int, work: Path) -> dict[str, WayFigures]:
    (work / "bot").mkdir(parents=True)
    print(f"building a {size_mb} MB trades database ...", flush=True)
    build_database(work / "bot" / "trades.db", size_mb * MB, random.Random(SEED))
    figures = {way: WayFigures(way) for way in WAYS}
    measure_changes(work, figures, rounds)
    measure_live(work, figures, rounds)
    measure_memory(work, figures)
    print_figures(size_mb, figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="database size (default 200)")
    parser.add_argument("--rounds", type=int, default=6, help="backups per phase (default 6)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--memory-child", nargs=2, metavar=("WORK", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(Path(args.memory_child[0]), args.memory_child[1])
        return 0
    work = Path(tempfile.mkdtemp(prefix="peak-sqlite-backup-"))
    try:
        figures = run(args.size_mb, args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        payload: dict[str, Any] = {way: asdict(data) for way, data in figures.items()}
        print(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
