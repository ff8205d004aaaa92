"""Restore and ``sync --from`` throughput from S3: ``python -m bench.s3_transfer --size N``.

Starts SeaweedFS (``tools/s3_server.py``, 127.0.0.1), generates the mixed tree of
``bench/restore_tree.py`` (N MB, default 1024) and backs it up twice: into a bucket and into a
local directory (the baseline). Then, each in a fresh process (a fresh manager, and a clean
peak RSS: ``VmHWM`` of that process):

* restores the backup from the local repository and from S3 into new directories
  (``RecoveryManager.restore_to_directory``): MB/s of tree bytes, peak RSS;
* copies the whole S3 repository to a local directory (``sync``, as ``sync --from`` does): MB/s
  of the repository's stored bytes, peak RSS.

Requests are those the store counts (``Store.requests()``: a ranged read is a GET; a local
store counts the S3 requests its file operations stand for). Every restored tree is compared
with the original (content, mode, mtime), and the synced copy is restored and compared too.
``--rounds N`` repeats the restores and the sync (alternating which restore goes first) and
prints medians.

Prints a table (or ``--json``) and writes ``bench/results/s3_transfer_latest.json``. Exit 1 if
a restored tree differs. Loopback S3 has no network latency: on a real link the request
counts times the round-trip time come on top, spread over the parallel requests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.restore_tree import MB, _status_mb, generate_tree, identical_trees
from src.infra.backup.storage.base import Store
from src.infra.backup.storage.s3_location import S3Options

if TYPE_CHECKING:
    from tools.s3_server import SeaweedS3

DEFAULT_OUT = Path(__file__).parent / "results"
BUCKET = "bench"
URL = f"s3://{BUCKET}/tree"


def _peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` (``ru_maxrss`` would carry the parent's peak
    across ``exec``)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu_s(pid: int) -> float:
    """CPU seconds the S3 server process used so far (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _config(work: Path, where: str, options: S3Options | None) -> Any:
    from src.infra.backup import BackupConfig

    path = URL if where == "s3" else str(work / "repo")
    return BackupConfig(
        backup_path=path, sources=["tree/"], base_dir=str(work), retention_days=0, s3=options
    )


def _opened(config: Any) -> tuple[Any, Store]:
    """A fresh manager on ``config`` and its repository's store (whose requests are counted:
    ``Store.requests()``)."""
    from src.infra.backup import BackupManager

    manager = BackupManager(config)
    return manager, manager.open_repository(create=False).store


def _requests(store: Store, before: dict[str, int]) -> dict[str, int]:
    """The requests ``store`` made since ``before``."""
    return {
        op: n - before.get(op, 0) for op, n in store.requests().items() if n > before.get(op, 0)
    }


def child_restore(
    work: Path, where: str, options: S3Options | None, target: Path
) -> dict[str, Any]:
    """Restore the newest backup of the ``where`` repository into ``target`` (a fresh
    manager in this fresh process)."""
    from src.infra.backup import RecoveryManager

    manager, store = _opened(_config(work, where, options))
    requests = store.requests()
    rss_before = _status_mb("VmRSS")
    cpu = _cpu_s()
    started = time.perf_counter()
    backup_id = manager.list_backups()[0].backup_id
    result = RecoveryManager(manager).restore_to_directory(backup_id, target)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_s": _cpu_s() - cpu,
        "bytes": result.bytes_written,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": rss_before,
        "requests": _requests(store, requests),
    }


def child_sync(work: Path, options: S3Options | None, target: Path) -> dict[str, Any]:
    """Copy the whole S3 repository into a new local directory (``sync --from``)."""
    from src.infra.backup.repository.replication import open_replica, sync
    from src.infra.backup.storage.local import LocalStore

    manager, store = _opened(_config(work, "s3", options))
    source = manager.repository
    stored = source.stored_bytes()
    requests = store.requests()
    cpu = _cpu_s()
    started = time.perf_counter()
    report = sync(source, open_replica(source, LocalStore(target), create=True))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_s": _cpu_s() - cpu,
        "stored_bytes": stored,
        "backups": len(report.copied),
        "blobs": report.blobs_copied,
        "bytes_copied": report.bytes_copied,
        "peak_rss_mb": _peak_rss_mb(),
        "requests": _requests(store, requests),
    }


