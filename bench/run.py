"""The trading-day benchmark: ``python -m bench.run`` (what ``make bench`` runs).

For each implementation (ours, ``src.infra.backup``; and the seed-style naive baseline in
:mod:`bench.naive`) one trading day is replayed: before each backup the workload advances one
step (5 more trades, moved prices, now and then re-learned patterns), then
``create_backup(state, backup_type="pre_trade")`` is timed. Afterwards the repository is
measured (bytes and files on disk), ``list_backups``, restoring and verifying the latest
backup are timed, the restored data is compared with what was backed up, and the peak memory
of one extra backup is traced. The floors (encoding the state once, hashing those bytes) are
measured in the same run so that the figures can be read against them.

The naive baseline takes seconds per backup, so by default only the first 20 backups of the
day are run for it and its repository size (and ``list_backups`` time) is extrapolated
linearly to the full day; output and JSON mark those figures as extrapolated.

Results are printed as a table and written to ``<out>/<UTC timestamp>.json`` and
``<out>/latest.json``. The exit status is 1 when a correctness check fails or an
implementation raises, so a broken restore can never pass as a fast one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.naive import NaiveBackupManager
from bench.other_tools import run_installed
from bench.workload import TradingDay

#: Where results go unless ``--out`` says otherwise (``bench/results``).
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

#: Seed of the workload; the same day is replayed for every implementation.
SEED = 20251217

#: Backup type used for every timed backup, as a bot would before each order.
BACKUP_TYPE = "pre_trade"

MB = 1_000_000

State = dict[str, Any]


# -- implementations under test --------------------------------------------------------


@dataclass
class Impl:
    """One backup implementation, reduced to the operations the benchmark times."""

    name: str
    create: Callable[[State, str], str]
    list_ids: Callable[[], list[str]]
    restore_latest: Callable[[], State]
    load: Callable[[str], State]
    verify: Callable[[str], bool] | None
    verify_decode: Callable[[str], bool] | None = None


def open_ours(path: Path, *, encryption: str = "none") -> Impl:
    """``src.infra.backup`` on a fresh repository at ``path`` (retention disabled)."""
    from src.infra.backup import BackupConfig, BackupManager, RecoveryManager

    config = BackupConfig(backup_path=str(path), retention_days=0, encryption=encryption)
    passphrase = None if encryption == "none" else "bench passphrase"
    manager = BackupManager(config, passphrase=passphrase)
    recovery = RecoveryManager(manager)
    return Impl(
        name="ours" if encryption == "none" else "ours+enc",
        create=lambda data, backup_type: manager.create_backup(data, backup_type=backup_type),
        list_ids=lambda: [info.backup_id for info in manager.list_backups()],
        restore_latest=recovery.restore_latest_backup,
        load=manager.load_backup,
        verify=recovery.verify_backup,
        verify_decode=lambda backup_id: recovery.verify_backup(backup_id, decode=True),
    )


def open_ours_encrypted(path: Path) -> Impl:
    """The same on an encrypted repository (the default AEAD, keyed chunk ids)."""
    from src.infra.backup.format.crypto import DEFAULT_AEAD

    return open_ours(path, encryption=DEFAULT_AEAD)


def open_naive(path: Path) -> Impl:
    """The seed-style baseline on a fresh folder at ``path``."""
    manager = NaiveBackupManager(path)

    def restore_latest() -> State:
        """What the seed's restore of the latest backup amounts to: list, then load."""
        return manager.load_backup(manager.list_backups()[0].backup_id)

    return Impl(
        name="naive",
        create=manager.create_backup,
        list_ids=lambda: [info.backup_id for info in manager.list_backups()],
        restore_latest=restore_latest,
        load=manager.load_backup,
        verify=None,
    )


# -- measuring helpers ------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def timed_median(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Call ``fn`` ``runs`` times; return the median duration in ms and the first result."""
    durations: list[float] = []
    first: Any = None
    for i in range(runs):
        start = time.perf_counter()
        result = fn()
        durations.append((time.perf_counter() - start) * 1000.0)
        if i == 0:
            first = result
        del result
    return statistics.median(durations), first


