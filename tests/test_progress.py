"""Progress people can read (issue 17, part 5): a rich bar on a terminal, JSON status lines
with ``--json`` (on stderr, so the JSON result on stdout stays one document), nothing when
stderr is not a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup.cli import output
from tests.helpers import PROJECT_ROOT, cli_env, run_cli_inline

CONFIG = """[backup]
backup_path = "repo"
retention_days = 0
sources = ["data/"]
"""

MAIN = PROJECT_ROOT / "src" / "infra" / "backup" / "__main__.py"


def cli_with(setting: str) -> str:
    """``python -c`` code running the CLI with one setting of ``cli/output.py`` changed."""
    return (
        f"import sys, runpy; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
        f"import src.infra.backup.cli.output as o; o.{setting}; "
        "sys.argv = ['peak-backup', *sys.argv[1:]]; "
        f"runpy.run_path({str(MAIN)!r}, run_name='__main__')"
    )


# The bar shown at once (no 1 s delay): the pty test checks text, not timing.
NO_DELAY = cli_with("BAR_DELAY = 0")
TO_OUT = ("--target", "out", "--json")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    data = root / "data"
    data.mkdir(parents=True)
    for i in range(12):  # 12 files of 256 KiB, incompressible enough to be real work
        (data / f"f{i:02d}.bin").write_bytes(os.urandom(256 * 1024))
    (data / "small.json").write_text('{"equity": 1}\n')
    (root / "config.toml").write_text(CONFIG)
    return root


def status_lines(stderr: str) -> list[dict[str, Any]]:
    lines = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            value = json.loads(line)  # every JSON line parses
            if value.get("message_type") == "status":
                lines.append(value)
    return lines


def check_monotone_and_final(lines: list[dict[str, Any]], action: str) -> dict[str, Any]:
    assert lines, "no status lines"
    assert {line["action"] for line in lines} == {action}
    done = [line["bytes_done"] for line in lines]
    assert done == sorted(done)
    percents = [line["percent_done"] for line in lines if line["percent_done"] is not None]
    assert percents == sorted(percents) and all(0 <= p <= 1 for p in percents)
    final = lines[-1]
    assert final.get("done") is True and final["percent_done"] == 1.0
    assert final["total_bytes"] == final["bytes_done"] or final["total_bytes"] >= 0
    assert sum(1 for line in lines if line.get("done")) == 1
    return final


def test_json_lines_of_every_command_parse_and_end_at_100_percent(project: Path) -> None:
    created = run_cli_inline("create", "--json", cwd=project)
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backup_id"]  # stdout: still one JSON document
    final = check_monotone_and_final(status_lines(created.stderr), "create")
    assert final["total_bytes"] == final["bytes_done"] == 12 * 256 * 1024 + 14
    runs = [
        ("restore", ["restore", backup_id, "--target", "out", "--json"]),
        ("verify", ["verify", backup_id, "--json"]),
        ("verify", ["verify", "--read-data-subset", "1/1", "--json"]),
        ("check", ["check", "--json"]),
        ("export", ["export", backup_id, "--to", "exports", "--json"]),
        ("sync", ["sync", "--to", str(project / "replica"), "--json"]),
    ]
    for action, args in runs:
        result = run_cli_inline(*args, cwd=project)
        assert result.returncode == 0, (action, result.stderr)
        json.loads(result.stdout)
        final = check_monotone_and_final(status_lines(result.stderr), action)
        assert final["bytes_done"] > 0, action
    # sync: the total is the stored bytes the replica lacks, reached exactly
    result = run_cli_inline("sync", "--to", str(project / "replica2"), "--json", cwd=project)
    report, final = json.loads(result.stdout), status_lines(result.stderr)[-1]
    assert final["total_bytes"] == final["bytes_done"] == report["bytes_copied"] > 0
    # in place: the total is what will be written (one changed file)
    (project / "data" / "f03.bin").write_bytes(b"changed")
    in_place = run_cli_inline("restore", backup_id, "--in-place", "--json", cwd=project)
    assert in_place.returncode == 0, in_place.stderr
    final = check_monotone_and_final(status_lines(in_place.stderr), "restore")
    assert final["total_bytes"] == final["bytes_done"] == 256 * 1024
    # a known total: the restore's is the backup's logical size, reached exactly
    restored = run_cli_inline("restore", backup_id, "--target", "out2", "--json", cwd=project)
    final = status_lines(restored.stderr)[-1]
    assert final["total_bytes"] == final["bytes_done"] == 12 * 256 * 1024 + 14


def test_json_lines_between_start_and_end_are_monotone(
    project: Path,
) -> None:
    created = run_cli_inline("create", "--json", cwd=project)
    backup_id = json.loads(created.stdout)["backup_id"]
    result = subprocess.run(  # a line per callback
        [sys.executable, "-c", cli_with("JSON_INTERVAL = 0"), "restore", backup_id, *TO_OUT],
        cwd=project,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = status_lines(result.stderr)
    assert len(lines) >= 10  # the first, one per chunk or value, the final
    assert lines[0]["bytes_done"] == 0
    assert any(0 < line["percent_done"] < 1 for line in lines[1:-1] if line["percent_done"])
    assert all(line["total_bytes"] == 12 * 256 * 1024 + 14 for line in lines[1:])
    remaining = [line["seconds_remaining"] for line in lines[1:-1]]
    assert all(r is None or r >= 0 for r in remaining)
    check_monotone_and_final(lines, "restore")


def test_json_lines_are_bounded_to_four_a_second(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = output.ProgressReporter("verify", "json", 10_000_000)
    started = time.monotonic()
    reporter.start()
    for _ in range(20_000):
        reporter(10)
        if time.monotonic() - started > 0.6:
            break
    elapsed = time.monotonic() - started
    reporter.finish(succeeded=True)
    lines = status_lines(capsys.readouterr().err)
    assert len(lines) <= 2 + int(elapsed / output.JSON_INTERVAL) + 1
    assert lines[-1]["done"] and lines[-1]["percent_done"] == 1.0


def test_failure_prints_no_final_line(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = output.ProgressReporter("restore", "json", 100)
    reporter.start()
    reporter(50)
    reporter.finish(succeeded=False)
    assert not any(line.get("done") for line in status_lines(capsys.readouterr().err))


def _run_on_pty(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; what the terminal showed."""
    master, slave = pty.openpty()
    env = cli_env({"TERM": "xterm-256color", "COLUMNS": "120"})
    env.pop("NO_COLOR", None)
    child = subprocess.Popen(
        [sys.executable, "-c", NO_DELAY, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif child.poll() is not None:
            break
    os.close(master)
    assert child.stdout is not None
    child.stdout.read()
    return child.wait(timeout=60), seen.decode(errors="replace")


def test_terminal_shows_a_bar_with_bytes_rate_and_eta(project: Path) -> None:
    created = run_cli_inline("create", "--json", cwd=project)
    backup_id = json.loads(created.stdout)["backup_id"]
    code, shown = _run_on_pty(["restore", backup_id, "--target", "out"], project)
    assert code == 0, shown
    assert "restore" in shown and "ETA" in shown
    assert "━" in shown  # rich's bar
    assert "MiB" in shown or "KiB" in shown  # bytes done / total
    assert "/s" in shown or "?" in shown  # the rate column


def test_not_a_terminal_shows_nothing(project: Path) -> None:
    created = run_cli_inline("create", "--json", cwd=project)
    backup_id = json.loads(created.stdout)["backup_id"]
    result = subprocess.run(
        [sys.executable, "-c", NO_DELAY, "restore", backup_id, "--target", "out"],
        cwd=project,
        capture_output=True,
        text=True,
        env=cli_env({"TERM": "xterm-256color"}),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "Restored" in result.stdout and "ETA" not in result.stdout
