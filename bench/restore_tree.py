"""Restore benchmark for file sources: ``python -m bench.restore_tree --size-mb N``.

Generates a mixed tree of about N MB (default 1024) under ``/tmp``: JSON documents, JSONL
trade logs, Parquet-like random binary files and many small files, with varied modes and
mtimes. It backs the tree up as file sources (timed: backup throughput), restores it into a
new directory with ``RecoveryManager.restore_to_directory`` (timed: restore throughput),
copies the same tree with ``cp -a`` in the same run as the yardstick (also timed with a
``sync`` after it, because the restore makes every file durable and ``cp -a`` does not), and
checks the restored tree is byte-identical (content, mode, mtime of every file). The
restore's peak RSS is measured from just before it (``VmHWM`` reset through
``/proc/self/clear_refs``; elsewhere the process's peak so far).

Nothing is deleted between the timed runs: on ext4 without a journal, creating files in the
minutes after many were deleted costs several times more CPU (the inode allocator skips
recently freed inodes), which made ``cp -a`` vary from 150 to 1,400 MB/s on the same tree.
``--rounds N`` restores and copies N times each, alternating which goes first, and prints the
medians.

Exit status 1 if the restored tree differs. The working directory is removed afterwards
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MB = 1_000_000
MODES = (0o644, 0o600, 0o640, 0o444, 0o755)
BASE_MTIME_NS = 1_700_000_000_000_000_000


@dataclass
class Figures:
    """What one run measured (seconds and MB/s, MB = 10^6 bytes)."""

    size_mb: float
    files: int
    backup_s: float
    restore_s: float
    cp_s: float
    cp_sync_s: float
    identical: bool
    rss_before_mb: float = 0.0
    restore_peak_rss_mb: float = 0.0
    rounds: int = 1

    @property
    def rates(self) -> dict[str, float]:
        """Throughputs in MB/s."""
        return {
            "backup_mb_s": self.size_mb / self.backup_s,
            "restore_mb_s": self.size_mb / self.restore_s,
            "cp_a_mb_s": self.size_mb / self.cp_s,
            "cp_a_sync_mb_s": self.size_mb / self.cp_sync_s,
        }

    @property
    def ratios(self) -> dict[str, float]:
        """Restore throughput over that of ``cp -a`` and of ``cp -a`` + ``sync``."""
        return {
            "restore_vs_cp_a": self.cp_s / self.restore_s,
            "restore_vs_cp_a_sync": self.cp_sync_s / self.restore_s,
        }


def _status_mb(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` figure of this process in MB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return 0.0


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux 4.0 and later); whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _peak_rss_mb(reset: bool) -> float:
    if reset:
        return _status_mb("VmHWM")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def _finish(path: Path, rng: random.Random, index: int) -> None:
    os.chmod(path, MODES[index % len(MODES)])
    # Within 11.6 days after BASE_MTIME_NS: in the past. A file dated in the future makes the
    # backup wait for the clock to leave its mtime's tick (archiver.after_timestamp_tick).
    mtime = BASE_MTIME_NS + rng.randrange(10**15) + index
    os.utime(path, ns=(mtime, mtime))


def generate_tree(root: Path, size_bytes: int, seed: int = 20251217) -> int:
    """Write a mixed tree of about ``size_bytes`` below ``root``; returns the file count.

    By bytes: 40 % Parquet-like random binary (8-32 MB files), 35 % JSONL trade logs,
    15 % JSON documents, 10 % small files (0.5-16 KB, in many directories).
    """
    rng = random.Random(seed)
    count = 0

    def budget(share: float) -> int:
        return int(size_bytes * share)

    left = budget(0.40)
    while left > 0:
        size = min(left, rng.randint(8 * MB, 32 * MB))
        path = root / "live_runs" / "parquet" / f"part-{count:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = b"PAR1" + rng.randbytes(60)
        path.write_bytes(header + os.urandom(max(0, size - 68)) + b"PAR1")
        _finish(path, rng, count)
        left -= size
        count += 1
    left = budget(0.35)
    day = 0
    while left > 0:
        target = min(left, rng.randint(4 * MB, 16 * MB))
        path = root / "live_runs" / f"day_{day:03d}" / "trades.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        written = 0
        i = 0
        while written < target:
            line = (
                f'{{"id": {i}, "ts": "2025-12-17T10:{i // 60 % 60:02d}:{i % 60:02d}'
                f'.{i % 1000:03d}Z",'
                f' "symbol": "{rng.choice(("BTC-EUR", "ETH-EUR", "SOL-EUR"))}",'
                f' "side": "{rng.choice(("buy", "sell"))}", "qty": {rng.random() * 3:.8f},'
                f' "price": {rng.uniform(100, 90000):.2f}}}\n'
            )
            lines.append(line)
            written += len(line)
            i += 1
        data = "".join(lines).encode()
        path.write_bytes(data)
        _finish(path, rng, count)
        left -= len(data)
        count += 1
        day += 1
    left = budget(0.15)
    doc = 0
    while left > 0:
        entries = rng.randint(500, 8000)
        value = {
            "run": doc,
            "equity": [round(10000 + rng.gauss(0, 50) * k, 4) for k in range(entries)],
            "params": {"fast": rng.randint(3, 20), "slow": rng.randint(20, 200)},
        }
        data = json.dumps(value, indent=2).encode()
        path = root / "reports" / f"week_{doc % 52:02d}" / f"run_{doc:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        _finish(path, rng, count)
        left -= len(data)
        count += 1
        doc += 1
    left = budget(0.10)
    small = 0
    while left > 0:
        size = min(left, rng.randint(512, 16 * 1024))
        path = root / "state" / f"d{small % 97:02d}" / f"s{small:06d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = json.dumps({"k": small, "pad": "x" * max(0, size - 24)}).encode()[:size]
        path.write_bytes(blob)
        _finish(path, rng, count)
        left -= size
        count += 1
        small += 1
    return count


def fingerprint(root: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (mode, mtime_ns, size) of every file below ``root``."""
    found = {}
    for path in root.rglob("*"):
        st = path.lstat()
        if path.is_file():
            found[path.relative_to(root).as_posix()] = (st.st_mode, st.st_mtime_ns, st.st_size)
    return found