def disk_usage(path: Path) -> dict[str, int]:
    """Bytes (sum of ``st_size``), allocated bytes (``st_blocks``) and number of files."""
    size = allocated = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            size += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return {"bytes": size, "allocated_bytes": allocated, "files": files}


def _rss_kib(field: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` of this process in KiB (Linux only, else ``None``)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory(create: Callable[[State, str], str], state: State) -> dict[str, Any]:
    """Peak memory of one ``create`` call: tracemalloc's peak and the RSS high-water delta.

    tracemalloc sees every allocation made through Python's allocators (all ``bytes``,
    lists, dicts), not buffers a C or Rust extension allocates with plain ``malloc``; the
    RSS delta sees those but includes tracemalloc's own bookkeeping, so it is an upper bound.
    """
    rss_ok = _reset_rss_peak()
    rss_before = _rss_kib("VmRSS")
    tracemalloc.start()
    start = time.perf_counter()
    create(state, BACKUP_TYPE)
    duration_ms = (time.perf_counter() - start) * 1000.0
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = _rss_kib("VmHWM")
    rss_delta = None
    if rss_ok and rss_before is not None and rss_peak is not None:
        rss_delta = max(0, rss_peak - rss_before) * 1024
    return {
        "tracemalloc_peak_bytes": peak,
        "tracemalloc_retained_bytes": current,
        "rss_high_water_delta_bytes": rss_delta,
        "duration_ms_under_tracemalloc": duration_ms,
    }


def _encoder() -> tuple[str, Callable[[Any], bytes]]:
    """``values.encode_value`` of our package if importable, else compact JSON."""
    try:
        from src.infra.backup.format.values import encode_value
    except ImportError:

        def compact_json(value: Any) -> bytes:
            """Compact JSON, the fallback measure of a value's serialized size."""
            return json.dumps(value, separators=(",", ":"), default=str).encode("utf-8")

        return "compact json (encode_value not importable)", compact_json

    def encode(value: Any) -> bytes:
        """``encode_value`` as bytes, whatever buffer type it returns."""
        return bytes(encode_value(value))

    return "src.infra.backup.format.values.encode_value", encode


def serialized_size(state: State) -> dict[str, Any]:
    """Size of ``state`` once encoded, per top-level entry and in total."""
    name, encode = _encoder()
    per_entry = {key: len(encode(value)) for key, value in state.items()}
    return {"encoder": name, "per_entry": per_entry, "total": sum(per_entry.values())}


def measure_floors(state: State) -> dict[str, Any]:
    """What no implementation can beat: encoding the whole state once, hashing those bytes."""
    import blake3

    name, encode = _encoder()
    encode_ms, encoded = timed_median(lambda: encode(state), 5)
    hash_ms, _ = timed_median(lambda: blake3.blake3(encoded).digest(), 5)
    return {
        "encoder": name,
        "encoded_bytes": len(encoded),
        "encode_ms": encode_ms,
        "blake3_ms": hash_ms,
        "encode_plus_hash_ms": encode_ms + hash_ms,
    }


# -- one trading day --------------------------------------------------------------------


@dataclass
class DaySpec:
    """What to replay: the workload's size and seed and how many backups to make."""

    trades: int
    backups: int
    seed: int = SEED


def run_day(
    impl_name: str,
    opener: Callable[[Path], Impl],
    spec: DaySpec,
    full_day_backups: int,
    first_state: State,
) -> dict[str, Any]:
    """Replay the day on a fresh repository of one implementation and measure everything.

    ``first_state`` is the state at the first backup, regenerated independently, to check
    that the oldest backup still restores exactly after the whole day.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{impl_name}-", dir="/tmp"))
    repo = workdir / "repo"
    checks: dict[str, bool] = {}
    try:
        impl = opener(repo)
        day = TradingDay(spec.trades, spec.seed)
        latencies: list[float] = []
        ids: list[str] = []
        print(f"[{impl_name}] {spec.backups} backups ...", flush=True)
        for i in range(spec.backups):
            day.step()
            state = day.state()
            start = time.perf_counter()
            ids.append(impl.create(state, BACKUP_TYPE))
            latencies.append((time.perf_counter() - start) * 1000.0)
            if (i + 1) % max(1, spec.backups // 10) == 0:
                print(
                    f"[{impl_name}]   {i + 1}/{spec.backups}  last {latencies[-1]:.1f} ms",
                    flush=True,
                )

        usage = disk_usage(repo)
        list_ms, listed = timed_median(impl.list_ids, 5)
        checks["ids unique"] = len(set(ids)) == len(ids)
        checks[f"list_backups returns all {len(ids)}"] = sorted(listed) == sorted(ids)
        checks["list_backups newest first"] = bool(listed) and listed[0] == ids[-1]

        restore_ms, restored = timed_median(impl.restore_latest, 3)
        checks["restored latest == backed-up state"] = restored == day.state()
        del restored

        # The same on a freshly opened manager each time, as a new process (the CLI, a bot
        # restarting after a crash) would see it: no manifests or chunk lists cached in memory.
        cold_list_ms, _ = timed_median(lambda: opener(repo).list_ids(), 5)
        cold_restore_ms, restored = timed_median(lambda: opener(repo).restore_latest(), 3)
        checks["restored latest (fresh manager) == backed-up state"] = restored == day.state()
        del restored
        oldest = impl.load(ids[0])
        checks["oldest backup == regenerated first state"] = oldest == first_state
        del oldest

        verify_ms: float | None = None
        verify_decode_ms: float | None = None
        verify = impl.verify
        if verify is not None:
            verify_ms, valid = timed_median(lambda: verify(ids[-1]), 3)
            checks["verify_backup(latest) is True"] = valid is True
        deep = impl.verify_decode
        if deep is not None:
            verify_decode_ms, valid = timed_median(lambda: deep(ids[-1]), 3)
            checks["verify_backup(latest, decode=True) is True"] = valid is True

        day.step()
        memory = peak_memory(impl.create, day.state())
        memory["serialized"] = serialized_size(day.state())
        memory["peak_over_serialized"] = (
            memory["tracemalloc_peak_bytes"] / memory["serialized"]["total"]
        )

        result: dict[str, Any] = {
            "backups": spec.backups,
            "latency_ms": {
                "p50": percentile(latencies, 50),
                "p99": percentile(latencies, 99),
                "mean": statistics.fmean(latencies),
                "min": min(latencies),
                "max": max(latencies),
                "first": latencies[0],
                "all": latencies,
            },
            "repository": usage,
            "list_ms": list_ms,
            "list_fresh_manager_ms": cold_list_ms,
            "restore_latest_ms": restore_ms,
            "restore_latest_fresh_manager_ms": cold_restore_ms,
            "verify_latest_ms": verify_ms,
            "verify_latest_decode_ms": verify_decode_ms,
            "memory_one_backup": memory,
            "checks": checks,
            "ok": all(checks.values()),
        }
        if spec.backups < full_day_backups:
            scale = full_day_backups / spec.backups
            result["extrapolated_to_full_day"] = {
                "note": (
                    f"measured {spec.backups} backups, scaled linearly to {full_day_backups}: "
                    "every naive backup stores the whole state again, and list_backups reads "
                    "one metadata.json per backup"
                ),
                "backups": full_day_backups,
                "repository_bytes": usage["bytes"] * scale,
                "repository_allocated_bytes": usage["allocated_bytes"] * scale,
                "repository_files": usage["files"] * scale,
                "list_ms": list_ms * scale,
                "list_fresh_manager_ms": cold_list_ms * scale,
            }
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- reporting --------------------------------------------------------------------------


def _fmt_bytes(n: float | None) -> str:
    """Human-readable decimal size."""
    if n is None:
        return "n/a"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def _fmt_ms(ms: float | None) -> str:
    """Milliseconds with sensible precision."""
    if ms is None:
        return "n/a"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:,.1f} ms"


def _fmt_count(n: float) -> str:
    """A count with thousands separators."""
    return f"{n:,.0f}"


def _fmt_times(x: float) -> str:
    """A factor, e.g. ``1.52x``."""
    return f"{x:.2f}x"


def _ratio(naive: float | None, ours: float | None) -> float | None:
    """``naive / ours``, or ``None`` when either is missing or zero."""
    if not naive or not ours:
        return None
    return naive / ours


#: Rows of the table: label, key path into a result, formatter, key of the extrapolated
#: full-day figure (naive), key of the naive/ours ratio.
_ROWS: list[tuple[str, str, Callable[[Any], str], str | None, str | None]] = [
    ("backup latency p50", "latency_ms.p50", _fmt_ms, None, "backup_p50_speedup"),
    ("backup latency p99", "latency_ms.p99", _fmt_ms, None, None),
    ("backup latency mean", "latency_ms.mean", _fmt_ms, None, "backup_mean_speedup"),
    ("first backup of the day", "latency_ms.first", _fmt_ms, None, None),
    (
        "repository size after the day",
        "repository.bytes",
        _fmt_bytes,
        "repository_bytes",
        "repository_size_ratio",
    ),
    (
        "  allocated on disk",
        "repository.allocated_bytes",
        _fmt_bytes,
        "repository_allocated_bytes",
        None,
    ),
    ("  files", "repository.files", _fmt_count, "repository_files", None),
    ("list_backups (median of 5)", "list_ms", _fmt_ms, "list_ms", "list_ratio"),
    (
        "  fresh manager each time",
        "list_fresh_manager_ms",
        _fmt_ms,
        "list_fresh_manager_ms",
        "list_fresh_manager_ratio",
    ),
    ("restore latest (median of 3)", "restore_latest_ms", _fmt_ms, None, "restore_latest_ratio"),
    (
        "  fresh manager each time",
        "restore_latest_fresh_manager_ms",
        _fmt_ms,
        None,
        "restore_latest_fresh_manager_ratio",
    ),
    ("verify latest (median of 3)", "verify_latest_ms", _fmt_ms, None, None),
    ("  and decode every value", "verify_latest_decode_ms", _fmt_ms, None, None),
    ("peak memory, one backup", "memory_one_backup.tracemalloc_peak_bytes", _fmt_bytes, None, None),
    ("  peak / serialized state", "memory_one_backup.peak_over_serialized", _fmt_times, None, None),
    (
        "  RSS high-water delta",
        "memory_one_backup.rss_high_water_delta_bytes",
        _fmt_bytes,
        None,
        None,
    ),
]


def _lookup(result: dict[str, Any], path: str) -> Any:
    """``result["a"]["b"]`` for ``path`` ``"a.b"``."""
    value: Any = result
    for part in path.split("."):
        value = value[part]
    return value


def _cell(result: dict[str, Any], path: str, fmt: Callable[[Any], str], full: str | None) -> str:
    """One figure; the extrapolated full-day value, marked ``*``, where there is one."""
    extrapolated = result.get("extrapolated_to_full_day")
    if full and extrapolated:
        return "*" + fmt(extrapolated[full])
    return fmt(_lookup(result, path))


def compute_ratios(ours: dict[str, Any], naive: dict[str, Any]) -> dict[str, float | None]:
    """naive / ours for every row that has a ratio (full-day figures for naive)."""
    ratios: dict[str, float | None] = {}
    for _label, path, _fmt, full, ratio_key in _ROWS:
        if ratio_key is None:
            continue
        extrapolated = naive.get("extrapolated_to_full_day")
        naive_value = extrapolated[full] if full and extrapolated else _lookup(naive, path)
        ratios[ratio_key] = _ratio(naive_value, _lookup(ours, path))
    ratios["list_ratio_as_measured"] = _ratio(naive["list_ms"], ours["list_ms"])
    return ratios


def print_report(report: dict[str, Any]) -> None:
    """The human-readable table of one benchmark run."""
    params = report["params"]
    results: dict[str, dict[str, Any]] = report["results"]
    cols = [(name, res) for name, res in results.items() if "error" not in res]
    ratios: dict[str, float | None] = report.get("ratios") or {}
    naive = results.get("naive")

    print()
    print(
        f"Trading-day benchmark: {params['trades']:,} initial trades, "
        f"{params['backups']} pre-trade backups, seed {params['seed']}"
    )
    state = report["state"]
    entries = ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in state["per_entry"].items())
    print(f"State at the end: {_fmt_bytes(state['total'])} serialized ({entries})")
    print(f"  [{state['encoder']}]")
    machine = report["machine"]
    print(
        f"{machine['cpus']} CPUs, /tmp on {machine['tmp_filesystem']}, load average "
        f"{machine['loadavg_start']} at the start, {machine['loadavg_end']} at the end"
    )
    if naive and "extrapolated_to_full_day" in naive:
        print(
            f"naive: ran {naive['backups']} of {params['backups']} backups; figures marked * "
            f"are extrapolated linearly to {params['backups']}"
        )
    print()

    header = f"{'metric':<32}" + "".join(f"{name:>16}" for name, _ in cols)
    if ratios:
        header += f"{'naive/ours':>13}"
    print(header)
    print("-" * len(header))
    for label, path, fmt, full, ratio_key in _ROWS:
        line = f"{label:<32}" + "".join(f"{_cell(r, path, fmt, full):>16}" for _, r in cols)
        ratio = ratios.get(ratio_key) if ratio_key else None
        if ratio is not None:
            line += f"{ratio:>12.1f}x"
        print(line)
    if naive and "extrapolated_to_full_day" in naive and "error" not in naive:
        print(
            f"(naive list_backups as measured over {naive['backups']} backups: "
            f"{_fmt_ms(naive['list_ms'])}; fresh manager {_fmt_ms(naive['list_fresh_manager_ms'])})"
        )
    print()

    floors = report["floors"]
    print(
        f"Floors [{floors['encoder']}]: encode the whole state once "
        f"{_fmt_ms(floors['encode_ms'])}, BLAKE3 of its {_fmt_bytes(floors['encoded_bytes'])} "
        f"{_fmt_ms(floors['blake3_ms'])}"
    )
    ours = results.get("ours")
    if ours and "error" not in ours:
        over = ours["latency_ms"]["p50"] / floors["encode_plus_hash_ms"]
        print(f"  ours backup p50 / (encode + hash) = {over:.2f}x")
        encrypted = results.get("ours+enc")
        if encrypted and "error" not in encrypted:
            cost = encrypted["latency_ms"]["p50"] / ours["latency_ms"]["p50"]
            print(f"  encrypted / plain backup p50 = {cost:.2f}x")
    print()
    for name, res in results.items():
        if "error" in res:
            print(f"{name}: FAILED: {res['error']}")
            continue
        for check, passed in res["checks"].items():
            print(f"{name}: {'ok  ' if passed else 'FAIL'} {check}")
    print_other_tools(report)


def print_other_tools(report: dict[str, Any]) -> None:
    """restic and borg next to ours (state written as JSON files first, then the tool)."""
    tools: dict[str, dict[str, Any]] = report["other_tools"]
    ours = report["results"].get("ours") or {}
    if not tools:
        return
    print()
    for name, res in tools.items():
        if "skipped" in res or "error" in res:
            print(f"{name}: {res.get('skipped') or 'FAILED: ' + res['error']}")
            continue
        p50 = ours.get("latency_ms", {}).get("p50")
        size = ours.get("repository", {}).get("bytes")
        print(
            f"{name} ({res['backups']} backups run): backup p50 {res['backup_p50_ms']:,.0f} ms "
            f"(writing the state as files {res['write_files_p50_ms']:,.0f} ms + {name} "
            f"{res['tool_p50_ms']:,.0f} ms)"
            + (f" = {res['backup_p50_ms'] / p50:.0f}x ours" if p50 else "")
        )
        print(
            f"  repository after the day *{_fmt_bytes(res['repo_bytes_full_day'])}"
            + (f" = {res['repo_bytes_full_day'] / size:.1f}x ours" if size else "")
            + f"; restore latest {res['restore_latest_ms']:,.0f} ms; list {res['list_ms']:,.0f} ms"
        )


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _filesystem_of(path: str) -> str:
    """Filesystem type of the mount holding ``path`` (best effort, Linux)."""
    best, fstype = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and path.startswith(fields[1]) and len(fields[1]) > len(best):
                best, fstype = fields[1], fields[2]
    except OSError:
        pass
    return fstype


# -- entry point ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks the day for a smoke test."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--trades", type=int, default=100_000, help="initial trades (default 100000)"
    )
    parser.add_argument("--backups", type=int, default=200, help="backups in the day (default 200)")
    parser.add_argument(
        "--naive-backups",
        type=int,
        default=None,
        help="backups actually run for the naive baseline (default min(20, backups)); "
        "its size is extrapolated to --backups",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the naive baseline")
    parser.add_argument(
        "--skip-encrypted", action="store_true", help="do not run the encrypted repository"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 10,000 trades, 30 backups"
    )
    parser.add_argument("--skip-other-tools", action="store_true", help="do not run restic / borg")
    parser.add_argument(
        "--other-backups",
        type=int,
        default=20,
        help="backups run with restic / borg where installed (sizes extrapolated; default 20)",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="workload seed")
    args = parser.parse_args(argv)
    if args.quick:
        args.trades, args.backups = 10_000, 30
    if args.trades < 0 or args.backups < 1:
        parser.error("--trades must be >= 0 and --backups >= 1")
    if args.naive_backups is None:
        args.naive_backups = min(20, args.backups)
    args.naive_backups = max(1, min(args.naive_backups, args.backups))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if anything failed)."""
    args = parse_args(argv)
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "started_utc": started.isoformat(),
        "params": {
            "trades": args.trades,
            "backups": args.backups,
            "naive_backups": None if args.skip_naive else args.naive_backups,
            "seed": args.seed,
            "quick": args.quick,
            "backup_type": BACKUP_TYPE,
        },
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "tmp_filesystem": _filesystem_of(tempfile.gettempdir()),
            "loadavg_start": _loadavg(),
        },
        "other_tools": {},
        "results": {},
    }

    first = TradingDay(args.trades, args.seed)
    first.step()
    first_state = first.state()

    plan: list[tuple[str, Callable[[Path], Impl], int]] = [("ours", open_ours, args.backups)]
    if not args.skip_encrypted:
        plan.append(("ours+enc", open_ours_encrypted, args.backups))
    if not args.skip_naive:
        plan.append(("naive", open_naive, args.naive_backups))
    failed = False
    for name, opener, backups in plan:
        try:
            spec = DaySpec(args.trades, backups, args.seed)
            report["results"][name] = run_day(name, opener, spec, args.backups, first_state)
            failed |= not report["results"][name]["ok"]
        except Exception as exc:  # noqa: BLE001 - an implementation failing is a result
            traceback.print_exc()
            report["results"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
    del first, first_state

    end_day = TradingDay(args.trades, args.seed)
    for _ in range(args.backups):
        end_day.step()
    report["state"] = serialized_size(end_day.state())
    report["floors"] = measure_floors(end_day.state())
    del end_day
    if not args.skip_other_tools:
        report["other_tools"] = run_installed(
            args.trades, args.other_backups, args.backups, args.seed
        )

    ours, naive = report["results"].get("ours"), report["results"].get("naive")
    if ours and naive and "error" not in ours and "error" not in naive:
        report["ratios"] = compute_ratios(ours, naive)
    report["finished_utc"] = datetime.now(UTC).isoformat()
    report["machine"]["loadavg_end"] = _loadavg()
    report["ok"] = not failed

    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2, sort_keys=False)
    (args.out / f"{stamp}.json").write_text(text + "\n")
    (args.out / "latest.json").write_text(text + "\n")
    print(f"\nresults: {args.out / (stamp + '.json')} (and latest.json)")
    print("OK" if not failed else "FAILED: see the checks above")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
