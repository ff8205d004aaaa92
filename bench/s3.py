"""The trading day on S3: requests and latency per pre-trade backup, restore throughput.

Starts SeaweedFS (``tools/s3_server.py``, 127.0.0.1) and runs the trading-day workload
(``bench/workload.py``) with the repository in a bucket:

* every store call is counted and mapped to the S3 requests it makes (PUT, GET, HEAD, LIST
  pages of 1,000, COPY, DELETE), per pre-trade backup;
* latency p50/p99 of a pre-trade backup, against the same backup on a local directory in the
  same run (the baseline);
* restore of the latest backup from S3 by a fresh process-like manager (MB/s of state), and
  ``sync --from`` of the whole repository to a local directory (MB/s of stored bytes).

Prints a table and writes ``bench/results/s3_latest.json``. Loopback S3 has no network
latency: on a real link, multiply the request counts by the round-trip time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.workload import TradingDay
from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.repository.replication import open_replica, sync
from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.s3_location import S3Options
from tools.s3_server import SeaweedS3

DEFAULT_OUT = Path(__file__).parent / "results"
LIST_PAGE = 1000


class CountingStore(Store):
    """Delegates to ``inner`` and counts the S3 requests each call makes."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.cheap_exists = inner.cheap_exists
        self.requests: Counter[str] = Counter()
        self.bytes_up = 0

    def get_many(self, keys: Iterable[str]) -> Iterator[bytes | None]:
        for blob in self.inner.get_many(keys):
            self.requests["GET"] += 1
            yield blob

    @property
    def location(self) -> str:
        return self.inner.location

    def get(self, key: str) -> bytes:
        self.requests["GET"] += 1
        return self.inner.get(key)

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        self.requests["PUT"] += 1
        self.bytes_up += len(data)
        self.inner.put(key, data, exclusive=exclusive, durable=durable)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        batch = list(items)
        self.requests["PUT"] += len(batch)
        self.bytes_up += sum(len(data) for _, data in batch)
        self.inner.put_many(batch)

    def exists(self, key: str) -> bool:
        self.requests["HEAD"] += 1
        return self.inner.exists(key)

    def stat(self, key: str) -> ObjectInfo:
        self.requests["HEAD"] += 1
        return self.inner.stat(key)

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        found = list(self.inner.list_info(prefix))
        self.requests["LIST"] += max(1, -(-len(found) // LIST_PAGE))
        return iter(found)

    def move(self, source: str, destination: str) -> None:
        self.requests["COPY"] += 1
        self.requests["DELETE"] += 1
        self.inner.move(source, destination)

    def delete(self, key: str, *, durable: bool = True) -> None:
        self.requests["DELETE"] += 1
        self.inner.delete(key, durable=durable)

    def list_temporary(self) -> Iterator[ObjectInfo]:
        return self.inner.list_temporary()

    def delete_temporary(self, key: str) -> None:
        self.inner.delete_temporary(key)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_day(manager: BackupManager, day: TradingDay, backups: int) -> list[float]:
    latencies = []
    for _ in range(backups):
        day.step()
        state = day.state()
        started = time.perf_counter()
        manager.create_backup(state, backup_type="pre_trade")
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__)
    parser.add_argument("--trades", type=int, default=100_000)
    parser.add_argument("--backups", type=int, default=100)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="peak-bench-s3-"))
    server = SeaweedS3(work / "seaweedfs").start()
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        ).create_bucket(Bucket="bench")
        time.sleep(0.5)
        options = S3Options(
            endpoint_url=server.endpoint_url,
            region=server.region,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        )
        report = measure(work, options, args.trades, args.backups)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "s3_latest.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def measure(work: Path, options: S3Options, trades: int, backups: int) -> dict[str, Any]:
    url = "s3://bench/day"
    config = BackupConfig(backup_path=url, retention_days=0, s3=options)
    manager = BackupManager(config)
    counting = CountingStore(config.open_store())
    manager.open_repository(create=True)
    assert manager._repository is not None
    manager._repository.store = counting  # count what the backups ask of S3
    day = TradingDay(trades)
    day.step()
    manager.create_backup(day.state(), backup_type="pre_trade")  # the first, full upload
    first_requests = dict(counting.requests)
    first_bytes = counting.bytes_up
    counting.requests.clear()
    counting.bytes_up = 0
    s3_latencies = run_day(manager, day, backups)
    per_backup = {k: v / backups for k, v in sorted(counting.requests.items())}
    bytes_per_backup = counting.bytes_up / backups

    local = BackupManager(BackupConfig(backup_path=work / "local", retention_days=0))
    baseline_day = TradingDay(trades)
    baseline_day.step()
    local.create_backup(baseline_day.state(), backup_type="pre_trade")
    local_latencies = run_day(local, baseline_day, backups)

    state_bytes = sum(
        e.size
        for e in manager.repository.read_manifest(manager.list_backups()[0].backup_id).entries
    )
    restores = []
    for _ in range(3):
        fresh = RecoveryManager(BackupManager(config))
        started = time.perf_counter()
        restored = fresh.restore_latest_backup()
        restores.append(time.perf_counter() - started)
    assert restored == day.state(), "restored state differs"
    restore_s = statistics.median(restores)

    source = BackupManager(config).repository
    target = work / "from-s3"
    started = time.perf_counter()
    copy = sync(source, open_replica(source, LocalStore(target), create=True))
    sync_s = time.perf_counter() - started
    return {
        "started_utc": datetime.now(UTC).isoformat(),
        "trades": trades,
        "backups": backups,
        "first_backup": {"requests": first_requests, "bytes_up": first_bytes},
        "per_backup_requests": per_backup,
        "per_backup_bytes_up": bytes_per_backup,
        "latency_ms": {
            "s3_p50": percentile(s3_latencies, 50),
            "s3_p99": percentile(s3_latencies, 99),
            "local_p50": percentile(local_latencies, 50),
            "local_p99": percentile(local_latencies, 99),
        },
        "restore_latest": {"seconds": restore_s, "state_bytes": state_bytes},
        "sync_from_s3": {
            "seconds": sync_s,
            "backups": len(copy.copied),
            "blobs": copy.blobs_copied,
            "bytes": copy.bytes_copied,
        },
    }


