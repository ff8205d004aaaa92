"""Listing 10,000 backups on S3: requests and time of ``list_backups()``.

Starts SeaweedFS (127.0.0.1), writes a repository with ``--backups`` pre-trade backups (200 a
day) and a daily one per day (the manifests are copies of one real backup's, written in
parallel: the listing does not read chunks), then measures in the same run:

* a complete listing (every manifest's key: one LIST per 1,000), the baseline;
* ``list_backups()`` of a fresh process past the basis (the snapshots token, the snapshot
  index, the newest keys of each type);
* the same in a warm process (the token and the newest keys);
* a fresh process after the bot made one more backup (its manifest is read too).

Requests come from the store's own counters; each time is the median of ``--rounds`` calls.
The opening of the repository (``repo.json``, one GET) is counted apart.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from bench.s3 import seaweed_bucket
from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.format.ids import new_backup_id
from src.infra.backup.format.layout import snapshot_key
from src.infra.backup.format.manifest import Manifest, encode_checked
from src.infra.backup.storage.requests import measure
from src.infra.backup.storage.s3_location import S3Options

PER_DAY = 200


def _manifests(template: Manifest, count: int, end: datetime) -> Iterator[Manifest]:
    """``count`` pre-trade backups, PER_DAY a day up to ``end``, and a daily one a day."""
    step = timedelta(days=1) / PER_DAY
    for n in range(count):
        when = end - step * (count - n)
        for backup_type in ("pre_trade", "daily") if n % PER_DAY == 0 else ("pre_trade",):
            at = when + timedelta(seconds=1) if backup_type == "daily" else when
            backup_id = new_backup_id(backup_type, f"{at.astimezone():%Y%m%d_%H%M%S}")
            yield msgspec.structs.replace(
                template, backup_id=backup_id, backup_type=backup_type, time_utc=at
            )


def _timed(managers: Callable[[], BackupManager], rounds: int) -> tuple[float, dict[str, int], int]:
    """Median seconds of ``list_backups()`` on a manager from ``managers()`` (made outside
    what is measured), the requests of the last round, and how many backups it listed."""
    times = []
    for _ in range(rounds):
        manager = managers()
        with measure() as seen:
            started = time.perf_counter()
            listed = len(manager.list_backups())
            times.append(time.perf_counter() - started)
    return statistics.median(times), seen.snapshot(), listed


def run(
    options: S3Options, backups: int, rounds: int
) -> list[tuple[str, float, dict[str, int], int]]:
    config = BackupConfig(backup_path="s3://bench/listing", retention_days=0, s3=options)
    bot = BackupManager(config)
    first = bot.create_backup({"positions": [1, 2, 3]}, "pre_trade")
    template = bot.repository.read_manifest(first)
    end = datetime.now(timezone.utc) - timedelta(minutes=1)
    bot.repository.store.put_many(
        (snapshot_key(m.backup_id), encode_checked(m)) for m in _manifests(template, backups, end)
    )

    def fresh() -> BackupManager:
        manager = BackupManager(config)
        manager.repository  # noqa: B018 - repo.json is read outside what is measured
        return manager

    def complete() -> BackupManager:
        manager = fresh()
        manager.repository.catalog.tails = False  # as format 1 and versions before 0.3 list
        return manager

    rows = [("complete listing (baseline)", *_timed(complete, rounds))]
    fresh().list_backups()  # makes the basis (a complete listing) and writes the index
    rows.append(("fresh process, past the basis", *_timed(fresh, rounds)))
    warm = fresh()
    warm.list_backups()
    rows.append(("warm process", *_timed(lambda: warm, rounds)))
    bot.create_backup({"positions": [1, 2, 3, 4]}, "pre_trade")
    rows.append(("fresh process after one more backup", *_timed(fresh, 1)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_listing", description=__doc__)
    parser.add_argument("--backups", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="peak-bench-s3-listing-"))
    try:
        with seaweed_bucket(work) as options:
            rows = run(options, args.backups, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nlist_backups() on S3 (SeaweedFS on loopback), {args.backups:,} pre-trade backups")
    baseline = rows[0][1]
    for name, seconds, requests, listed in rows:
        total = sum(requests.values())
        ratio = f", {baseline / seconds:.1f}x faster" if seconds != baseline else ""
        print(
            f"  {name:38} {total:3d} requests {requests}, {seconds * 1000:6.1f} ms"
            f"{ratio}; {listed:,} backups"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
