"""The soak test (``tools/soak.py``) as part of the suite: a short run that proves the
mechanism (concurrent create/restore/delete/prune, workers SIGKILLed and restarted, the final
check); ``make soak MINUTES=N`` is the long run.

The length comes from ``$PEAK_SOAK_MINUTES`` (default 0.4: 24 s of work, a SIGKILL every 2 to
6 s, then the stop and the verification).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MINUTES = float(os.environ.get("PEAK_SOAK_MINUTES", "0.4"))
KILL_EVERY = 4.0  # seconds, jittered 0.5-1.5x: the first kill comes within 6 s
# The run itself, stopping the workers (up to ~45 s), and the final verification.
TIMEOUT = int(MINUTES * 60 * 2 + 300)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_soak_run_is_clean(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    env = {key: value for key, value in os.environ.items() if key != "PEAK_TRADE_CONFIG_PATH"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.soak",
            "--minutes",
            str(MINUTES),
            "--workers",
            "3",
            "--kill-every",
            str(KILL_EVERY),
            "--workdir",
            str(tmp_path / "soak"),
            "--json",
            str(summary_path),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT - 10,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["lost"] == 0
    assert summary["corrupt"] == 0
    assert summary["check_clean"] is True
    assert summary["errors"] == 0
    operations = summary["operations"]
    assert operations["creates"] > 0 and operations["restores"] > 0, operations
    assert operations["deletes"] > 0, operations
    assert operations["prunes"] + operations["prune_busy"] > 0, operations
    # Workers were SIGKILLed and came back, and the repository still checked clean.
    assert summary["kills"] > 0 and summary["restarts"] >= summary["kills"], summary
