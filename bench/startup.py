"""Start-up cost of the CLI: ``python -m bench.startup`` (part of ``make bench``).

A pre-trade hook or a cron line runs ``peak-backup`` as a whole process, so the time before
the first byte of work counts. This measures, in the same run and alternating so that load
on the machine hits both alike:

- ``python -c pass``: a bare interpreter (the floor);
- ``python -c "import src.infra.backup"``: the package as library code imports it;
- ``peak-backup list`` and ``peak-backup --json list`` on a local repository with a few
  backups (the console script a user runs).

Bytecode is compiled first and ``PYTHONDONTWRITEBYTECODE`` is cleared, as on an installed
system. Prints the median of each and its ratio to the bare interpreter; the target is
``list`` at most 6x the floor. Also reports whether obstore, cryptography and rich were
imported by ``import src.infra.backup`` (they should not be).
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 6.0
HEAVY = ("obstore", "cryptography", "rich", "prometheus_client", "numpy", "pandas")


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.pop("PEAK_TRADE_CONFIG_PATH", None)
    return env


def _time(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("peak-backup")
    return [str(script)] if script.exists() else [sys.executable, "-m", "src.infra.backup"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command")
    args = parser.parse_args()
    compileall.compile_dir(PROJECT / "src", quiet=1)
    env = _environment()
    work = Path(tempfile.mkdtemp(prefix="peak-startup-"))
    try:
        (work / "config.toml").write_text(f'[backup]\nbackup_path = "{work / "backups"}"\n')
        setup = (
            "from src.infra.backup import BackupManager\n"
            "m = BackupManager()\n"
            "for i in range(5): m.create_backup({'portfolio': {'equity': i}}, 'pre_trade')\n"
        )
        subprocess.run(
            [sys.executable, "-c", setup],
            cwd=work,
            env={**env, "PYTHONPATH": str(PROJECT)},
            check=True,
        )
        library_env = {**env, "PYTHONPATH": str(PROJECT)}
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], env),
            "import src.infra.backup": (
                [sys.executable, "-c", "import src.infra.backup"],
                library_env,
            ),
            "peak-backup list": ([*_console_script(), "list"], env),
            "peak-backup --json list": ([*_console_script(), "--json", "list"], env),
        }
        for argv, command_env in commands.values():  # warm the page cache and bytecode
            _time(argv, work, command_env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, (argv, command_env) in commands.items():
                times[name].append(_time(argv, work, command_env))
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, src.infra.backup; "
                f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))",
            ],
            cwd=work,
            env=library_env,
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(times["python -c pass"])
    print(f"CLI start-up ({args.runs} runs each, median; floor = bare interpreter)")
    print(f"{'command':<28}{'median ms':>11}{'min ms':>9}{'x floor':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28}{median * 1000:>11.1f}{min(values) * 1000:>9.1f}{median / floor:>9.1f}")
    ratio = statistics.median(times["peak-backup list"]) / floor
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(
        f"peak-backup list: {ratio:.1f} x a bare interpreter "
        f"(target <= {TARGET_RATIO:g}: {verdict})"
    )
    loaded = probe.stdout.strip()
    print(f"heavy modules loaded by `import src.infra.backup`: {loaded or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
