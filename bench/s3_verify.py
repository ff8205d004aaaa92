"""Verify and ``check --read-data`` from S3: ``python -m bench.s3_verify --size N``.

Starts SeaweedFS on loopback and backs the mixed tree of ``bench/restore_tree.py`` (N MB,
default 1024) up into a bucket, with the helpers of ``bench/s3_transfer.py``. Then, each in a
fresh process (a fresh manager; peak RSS is that process's ``VmHWM``):

* verifies the backup chunk by chunk (one ranged GET per chunk: the path verify took before
  coalesced reads, and still takes on a local store; here forced by telling the S3 store its
  reads are cheap, ``cheap_exists``);
* verifies it as it now runs from S3 (coalesced, parallel ranged reads within a budget);
* checks the whole repository with ``--read-data`` (every pack read whole and checked);
* restores it (``RecoveryManager.restore_to_directory``, as ``bench.s3_transfer`` does): the
  speed verify is compared with.

MB/s are of the tree's bytes (the backup's plaintext); requests as the store counts them
(``Store.requests()``: a ranged read is one GET); "CPU" is the process's, "server"
SeaweedFS's during the same step. Verify must find the backup intact both ways. ``--rounds N``
repeats the steps (alternating the order of the two verifies) and prints medians.

Prints a table (or ``--json``) and writes ``bench/results/s3_verify_latest.json``. Exit 1 if a
verify fails, the check finds damage or the restored tree differs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.restore_tree import MB, generate_tree, identical_trees
from bench.s3_transfer import (
    _config,
    _cpu_s,
    _median,
    _opened,
    _options_dict,
    _peak_rss_mb,
    _requests,
    _run_child,
    run_tree_bench,
)
from src.infra.backup.storage.s3_location import S3Options

DEFAULT_OUT = Path(__file__).parent / "results"
MODES = ("per-chunk", "coalesced")


def child_verify(work: Path, options: S3Options, mode: str) -> dict[str, Any]:
    """Verify the newest backup in the bucket (every chunk read and checked), ``mode``
    ``per-chunk`` or ``coalesced``."""
    from src.infra.backup import RecoveryManager

    manager, store = _opened(_config(work, "s3", options))
    if mode == "per-chunk":
        store.cheap_exists = True  # verify then reads chunk by chunk, as from a local store
    backup_id = manager.list_backups()[0].backup_id
    requests = store.requests()
    cpu = _cpu_s()
    started = time.perf_counter()
    report = RecoveryManager(manager).verify_backup_report(backup_id)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_s": _cpu_s() - cpu,
        "ok": report.ok,
        "problems": report.problems[:5],
        "chunks": report.checked_chunks,
        "bytes": report.checked_bytes,
        "peak_rss_mb": _peak_rss_mb(),
        "requests": _requests(store, requests),
    }


def child_check(work: Path, options: S3Options) -> dict[str, Any]:
    """``check --read-data`` of the whole S3 repository."""
    manager, store = _opened(_config(work, "s3", options))
    requests = store.requests()
    cpu = _cpu_s()
    started = time.perf_counter()
    report = manager.check(read_data=True)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_s": _cpu_s() - cpu,
        "clean": report.clean,
        "packs": report.packs,
        "chunks": report.chunks_checked,
        "bytes": report.bytes_checked,
        "peak_rss_mb": _peak_rss_mb(),
        "requests": _requests(store, requests),
    }


def _child(args: list[str], server_pid: int) -> dict[str, Any]:
    return _run_child(args, server_pid, "bench.s3_verify")


def measure(
    work: Path, options: S3Options, size_mb: int, rounds: int, server_pid: int
) -> dict[str, Any]:
    from src.infra.backup import BackupManager

    tree = work / "tree"
    print(f"generating a {size_mb} MB mixed tree in {tree} ...", flush=True)
    files = generate_tree(tree, size_mb * MB)
    tree_bytes = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    started = time.perf_counter()
    BackupManager(_config(work, "s3", options)).create_backup(None, include_files=True)
    backup_s = time.perf_counter() - started
    print(f"backed up to s3 in {backup_s:.1f} s", flush=True)
    options_json = json.dumps(_options_dict(options))
    verifies: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    checks: list[dict[str, Any]] = []
    restores: list[dict[str, Any]] = []
    identical = True
    for index in range(rounds):
        for mode in MODES if index % 2 == 0 else MODES[::-1]:
            verifies[mode].append(_child(["verify", str(work), options_json, mode], server_pid))
            print(f"verify ({mode}): {verifies[mode][-1]['seconds']:.2f} s", flush=True)
        checks.append(_child(["check", str(work), options_json], server_pid))
        print(f"check --read-data: {checks[-1]['seconds']:.2f} s", flush=True)
        target = work / f"restored-{index}"
        # bench.s3_transfer's own child: the restore exactly as that benchmark measures it
        restores.append(
            _run_child(["restore", str(work), "s3", options_json, str(target)], server_pid)
        )
        os.sync()
        print(f"restore: {restores[-1]['seconds']:.2f} s", flush=True)
        identical = identical and identical_trees(tree, target / "tree")
        shutil.rmtree(target, ignore_errors=True)
    good = all(run["ok"] for runs in verifies.values() for run in runs)
    return {
        "started_utc": datetime.now(UTC).isoformat(),
        "size_mb": tree_bytes / MB,
        "files": files,
        "rounds": rounds,
        "backup_s": backup_s,
        "verify": {mode: _median(runs) for mode, runs in verifies.items()},
        "check": _median(checks),
        "restore": _median(restores),
        "ok": good and all(run["clean"] for run in checks) and identical,
    }


def print_report(report: dict[str, Any]) -> None:
    size = report["size_mb"]
    print(f"\ntree {size:.1f} MB in {report['files']} files, {report['rounds']} round(s)")
    rows = [(f"verify, {mode}", run) for mode, run in report["verify"].items()]
    rows += [("check --read-data", report["check"]), ("restore (reference)", report["restore"])]
    for name, run in rows:
        print(
            f"  {name:20} {run['seconds']:7.2f} s {size / run['seconds']:7.1f} MB/s"
            f"  peak RSS {run['max_peak_rss_mb']:6.1f} MB  CPU {run['cpu_s']:5.1f} s"
            f" (server {run['server_cpu_s']:5.1f} s)  requests {run['requests']}"
        )
    print(f"  all good             {'yes' if report['ok'] else 'NO: see the JSON'}")


def _child_main(argv: list[str]) -> int:
    kind, work, options_json, *mode = argv
    options = S3Options(**json.loads(options_json))
    if kind == "verify":
        result = child_verify(Path(work), options, mode[0])
    else:
        result = child_check(Path(work), options)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tree_bench(
        argv,
        prog="python -m bench.s3_verify",
        description=__doc__,
        child_main=_child_main,
        measure=measure,
        print_report=print_report,
        result_name="s3_verify_latest.json",
        ok_key="ok",
    )


if __name__ == "__main__":
    sys.exit(main())