def print_report(report: dict[str, Any]) -> None:
    lat = report["latency_ms"]
    print(
        f"\nS3 (SeaweedFS on loopback): {report['trades']:,} trades, {report['backups']} "
        "pre-trade backups"
    )
    requests = ", ".join(f"{k} {v:.1f}" for k, v in report["per_backup_requests"].items())
    print(f"  requests per pre-trade backup: {requests}")
    print(f"  uploaded per pre-trade backup: {report['per_backup_bytes_up'] / 1024:.1f} KiB")
    first = report["first_backup"]
    print(f"  first backup: {dict(first['requests'])}, {first['bytes_up'] / 1e6:.1f} MB")
    print(
        f"  backup p50 / p99: S3 {lat['s3_p50']:.1f} / {lat['s3_p99']:.1f} ms, local "
        f"{lat['local_p50']:.1f} / {lat['local_p99']:.1f} ms "
        f"(S3 / local p50 = {lat['s3_p50'] / lat['local_p50']:.2f}x)"
    )
    restore = report["restore_latest"]
    mb = restore["state_bytes"] / 1e6
    print(
        f"  restore latest from S3 (fresh manager): {restore['seconds'] * 1000:.0f} ms for "
        f"{mb:.1f} MB of state = {mb / restore['seconds']:.0f} MB/s"
    )
    copy = report["sync_from_s3"]
    print(
        f"  sync --from S3 of the whole repository: {copy['backups']} backups, {copy['blobs']} "
        f"blobs, {copy['bytes'] / 1e6:.1f} MB in {copy['seconds']:.1f} s = "
        f"{copy['bytes'] / 1e6 / copy['seconds']:.1f} MB/s"
    )


if __name__ == "__main__":
    sys.exit(main())
