"""The trading day on S3: requests, cost and latency per pre-trade backup, restore throughput.

Starts SeaweedFS (``tools/s3_server.py``, 127.0.0.1) and runs the trading-day workload
(``bench/workload.py``) with the repository in a bucket:

* the requests of every pre-trade backup, per operation, as the store's own counters count
  them (``storage/requests.py``: PUT, GET, HEAD, LIST pages of 1,000, COPY, DELETE), in
  total, and as the last backup's manifest records them (what ``status --json`` shows);
* what one bot backing up 200 times a day would pay a month at S3 Standard's published
  prices (:data:`PRICES`): requests, plus the bucket after the day held for the month;
* the same day on a one-object-per-chunk repository (format 1: every new chunk its own PUT) on
  the same server, in the same run: requests, cost and the ratio;
* latency p50/p99 of a pre-trade backup, against the same backup on a local directory in the
  same run;
* restore of the latest backup from S3 by a fresh process-like manager (MB/s of state), and
  ``sync --from`` of the whole repository to a local directory (MB/s of stored bytes).

Prints a table and writes ``bench/results/s3_latest.json``. Loopback S3 has no network
latency: on a real link, multiply the requests made in sequence by the round-trip time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.workload import TradingDay
from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.repository.replication import open_replica, sync
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.requests import OPS
from src.infra.backup.storage.s3_location import S3Options
from src.infra.backup.storage.testing.delegating import DelegatingStore
from tools.s3_server import SeaweedS3

DEFAULT_OUT = Path(__file__).parent / "results"

#: S3 Standard, published prices (USD; us-east-1): PUT, COPY, POST and LIST requests per
#: 1,000; GET, HEAD and other requests per 1,000; DELETE is free; storage per GB-month
#: (GB = 2**30 bytes, as AWS bills).
PRICES = {"put_class": 0.005, "get_class": 0.0004, "storage_gb_month": 0.023}
PUT_CLASS = ("PUT", "COPY", "LIST")
GET_CLASS = ("GET", "HEAD")
FREE = ("DELETE",)
BACKUPS_PER_DAY = 200
DAYS_PER_MONTH = 30


class BytesCountingStore(DelegatingStore):
    """Delegates to ``inner`` and counts the bytes uploaded (the requests are the inner
    store's own counters: ``request_counter`` is the inner store's)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.bytes_up = 0

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        self.bytes_up += len(data)
        self.inner.put(key, data, exclusive=exclusive, durable=durable)

    def put_versioned(self, key: str, data: bytes, *, exclusive: bool = False) -> str:
        self.bytes_up += len(data)
        return self.inner.put_versioned(key, data, exclusive=exclusive)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        batch = list(items)
        self.bytes_up += sum(len(data) for _, data in batch)
        self.inner.put_many(batch)


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {op: after.get(op, 0) - before.get(op, 0) for op in after if after[op] != before.get(op)}


def by_op(counts: Mapping[str, float]) -> dict[str, float]:
    """``counts`` in the order of OPS, zeros left out."""
    return {op: counts[op] for op in (*OPS, *sorted(set(counts) - set(OPS))) if counts.get(op)}


def monthly_cost(per_backup: dict[str, float], bucket_bytes: int) -> dict[str, float]:
    """USD a month for one bot at BACKUPS_PER_DAY backups a day (see PRICES)."""
    backups = BACKUPS_PER_DAY * DAYS_PER_MONTH
    put_class = sum(per_backup.get(op, 0.0) for op in PUT_CLASS) * backups
    get_class = sum(per_backup.get(op, 0.0) for op in GET_CLASS) * backups
    requests_usd = put_class / 1000 * PRICES["put_class"] + get_class / 1000 * PRICES["get_class"]
    storage_usd = bucket_bytes / 2**30 * PRICES["storage_gb_month"]
    return {
        "backups_per_month": backups,
        "put_class_requests": put_class,
        "get_class_requests": get_class,
        "requests_usd": requests_usd,
        "storage_usd": storage_usd,
        "total_usd": requests_usd + storage_usd,
    }


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


def start_seaweed(work: Path, bucket: str = "bench") -> tuple[SeaweedS3, S3Options]:
    """SeaweedFS on 127.0.0.1 (data in ``work/seaweedfs``) with a new ``bucket``, and the
    options to reach it; the caller stops the server."""
    server = SeaweedS3(work / "seaweedfs").start()
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        ).create_bucket(Bucket=bucket)
    except BaseException:
        server.stop()
        raise
    time.sleep(0.5)  # the first PUT works a moment after CreateBucket
    options = S3Options(
        endpoint_url=server.endpoint_url,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
    )
    return server, options


