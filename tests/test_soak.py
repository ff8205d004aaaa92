"""The soak test (``tools/soak.py``) as part of the suite: a short run here, two minutes in CI.

The length comes from ``$PEAK_SOAK_MINUTES`` (default 0.25); CI sets it to 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MINUTES = float(os.environ.get("PEAK_SOAK_MINUTES", "0.25"))
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
    print(proc.stdout)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["lost"] == 0
    assert summary["corrupt"] == 0
    assert summary["check_clean"] is True
    assert summary["errors"] == 0
    assert summary["operations"]["creates"] > 0
    assert summary["operations"]["restores"] > 0
