"""The outcome tallies of two test modules, as figures for the team note.

The tests assert the mechanisms; this script runs the same workloads and prints what they
counted:

* ``faults``: ``tests/test_faults.py`` with every fault kind at every write step
  (``$PEAK_FAULTS_FULL=1``; the suite samples the long runs of identical steps), then per
  operation: write steps, faults injected per kind, unclean repositories, faults absorbed after
  the commit point, backups committed despite an error, prune locks left behind, problems;
* ``fuzz``: ``tests/test_fuzz_parsers.py``, then the outcome counts of every fuzz target.

Usage::

    python -m bench.tallies [faults] [fuzz]      # both by default

Runs pytest in this process (the counts live in the test modules' globals). Exit status: that
of the pytest runs (non-zero if a test failed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

TESTS = Path(__file__).resolve().parents[1] / "tests"


def run_module(test_file: Path) -> tuple[int, ModuleType | None]:
    """Run one test module with pytest in this process; (exit code, the imported module)."""
    code = pytest.main(["-q", "-p", "no:cacheprovider", str(test_file)])
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == str(test_file):
            return int(code), module
    return int(code), None


def fault_totals() -> int:
    os.environ["PEAK_FAULTS_FULL"] = "1"
    code, module = run_module(TESTS / "test_faults.py")
    totals = getattr(module, "TOTALS", {})
    print("\n[faults] every kind at every write step; totals per operation:")
    for name, total in totals.items():
        print(
            f"  {name}: {total.steps} write steps, {sum(total.injected.values())} faults "
            f"injected {dict(total.injected)}, unclean repositories: {total.unclean}, "
            f"absorbed after commit: {total.absorbed}, "
            f"committed despite an error: {total.new_after_error}, "
            f"prune locks left behind: {len(total.lock_leaks)}, problems: {len(total.problems)}"
        )
        for line in total.lock_leaks:
            print(f"    lock left behind: {line}")
        for problem in total.problems:
            print(f"    PROBLEM {problem}")
    injected = sum(sum(t.injected.values()) for t in totals.values())
    unclean = sum(t.unclean for t in totals.values())
    print(f"  all: {injected} faults injected, {unclean} unclean repositories")
    return code


def fuzz_totals() -> int:
    code, module = run_module(TESTS / "test_fuzz_parsers.py")
    print("\n[fuzz] outcomes per target:")
    for target, counts in getattr(module, "TALLY", {}).items():
        print(f"  {target}: {dict(counts)}")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tallies", description=__doc__)
    parser.add_argument("which", nargs="*", help="faults, fuzz (default: both)")
    which = parser.parse_args(argv).which or ["faults", "fuzz"]
    if set(which) - {"faults", "fuzz"}:
        parser.error(f"unknown: {sorted(set(which) - {'faults', 'fuzz'})}")
    codes = [fault_totals() if name == "faults" else fuzz_totals() for name in which]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
