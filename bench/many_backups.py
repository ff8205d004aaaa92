"""Listing and retention with many backups in one repository (issue 5 / issue 7 targets).

Builds a repository of ``--count`` backups (default 10,000: a pre-trade backup every 37
minutes over about 8.5 months, each with a small value so building takes seconds), and the
seed-style naive layout with the same number of backups, then measures:

* ``list_backups()`` from a fresh process: without the snapshot index (every manifest read),
  with it (the normal case), and warm (the same manager again);
* the retention plan (the seed's production policy as rules, and ``retention_days``);
* ``create_backup`` of a small state with retention on against retention off: the cost retention
  adds to every backup.

Fresh-process figures are measured in child processes, so nothing is cached in memory; the
page cache is warm (as it is on a running bot). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.naive import NaiveBackupManager, _fsync_dir, _write_durable

DEFAULT_OUT = Path(__file__).parent / "results"
START = datetime(2025, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=37)
BASELINE_COUNT = 200  # create_backup at --count is compared with create_backup at this many
PRODUCTION_POLICY: dict[str, Any] = {
    "timezone": "Europe/Berlin",
    "keep_daily": 90,
    "keep_weekly": 26,
    "keep_monthly": 12,
    "pre_trade": {"keep_within": "7d", "keep_daily": 30, "timezone": "Europe/Berlin"},
}


def build_ours(path: Path, count: int) -> float:
    """``count`` pre-trade backups with their real ids and times; returns seconds taken."""
    from src.infra.backup import BackupConfig, BackupManager
    from src.infra.backup.format.values import ENCODING_NAME, encode_value
    from src.infra.backup.repository.snapshot_writer import DataInput

    repo = BackupManager(BackupConfig(backup_path=str(path))).open_repository(create=True)
    started = time.perf_counter()
    for n in range(count):
        moment = START + n * STEP
        repo.create_snapshot_as(
            f"pre_trade_{moment.astimezone():%Y%m%d_%H%M%S}",
            moment,
            "pre_trade",
            [DataInput("portfolio", encode_value({"cash": 10_000 + n}), ENCODING_NAME)],
        )
    return time.perf_counter() - started


def build_naive(path: Path, count: int) -> None:
    """The same number of backups in the naive layout (one folder + metadata.json each)."""
    NaiveBackupManager(path)
    for n in range(count):
        moment = (START + n * STEP).astimezone().replace(tzinfo=None)
        backup_id = f"pre_trade_{moment:%Y%m%d_%H%M%S}"
        folder = path / backup_id
        folder.mkdir()
        meta = {
            "backup_id": backup_id,
            "backup_type": "pre_trade",
            "timestamp": moment.isoformat(),
            "size_bytes": 40,
            "compressed": True,
            "files": ["portfolio.json.gz"],
        }
        _write_durable(folder / "metadata.json", json.dumps(meta, indent=2).encode())
    _fsync_dir(path)


# Runs in a child process: one fresh manager, one measurement, JSON on stdout.
_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
what, path = sys.argv[2], sys.argv[3]
if what == "naive":
    from bench.naive import NaiveBackupManager
    manager = NaiveBackupManager(path)
    t0 = time.perf_counter(); n = len(manager.list_backups()); t1 = time.perf_counter()
    print(json.dumps({"cold_ms": (t1 - t0) * 1000, "count": n}))
    sys.exit()
from src.infra.backup import BackupConfig, BackupManager
manager = BackupManager(BackupConfig(backup_path=path, retention_days=0))
t0 = time.perf_counter(); n = len(manager.list_backups()); t1 = time.perf_counter()
warm = []
for _ in range(7):
    a = time.perf_counter(); manager.list_backups(); warm.append(time.perf_counter() - a)
warm.sort()
print(json.dumps({"cold_ms": (t1 - t0) * 1000, "warm_ms": warm[3] * 1000, "count": n}))
"""