def _run_child(
    args: list[str], server_pid: int, module: str = "bench.s3_transfer"
) -> dict[str, Any]:
    """``python -m <module> --child <args>`` (a fresh process: its peak RSS is its own), with
    the server's CPU time meanwhile."""
    server_cpu = _server_cpu_s(server_pid)
    done = subprocess.run(
        [sys.executable, "-m", module, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu_s"] = _server_cpu_s(server_pid) - server_cpu
    return result


def measure(
    work: Path, options: S3Options, size_mb: int, rounds: int, server_pid: int
) -> dict[str, Any]:
    from src.infra.backup import BackupManager

    tree = work / "tree"
    print(f"generating a {size_mb} MB mixed tree in {tree} ...", flush=True)
    files = generate_tree(tree, size_mb * MB)
    tree_bytes = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    backups = {}
    for where in ("local", "s3"):
        started = time.perf_counter()
        BackupManager(_config(work, where, options)).create_backup(None, include_files=True)
        backups[where] = time.perf_counter() - started
        print(f"backed up to {where} in {backups[where]:.1f} s", flush=True)
    os.sync()
    options_json = json.dumps(_options_dict(options))
    restores: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
    syncs: list[dict[str, Any]] = []
    for index in range(rounds):
        order = ("local", "s3") if index % 2 == 0 else ("s3", "local")
        for where in order:
            target = work / f"restored-{where}-{index}"
            restores[where].append(
                _run_child(["restore", str(work), where, options_json, str(target)], server_pid)
            )
            os.sync()
            print(f"restored from {where}: {restores[where][-1]['seconds']:.2f} s", flush=True)
        target = work / f"synced-{index}"
        syncs.append(_run_child(["sync", str(work), "-", options_json, str(target)], server_pid))
        os.sync()
        print(f"synced from s3: {syncs[-1]['seconds']:.2f} s", flush=True)
    identical = all(
        identical_trees(tree, work / f"restored-{where}-{i}" / "tree")
        for where in ("local", "s3")
        for i in range(rounds)
    )
    synced_ok = _restore_synced_copy(work, tree)
    return {
        "started_utc": datetime.now(UTC).isoformat(),
        "size_mb": tree_bytes / MB,
        "files": files,
        "rounds": rounds,
        "backup_s": backups,
        "restore": {where: _median(runs) for where, runs in restores.items()},
        "sync_from_s3": _median(syncs),
        "identical": identical and synced_ok,
    }


def _restore_synced_copy(work: Path, tree: Path) -> bool:
    """Restore the first synced copy and compare it with the tree."""
    from src.infra.backup import BackupConfig, BackupManager, RecoveryManager

    manager = BackupManager(BackupConfig(backup_path=str(work / "synced-0"), retention_days=0))
    backup_id = manager.list_backups()[0].backup_id
    RecoveryManager(manager).restore_to_directory(backup_id, work / "restored-synced")
    return identical_trees(tree, work / "restored-synced" / "tree")


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time (its other figures with it), plus every time."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["all_seconds"] = [run["seconds"] for run in runs]
    chosen["max_peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    return chosen


def _options_dict(options: S3Options) -> dict[str, Any]:
    return {
        "endpoint_url": options.endpoint_url,
        "region": options.region,
        "access_key_id": options.access_key_id,
        "secret_access_key": options.secret_access_key,
    }


def print_report(report: dict[str, Any]) -> None:
    size = report["size_mb"]
    print(f"\ntree {size:.1f} MB in {report['files']} files, {report['rounds']} round(s)")
    for where, seconds in report["backup_s"].items():
        print(f"  backup to {where:5}      {seconds:7.2f} s  {size / seconds:7.1f} MB/s")
    for where, run in report["restore"].items():
        print(
            f"  restore from {where:5}   {run['seconds']:7.2f} s  {size / run['seconds']:7.1f} MB/s"
            f"  peak RSS {run['max_peak_rss_mb']:6.1f} MB  CPU {run['cpu_s']:.1f} s"
            f" (server {run['server_cpu_s']:.1f} s)  requests {run['requests']}"
        )
    sync = report["sync_from_s3"]
    stored = sync["stored_bytes"] / MB
    print(
        f"  sync --from s3        {sync['seconds']:7.2f} s  {stored / sync['seconds']:7.1f} MB/s"
        f" of {stored:.1f} MB stored, peak RSS {sync['max_peak_rss_mb']:.1f} MB, CPU "
        f"{sync['cpu_s']:.1f} s (server {sync['server_cpu_s']:.1f} s), requests {sync['requests']}"
    )
    print(f"  identical             {'yes' if report['identical'] else 'NO: a tree differs'}")


def _child_main(argv: list[str]) -> int:
    kind, work, where, options_json, target = argv
    options = S3Options(**json.loads(options_json))
    if kind == "restore":
        result = child_restore(Path(work), where, options, Path(target))
    else:
        result = child_sync(Path(work), options, Path(target))
    print(json.dumps(result))
    return 0


def start_s3(work: Path) -> tuple[SeaweedS3, S3Options]:
    """SeaweedFS on loopback with the bucket :data:`BUCKET` (``bench.s3.start_seaweed``)."""
    from bench.s3 import start_seaweed

    return start_seaweed(work, BUCKET)


def run_tree_bench(
    argv: list[str] | None,
    *,
    prog: str,
    description: str | None,
    child_main: Callable[[list[str]], int],
    measure: Callable[[Path, S3Options, int, int, int], dict[str, Any]],
    print_report: Callable[[dict[str, Any]], None],
    result_name: str,
    ok_key: str,
) -> int:
    """The command line shared by the 1 GB tree benches on S3: ``--child`` runs
    ``child_main``; otherwise SeaweedFS is started, ``measure(work, options, size, rounds,
    server_pid)`` runs, the report is printed and written to ``<out>/<result_name>``; exit 1
    unless ``report[ok_key]``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--size", type=int, default=1024, help="tree size in MB (default 1024)")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions (medians)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.size < 1 or args.rounds < 1:
        parser.error("--size and --rounds must be at least 1")
    work = Path(tempfile.mkdtemp(prefix=f"peak-{prog.rsplit('.', 1)[-1]}-", dir="/tmp"))
    server, options = start_s3(work)
    try:
        assert server.process is not None
        report = measure(work, options, args.size, args.rounds, server.process.pid)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / result_name).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report[ok_key] else 1


def main(argv: list[str] | None = None) -> int:
    return run_tree_bench(
        argv,
        prog="python -m bench.s3_transfer",
        description=__doc__,
        child_main=_child_main,
        measure=measure,
        print_report=print_report,
        result_name="s3_transfer_latest.json",
        ok_key="identical",
    )


if __name__ == "__main__":
    sys.exit(main())