def identical_trees(a: Path, b: Path) -> bool:
    """Whether both trees hold the same files with the same content, mode and mtime."""
    left, right = fingerprint(a), fingerprint(b)
    if left != right:
        return False
    for name in left:
        with open(a / name, "rb") as fa, open(b / name, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    break
    return True


def run(size_mb: int, work: Path, rounds: int = 1) -> Figures:
    """Generate and back up one tree below ``work``; restore it and copy it ``rounds``
    times each (medians), then compare every restored tree with the original."""
    from src.infra.backup import BackupConfig, BackupManager, RecoveryManager

    tree = work / "tree"
    print(f"generating a {size_mb} MB mixed tree in {tree} ...", flush=True)
    files = generate_tree(tree, size_mb * MB)
    total = sum(size for _, _, size in fingerprint(tree).values())
    os.sync()
    config = BackupConfig(
        backup_path=str(work / "repo"), sources=["tree/"], base_dir=str(work), retention_days=0
    )
    manager = BackupManager(config)
    started = time.perf_counter()
    backup_id = manager.create_backup(None, "manual", include_files=True)
    backup_s = time.perf_counter() - started
    os.sync()
    restores: list[float] = []
    copies: list[tuple[float, float]] = []
    peak_rss = rss_before = 0.0
    for index in range(rounds):  # alternate which goes first: conditions drift
        for step in ("restore", "copy") if index % 2 == 0 else ("copy", "restore"):
            if step == "restore":
                rss_before = _status_mb("VmRSS")
                reset = _reset_peak_rss()
                started = time.perf_counter()
                RecoveryManager(manager).restore_to_directory(backup_id, work / f"restored{index}")
                restores.append(time.perf_counter() - started)
                peak_rss = max(peak_rss, _peak_rss_mb(reset))
            else:
                started = time.perf_counter()
                subprocess.run(["cp", "-a", str(tree), str(work / f"cp_copy{index}")], check=True)
                copied = time.perf_counter() - started
                os.sync()
                copies.append((copied, time.perf_counter() - started))
            os.sync()
    identical = all(identical_trees(tree, work / f"restored{i}" / "tree") for i in range(rounds))
    return Figures(
        total / MB,
        files,
        backup_s,
        statistics.median(restores),
        statistics.median(c for c, _ in copies),
        statistics.median(s for _, s in copies),
        identical,
        rss_before,
        peak_rss,
        rounds,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run once, print the figures; 1 if the restore was not identical."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="tree size (default 1024)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="restores and copies each, in alternating order; medians (default 1)",
    )
    args = parser.parse_args(argv)
    if args.size_mb < 1:
        parser.error("--size-mb must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="peak-restore-bench-", dir="/tmp"))
    try:
        figures = run(args.size_mb, work, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rates, ratios = figures.rates, figures.ratios
    if args.json:
        print(json.dumps({**asdict(figures), **rates, **ratios}, indent=2))
    else:
        print(f"tree        {figures.size_mb:.1f} MB in {figures.files} files")
        if figures.rounds > 1:
            print(f"rounds      {figures.rounds} (medians below)")
        print(f"backup      {figures.backup_s:8.2f} s  {rates['backup_mb_s']:8.1f} MB/s")
        print(
            f"restore     {figures.restore_s:8.2f} s  {rates['restore_mb_s']:8.1f} MB/s"
            "  (every file durable)"
        )
        print(f"cp -a       {figures.cp_s:8.2f} s  {rates['cp_a_mb_s']:8.1f} MB/s")
        print(f"cp -a+sync  {figures.cp_sync_s:8.2f} s  {rates['cp_a_sync_mb_s']:8.1f} MB/s")
        print(
            f"ratio       {ratios['restore_vs_cp_a']:8.2f} x cp -a"
            f"  {ratios['restore_vs_cp_a_sync']:8.2f} x cp -a+sync"
        )
        print(
            f"peak RSS    {figures.restore_peak_rss_mb:8.1f} MB during the restore"
            f"  ({figures.rss_before_mb:.1f} MB before it)"
        )
        print(f"identical   {'yes' if figures.identical else 'NO: restored tree differs'}")
    return 0 if figures.identical else 1


if __name__ == "__main__":
    sys.exit(main())
