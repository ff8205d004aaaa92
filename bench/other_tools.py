"""restic and borg on the trading-day workload, where they are installed.

Neither backs up Python values, so each backup first writes the state as files (one
``<key>.json`` per top-level key, as a user of those tools would), then runs the tool on that
folder; both times are reported. restic runs with ``--compression auto``, borg with ``lz4``
(their defaults for this kind of use), each on a fresh repository, both with encryption off
where the tool allows it (restic always encrypts). ``backups`` of the day are run and the
repository size is extrapolated to the full day (the first backup, plus the average of the
later ones for every further backup), marked as such.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.workload import TradingDay

PASSWORD = "bench"


def write_state(state: dict[str, Any], folder: Path) -> None:
    """The state as ``<key>.json`` files, fsync'ed (what the tools then back up)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in state.items():
        path = folder / f"{key}.json"
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(value, handle, default=str)
            handle.flush()
            os.fsync(handle.fileno())


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} {argv[1]} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Tool:
    """How to drive one tool: init, backup a folder, list, restore the latest."""

    def __init__(self, name: str, repo: Path) -> None:
        self.name, self.repo = name, repo
        self.env = {
            "RESTIC_PASSWORD": PASSWORD,
            "BORG_PASSPHRASE": "",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }
        self.count = 0

    def init(self) -> None:
        if self.name == "restic":
            _run(["restic", "-r", str(self.repo), "init"], self.env)
        else:
            _run(["borg", "init", "--encryption=none", str(self.repo)], self.env)

    def backup(self, folder: Path) -> None:
        self.count += 1
        if self.name == "restic":
            argv = ["restic", "-r", str(self.repo), "backup", "--compression", "auto", "-q", "."]
        else:
            argv = ["borg", "create", "--compression", "lz4", f"{self.repo}::b{self.count}", "."]
        subprocess.run(
            argv, cwd=folder, env={**os.environ, **self.env}, check=True, capture_output=True
        )

    def list(self) -> int:
        if self.name == "restic":
            out = _run(["restic", "-r", str(self.repo), "snapshots", "--json"], self.env)
        else:
            out = _run(["borg", "list", "--json", str(self.repo)], self.env)
            return len(json.loads(out)["archives"])
        return len(json.loads(out))

    def restore_latest(self, target: Path) -> dict[str, Any]:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if self.name == "restic":
            _run(
                ["restic", "-r", str(self.repo), "restore", "latest", "--target", str(target)],
                self.env,
            )
        else:
            subprocess.run(
                ["borg", "extract", f"{self.repo}::b{self.count}"],
                cwd=target,
                env={**os.environ, **self.env},
                check=True,
                capture_output=True,
            )
        return {p.stem: json.loads(p.read_text()) for p in target.glob("*.json")}


def run_tool(name: str, trades: int, backups: int, full_day: int, seed: int) -> dict[str, Any]:
    """Replay ``backups`` of the day with one tool; sizes extrapolated to ``full_day``."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir="/tmp"))
    try:
        tool = Tool(name, work / "repo")
        tool.init()
        day = TradingDay(trades, seed)
        folder = work / "state"
        write_ms: list[float] = []
        tool_ms: list[float] = []
        first_size = 0
        for index in range(backups):
            day.step()
            state = day.state()
            started = time.perf_counter()
            write_state(state, folder)
            written = time.perf_counter()
            tool.backup(folder)
            write_ms.append((written - started) * 1000)
            tool_ms.append((time.perf_counter() - written) * 1000)
            if index == 0:
                first_size = _du(tool.repo)
        size = _du(tool.repo)
        # The first backup stores everything, each later one what changed: extrapolate that.
        per_backup = (size - first_size) / max(1, backups - 1)
        list_ms = _timed(tool.list)
        restore_ms = _timed(lambda: tool.restore_latest(work / "restored"))
        total = [w + t for w, t in zip(write_ms, tool_ms, strict=True)]
        return {
            "backups": backups,
            "write_files_p50_ms": statistics.median(write_ms),
            "tool_p50_ms": statistics.median(tool_ms),
            "backup_p50_ms": statistics.median(total),
            "repo_bytes_measured": size,
            "repo_bytes_full_day": first_size + per_backup * (full_day - 1),
            "list_ms": list_ms,
            "restore_latest_ms": restore_ms,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def run_installed(trades: int, backups: int, full_day: int, seed: int) -> dict[str, Any]:
    """Results per tool, or why it was not run."""
    results: dict[str, Any] = {}
    for name in ("restic", "borg"):
        if shutil.which(name) is None:
            results[name] = {"skipped": "not installed"}
            continue
        print(f"[{name}] {backups} backups ...", flush=True)
        try:
            results[name] = run_tool(name, trades, backups, full_day, seed)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            results[name] = {"error": str(exc)}
    return results
