"""Backups off the trading path: ``python -m bench.background [--trades N]`` (in ``make bench``).

On the trading-day state (``bench.workload``, 1,000,000 trades by default), in one run:

- the floor: encoding the state once (the value codec);
- ``create_backup`` (synchronous: the call returns when the backup is durable);
- ``start_backup``: how long the call blocks (it forks; the child holds the state), how long
  until the backup is durable (``.result()``), and the longest pause of an asyncio event loop
  in the calling thread while the backup is stored in the background;
- the fork alone, against the process's resident memory (what the call's cost grows with).

Each backup follows one step of the workload (5 more trades). Figures are medians (and p99 of
the blocked time) over ``--backups`` backups, printed with their ratios to the synchronous
backup. Nothing here asserts a time; the tests assert the mechanism.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.workload import TradingDay
from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.format.values import encode_value


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def _loop_pauses(manager: BackupManager, day: TradingDay) -> tuple[float, float, float]:
    """(blocked, until durable, longest loop pause) of one background backup, seconds."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    handle = await manager.astart_backup(day.state(), "pre_trade")
    blocked = time.perf_counter() - started
    await asyncio.wrap_future(handle)
    durable = time.perf_counter() - started
    stop.set()
    await task
    return blocked, durable, max(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--backups", type=int, default=10)
    args = parser.parse_args()
    print(f"building the state ({args.trades:,} trades) ...", flush=True)
    day = TradingDay(args.trades)
    state = day.state()
    started = time.perf_counter()
    encoded = sum(len(encode_value(value)) for value in state.values())
    encode_floor = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    forks = []
    for _ in range(5):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forks.append(time.perf_counter() - started)
        os.waitpid(pid, 0)
    with tempfile.TemporaryDirectory(prefix="peak-bench-bg-") as work:
        manager = BackupManager(
            BackupConfig(backup_path=str(Path(work) / "repo"), retention_days=0, auto_prune=False)
        )
        manager.create_backup(day.state(), "pre_trade")  # the first backup stores everything
        sync = []
        for _ in range(args.backups):
            day.step()
            started = time.perf_counter()
            manager.create_backup(day.state(), "pre_trade")
            sync.append(time.perf_counter() - started)
        blocked, durable, pauses = [], [], []
        for _ in range(args.backups):
            day.step()
            b, d, p = asyncio.run(_loop_pauses(manager, day))
            blocked.append(b)
            durable.append(d)
            pauses.append(p)
    sync_p50 = statistics.median(sync)
    print(f"state: {args.trades:,} trades, {encoded / 1e6:.0f} MB encoded, RSS {rss_mb:.0f} MB")
    print(f"{'':44}{'ms':>9}{'x sync':>9}")
    rows = [
        ("encode the state once (floor)", encode_floor),
        ("fork alone (median of 5)", statistics.median(forks)),
        ("create_backup p50 (synchronous)", sync_p50),
        ("start_backup: call blocks, p50", statistics.median(blocked)),
        ("start_backup: call blocks, p99", _p99(blocked)),
        ("start_backup: durable after, p50", statistics.median(durable)),
        ("event loop's longest pause, p50", statistics.median(pauses)),
        ("event loop's longest pause, max", max(pauses)),
    ]
    for label, seconds in rows:
        print(f"{label:<44}{seconds * 1000:>9.1f}{seconds / sync_p50:>9.2f}")
    print(
        "targets (issue 15): blocks <= 5 ms p99 and <= 0.05 x sync; durable <= 1.5 x sync; "
        "loop pause <= 10 ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