@contextlib.contextmanager
def seaweed_bucket(work: Path, bucket: str = "bench") -> Iterator[S3Options]:
    """:func:`start_seaweed` for the duration of the block."""
    server, options = start_seaweed(work, bucket)
    try:
        yield options
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__)
    parser.add_argument("--trades", type=int, default=100_000)
    parser.add_argument("--backups", type=int, default=BACKUPS_PER_DAY)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="peak-bench-s3-"))
    try:
        with seaweed_bucket(work) as options:
            report = measure(work, options, args.trades, args.backups)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "s3_latest.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def s3_day(
    config: BackupConfig, repo_format: int, trades: int, backups: int
) -> tuple[dict[str, Any], BackupManager, TradingDay]:
    """One trading day of pre-trade backups into a new repository of ``repo_format`` at
    ``config.backup_path``: what the backups asked of S3 and what the bucket holds after."""
    store = BytesCountingStore(config.open_store())
    manager = BackupManager(config)
    # The repository on the byte-counting store, created in the format asked for.
    manager._repository = Repository.open(
        store, compression=config.compression_setting, repo_format=repo_format
    )
    day = TradingDay(trades)
    day.step()
    before = store.requests()
    manager.create_backup(day.state(), backup_type="pre_trade")  # the first, full upload
    first = {"requests": by_op(diff(store.requests(), before)), "bytes_up": store.bytes_up}
    store.bytes_up = 0
    before = store.requests()
    latencies = run_day(manager, day, backups)
    made = diff(store.requests(), before)
    per_backup = by_op({op: n / backups for op, n in made.items()})
    bytes_per_backup = store.bytes_up / backups
    newest = manager.list_backups("pre_trade")[0].backup_id
    run = manager.repository.read_manifest(newest).run  # what status --json shows
    recorded = by_op(run.requests) if run is not None else {}
    listed = list(store.list_info(""))
    bucket_bytes = sum(info.size for info in listed)
    report = {
        "format": repo_format,
        "first_backup": first,
        "per_backup_requests": per_backup,
        "per_backup_requests_total": sum(per_backup.values()),
        "recorded_last_backup": recorded,
        "per_backup_bytes_up": bytes_per_backup,
        "bucket_bytes_after_day": bucket_bytes,
        "bucket_objects_after_day": len(listed),
        "monthly_usd": monthly_cost(per_backup, bucket_bytes),
        "latency_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
    }
    return report, manager, day


def measure(work: Path, options: S3Options, trades: int, backups: int) -> dict[str, Any]:
    config = BackupConfig(backup_path="s3://bench/day", retention_days=0, s3=options)
    ours, manager, day = s3_day(config, 2, trades, backups)
    baseline_config = BackupConfig(
        backup_path="s3://bench/day-one-object-per-chunk", retention_days=0, s3=options
    )
    baseline, _, _ = s3_day(baseline_config, 1, trades, backups)

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
        "prices_usd": PRICES,
        "cost_model": {
            "backups_per_day": BACKUPS_PER_DAY,
            "days_per_month": DAYS_PER_MONTH,
            "put_class": list(PUT_CLASS),
            "get_class": list(GET_CLASS),
            "free": list(FREE),
        },
        "ours": ours,
        "one_object_per_chunk": baseline,
        "ratio_one_object_per_chunk_to_ours": {
            "requests": baseline["per_backup_requests_total"] / ours["per_backup_requests_total"],
            "monthly_usd": baseline["monthly_usd"]["total_usd"] / ours["monthly_usd"]["total_usd"],
        },
        "latency_ms": {
            "s3_p50": ours["latency_ms"]["p50"],
            "s3_p99": ours["latency_ms"]["p99"],
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


def _requests(counts: dict[str, float], digits: int = 2) -> str:
    return ", ".join(f"{op} {n:.{digits}f}".rstrip("0").rstrip(".") for op, n in counts.items())


def _day_lines(name: str, day: dict[str, Any]) -> None:
    cost = day["monthly_usd"]
    print(f"  {name} (format {day['format']}):")
    print(
        f"    requests per pre-trade backup: {day['per_backup_requests_total']:.2f} "
        f"({_requests(day['per_backup_requests'])})"
    )
    print(f"    recorded in the last backup's manifest: {day['recorded_last_backup']}")
    print(f"    uploaded per pre-trade backup: {day['per_backup_bytes_up'] / 1024:.1f} KiB")
    first = day["first_backup"]
    print(f"    first backup: {first['requests']}, {first['bytes_up'] / 1e6:.1f} MB")
    print(
        f"    bucket after the day: {day['bucket_bytes_after_day'] / 1e6:.2f} MB in "
        f"{day['bucket_objects_after_day']:,} objects"
    )
    print(
        f"    a month: {cost['put_class_requests']:,.0f} PUT/COPY/LIST + "
        f"{cost['get_class_requests']:,.0f} GET/HEAD requests = ${cost['requests_usd']:.4f}, "
        f"storage ${cost['storage_usd']:.5f}: ${cost['total_usd']:.4f} a month"
    )
    print(
        f"    backup p50 / p99: {day['latency_ms']['p50']:.1f} / {day['latency_ms']['p99']:.1f} ms"
    )


def print_report(report: dict[str, Any]) -> None:
    lat = report["latency_ms"]
    model = report["cost_model"]
    prices = report["prices_usd"]
    print(
        f"\nS3 (SeaweedFS on loopback): {report['trades']:,} trades, {report['backups']} "
        "pre-trade backups"
    )
    print(
        f"  cost model: one bot, {model['backups_per_day']} pre-trade backups a day for "
        f"{model['days_per_month']} days, S3 Standard prices: PUT/COPY/LIST "
        f"${prices['put_class']} and GET/HEAD ${prices['get_class']} per 1,000, DELETE free, "
        f"storage ${prices['storage_gb_month']} per GB-month of the bucket as it is after the "
        "measured day (retention keeping about a day); the first full backup, transfer out "
        "(restores) and the client's retries are not included"
    )
    _day_lines("ours", report["ours"])
    _day_lines("one object per chunk", report["one_object_per_chunk"])
    ratio = report["ratio_one_object_per_chunk_to_ours"]
    print(
        f"  one object per chunk / ours: {ratio['requests']:.2f}x the requests, "
        f"{ratio['monthly_usd']:.2f}x the monthly cost"
    )
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