def fresh_list(what: str, path: Path) -> dict[str, Any]:
    """List in a fresh child process (``what``: ``ours`` or ``naive``)."""
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, root, what, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def median_ms(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000


def measure_retention(path: Path) -> dict[str, float]:
    """Plan time (both forms) and the cost retention adds to a small create_backup."""
    from src.infra.backup import BackupConfig, BackupManager

    policy = BackupManager(BackupConfig(backup_path=str(path), retention=PRODUCTION_POLICY))
    days = BackupManager(BackupConfig(backup_path=str(path), retention_days=3650))
    policy.list_backups()
    days.list_backups()
    result = {
        "plan_policy_ms": median_ms(policy.plan_retention, 7),
        "plan_days_ms": median_ms(days.plan_retention, 7),
    }
    # The production policy would forget most of the 10,000 on the first run; on a real
    # repository it runs after every backup, so only the newest few are ever forgotten.
    # Time create+retention on a copy where the policy has already been applied once.
    trimmed = path.parent / "trimmed"
    shutil.copytree(path, trimmed)
    trimmer = BackupManager(
        BackupConfig(backup_path=str(trimmed), retention=PRODUCTION_POLICY, auto_prune=False)
    )
    started = time.perf_counter()
    forgotten = len(trimmer.apply_retention(auto_prune=False))
    result["first_apply_s"] = time.perf_counter() - started
    result["first_apply_forgot"] = forgotten
    result["after_first_apply"] = len(trimmer.list_backups())
    shutil.rmtree(trimmed)

    state = {"portfolio": {"cash": 1.0, "positions": {"BTC/USD": 0.1}}}
    counter = iter(range(10**6))

    def create(manager: BackupManager) -> None:
        state["portfolio"]["cash"] = float(next(counter))
        manager.create_backup(state, backup_type="manual")

    off = BackupManager(BackupConfig(backup_path=str(path), retention_days=0))
    on = BackupManager(BackupConfig(backup_path=str(path), retention_days=3650, auto_prune=False))
    for manager in (off, on):
        manager.list_backups()  # warm, as on a running bot
        create(manager)
    result["create_retention_off_ms"] = median_ms(lambda: create(off), 15)
    result["create_retention_on_ms"] = median_ms(lambda: create(on), 15)
    # The baseline: the same backup in a repository of 200 backups, measured in this run.
    small = path.parent / "small"
    build_ours(small, BASELINE_COUNT)
    baseline = BackupManager(
        BackupConfig(backup_path=str(small), retention_days=3650, auto_prune=False)
    )
    baseline.list_backups()
    create(baseline)
    result["create_at_baseline_ms"] = median_ms(lambda: create(baseline), 15)
    shutil.rmtree(small)
    return result


def cli_list_ms(path: Path, *args: str) -> float:
    """Median wall time of ``peak-backup [args] list`` in a new process (start-up included)."""
    root = Path(__file__).resolve().parent.parent
    config = path.parent / "bench-config.toml"
    config.write_text(f'[backup]\nbackup_path = "{path}"\n')
    command = [sys.executable, str(root / "src/infra/backup/__main__.py"), "--config", str(config)]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([*command, *args, "list"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return sorted(times)[1] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.many_backups", description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="backups (default 10000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")
    report: dict[str, Any] = {"count": args.count, "started_utc": datetime.now(UTC).isoformat()}
    with tempfile.TemporaryDirectory(prefix="peak-bench-many-") as tmp:
        ours, naive = Path(tmp) / "ours", Path(tmp) / "naive"
        report["build_s"] = build_ours(ours, args.count)
        build_naive(naive, args.count)
        report["repository_files"] = sum(len(files) for _, _, files in os.walk(ours))
        no_index = fresh_list("ours", ours)  # no index yet: reads every manifest, writes it
        with_index = fresh_list("ours", ours)
        report["list"] = {
            "fresh_no_index_ms": no_index["cold_ms"],
            "fresh_ms": with_index["cold_ms"],
            "warm_ms": with_index["warm_ms"],
            "naive_fresh_ms": fresh_list("naive", naive)["cold_ms"],
        }
        assert no_index["count"] == with_index["count"] == args.count
        report["list"]["cli_ms"] = cli_list_ms(ours)
        report["list"]["cli_json_ms"] = cli_list_ms(ours, "--json")
        report["retention"] = measure_retention(ours)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "many_backups_latest.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def print_report(report: dict[str, Any]) -> None:
    lst, ret = report["list"], report["retention"]
    print(
        f"\nMany backups: {report['count']:,} in one repository (built in "
        f"{report['build_s']:.1f} s, {report['repository_files']:,} files)"
    )
    rows = [
        ("list_backups, fresh process", lst["fresh_ms"]),
        ("  without the snapshot index", lst["fresh_no_index_ms"]),
        ("  naive (read every metadata.json)", lst["naive_fresh_ms"]),
        ("list_backups, warm", lst["warm_ms"]),
        ("CLI list, new process", lst["cli_ms"]),
        ("CLI --json list, new process", lst["cli_json_ms"]),
        ("retention plan, policy (all rules)", ret["plan_policy_ms"]),
        ("retention plan, retention_days", ret["plan_days_ms"]),
        ("create_backup, retention off", ret["create_retention_off_ms"]),
        ("create_backup, retention_days on", ret["create_retention_on_ms"]),
        (f"  the same at {BASELINE_COUNT} backups", ret["create_at_baseline_ms"]),
    ]
    for label, ms in rows:
        print(f"  {label:<40}{ms:>10.1f} ms")
    print(
        f"  naive / ours fresh list: {lst['naive_fresh_ms'] / lst['fresh_ms']:.1f}x; "
        f"retention adds {ret['create_retention_on_ms'] - ret['create_retention_off_ms']:.1f} ms "
        "to a backup"
    )
    print(
        f"  create_backup at {report['count']:,} / at {BASELINE_COUNT}: "
        f"{ret['create_retention_on_ms'] / ret['create_at_baseline_ms']:.2f}x (target <= 1.2x); "
        f"list_backups fresh {lst['fresh_ms']:.0f} ms (target <= 300), CLI list "
        f"{lst['cli_ms']:.0f} ms (target <= 1000)"
    )
    print(
        f"  first application of the production policy: forgot {ret['first_apply_forgot']:,} "
        f"in {ret['first_apply_s']:.1f} s, {ret['after_first_apply']:,} left"
    )


if __name__ == "__main__":
    sys.exit(main())
