"""``scheduler.py`` and ``peak-backup run``: due times, catch-up, backoff, one at a time,
signals (one real process), and the systemd unit files of docs/SCHEDULING.md."""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.app.scheduler import BackupScheduler
from src.infra.backup.errors import BackupError, ConfigError
from src.infra.backup.monitoring.metrics import metrics_available
from tests.helpers import MAIN_SCRIPT, cli_env, run_cli_inline

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)


class FakeManager:
    """Records create_backup calls; fails the first ``fail`` calls; no real repository."""

    def __init__(self, config: BackupConfig, clock: FakeClock, fail: int = 0) -> None:
        self.config = config
        self.clock = clock
        self.fail = fail
        self.calls: list[tuple[str, dict[str, str] | None, datetime]] = []
        self.active = 0
        self.max_active = 0

    def create_backup(self, data: Any, backup_type: str, **kw: Any) -> str:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.calls.append((backup_type, kw.get("tags"), self.clock()))
            self.clock.now += timedelta(seconds=5)  # a backup takes time
            if self.fail:
                self.fail -= 1
                raise BackupError("disk on fire")
            return f"{backup_type}_{len(self.calls)}"
        finally:
            self.active -= 1

    def get_backup_info(self, backup_id: str) -> Any:
        raise BackupError("no info")


def _scheduler(config: BackupConfig, clock: FakeClock, manager: Any, **kw: Any) -> BackupScheduler:
    return BackupScheduler(manager, config=config, clock=clock, sleep=clock.sleep, **kw)


START = datetime(2026, 1, 7, 12, 0)  # a Wednesday


def test_due_times_interval_daily_weekly() -> None:
    clock = FakeClock(START)
    config = BackupConfig(interval_hours=6, daily_at="02:00", weekly="sun 03:00")
    sched = _scheduler(config, clock, FakeManager(config, clock))
    due = {job.name: job.next_run for job in sched.jobs}
    assert due == {
        "interval": START + timedelta(hours=6),
        "daily": datetime(2026, 1, 8, 2, 0),
        "weekly": datetime(2026, 1, 11, 3, 0),
    }
    types = {job.name: (job.backup_type, job.tags) for job in sched.jobs}
    assert types["interval"] == ("automatic", {})
    assert types["daily"] == ("scheduled", {"schedule": "daily"})
    assert types["weekly"] == ("scheduled", {"schedule": "weekly"})


def test_loop_runs_jobs_when_due_one_at_a_time() -> None:
    clock = FakeClock(START)
    config = BackupConfig(interval_hours=6, daily_at="02:00", weekly="sun 03:00")
    manager = FakeManager(config, clock)
    sched = _scheduler(config, clock, manager)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= datetime(2026, 1, 11, 4, 0):
            sched.request_stop()

    sched.sleep = sleep
    sched.run_forever(catch_up=False)
    assert manager.max_active == 1
    assert all(seconds <= 0.5 for seconds in clock.sleeps)
    scheduled = [(t, tags, when) for t, tags, when in manager.calls if t == "scheduled"]
    assert [when.strftime("%a %H:%M") for _, _, when in scheduled] == [
        "Thu 02:00",
        "Fri 02:00",
        "Sat 02:00",
        "Sun 02:00",
        "Sun 03:00",
    ]
    assert scheduled[-1][1] == {"schedule": "weekly"}
    automatic = [when for t, _, when in manager.calls if t == "automatic"]
    assert automatic[0] == START + timedelta(hours=6)
    assert len(automatic) == 14  # every 6 h from Wed 18:00 to Sun 00:00 (+ time taken)
    # never two at once: each call starts after the previous one's 5 s
    starts = [when for _, _, when in manager.calls]
    assert all(b - a >= timedelta(seconds=5) for a, b in itertools.pairwise(starts))


def test_backoff_retries_and_never_kills_the_loop() -> None:
    clock = FakeClock(START)
    config = BackupConfig(interval_hours=24)
    manager = FakeManager(config, clock, fail=5)
    sched = _scheduler(config, clock, manager, backoff_initial=30, backoff_max=120)
    assert [sched.backoff(n) for n in range(1, 6)] == [30, 60, 120, 120, 120]

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(manager.calls) >= 7:
            sched.request_stop()

    sched.sleep = sleep
    sched.run_forever(catch_up=False)
    times = [when for _, _, when in manager.calls]
    gaps = [round((b - a).total_seconds()) for a, b in itertools.pairwise(times)]
    # each gap = backup time (5 s) + backoff; after success the regular 24 h period resumes
    assert gaps[:5] == [35, 65, 125, 125, 125]
    assert [r.ok for r in sched.results][:6] == [False] * 5 + [True]
    assert times[6] - times[0] > timedelta(hours=23)


def test_unexpected_exception_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(START)
    config = BackupConfig(interval_hours=1)
    manager = FakeManager(config, clock)

    def boom(*a: Any, **kw: Any) -> str:
        raise RuntimeError("bug")

    manager.create_backup = boom  # type: ignore[method-assign]
    sched = _scheduler(config, clock, manager, backoff_initial=1, backoff_max=1)
    result = sched.run_job(sched.jobs[0])
    assert not result.ok and "RuntimeError: bug" in (result.error or "")
    assert sched.jobs[0].retry_at == clock.now + timedelta(seconds=1)
    assert "unexpected error" in caplog.text


def test_catch_up_runs_missed_jobs_once(repo_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "data.txt"
    source.write_text("hello")
    config = BackupConfig(
        backup_path=repo_dir,
        retention_days=0,
        sources=[str(source)],
        interval_hours=6,
        daily_at="02:00",
        weekly="sun 03:00",
    )
    manager = BackupManager(config)
    # nothing yet: the interval job and one scheduled job (daily) catch up; weekly then
    # sees the fresh 'scheduled' success and is not overdue
    sched = BackupScheduler(manager, sleep=lambda s: None)
    results = sched.catch_up()
    assert [(r.job, r.ok) for r in results] == [("interval", True), ("daily", True)]
    assert results[0].size_bytes is not None
    # started again soon after: nothing overdue
    assert BackupScheduler(manager).catch_up() == []
    # 7 hours later the interval job is overdue, the daily one is not
    later = datetime.now() + timedelta(hours=7)
    assert [j.name for j in BackupScheduler(manager, clock=lambda: later).overdue_jobs()] == [
        "interval"
    ]
    two_days = datetime.now() + timedelta(days=2)
    names = [j.name for j in BackupScheduler(manager, clock=lambda: two_days).overdue_jobs()]
    assert names == ["interval", "daily"]


def test_config_validation_of_schedule_keys() -> None:
    assert BackupConfig(daily_at="23:59", weekly="Sunday 00:00").weekly == "Sunday 00:00"
    for key, value in [
        ("daily_at", "24:00"),
        ("daily_at", "2am"),
        ("weekly", "sun"),
        ("weekly", "funday 03:00"),
        ("weekly", "s 03:00"),
    ]:
        with pytest.raises(ConfigError, match=key):
            BackupConfig(**{key: value})


def test_run_refuses_when_disabled(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[backup]\nenabled = false\nbackup_path = "repo"\nsources = ["config.toml"]\n'
    )
    result = run_cli_inline("run", cwd=tmp_path)
    assert result.returncode == 6
    assert "enabled = false" in result.stderr


def test_run_process_sigterm(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("payload")
    (tmp_path / "config.toml").write_text(
        "[backup]\nenabled = true\ninterval_hours = 0.0005\nretention_days = 0\n"
        'backup_path = "repo"\nsources = ["data.txt"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, str(MAIN_SCRIPT), "run"],
        cwd=tmp_path,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        manager = BackupManager(BackupConfig(backup_path=tmp_path / "repo"))
        backups: list[Any] = []
        while time.monotonic() < deadline:
            if (tmp_path / "repo").exists():
                try:
                    backups = BackupManager(
                        BackupConfig(backup_path=tmp_path / "repo")
                    ).list_backups()
                except BackupError:
                    backups = []
            if len(backups) >= 2:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert len(backups) >= 2
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    infos = manager.list_backups()
    assert len(infos) >= 2
    assert {info.backup_type for info in infos} == {"automatic"}
    for info in infos:
        result = run_cli_inline("verify", info.backup_id, cwd=tmp_path)
        assert result.returncode == 0, result.stderr


def _metric(text: str, name: str, backup_type: str | None = None) -> float | None:
    labels = "" if backup_type is None else f'\\{{type="{backup_type}"\\}}'
    match = re.search(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


@pytest.mark.skipif(not metrics_available(), reason="prometheus-client is not installed")
def test_run_process_metrics_port_and_backup_on_exit(tmp_path: Path) -> None:
    """A real ``run --metrics-port 0 --backup-on-exit``: its endpoint serves the counters of
    the backups it made; after SIGTERM it takes one more backup (tagged trigger=exit), exits
    0, and every backup verifies."""
    (tmp_path / "data.txt").write_text("payload")
    (tmp_path / "config.toml").write_text(
        "[backup]\nenabled = true\ninterval_hours = 0.0005\nretention_days = 0\n"
        'backup_path = "repo"\nsources = ["data.txt"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, str(MAIN_SCRIPT), "run", "--metrics-port", "0", "--backup-on-exit"],
        cwd=tmp_path,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 30
        url, text, created = None, "", 0.0
        while time.monotonic() < deadline and created < 2:
            assert proc.poll() is None, "".join(lines)
            found = [
                m
                for line in list(lines)
                if (m := re.search(r"(http://127\.0\.0\.1:\d+/metrics)", line))
            ]
            if found:
                url = found[0].group(1)
                with urllib.request.urlopen(url, timeout=10) as response:
                    text = response.read().decode()
                created = _metric(text, "backups_created_total", "automatic") or 0.0
            time.sleep(0.2)
        assert url is not None and created >= 2, "".join(lines)
        last_success = _metric(text, "backup_last_success_timestamp_seconds", "automatic")
        assert last_success is not None and abs(last_success - time.time()) < 60
        assert (_metric(text, "backup_repository_size_bytes") or 0) > 0
        before_stop = {
            b.backup_id
            for b in BackupManager(BackupConfig(backup_path=tmp_path / "repo")).list_backups()
        }
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    infos = BackupManager(BackupConfig(backup_path=tmp_path / "repo")).list_backups()
    on_exit = [i for i in infos if i.tags.get("trigger") == "exit"]
    assert len(on_exit) == 1 and on_exit[0].backup_id not in before_stop
    assert infos[0].backup_id == on_exit[0].backup_id  # the last one taken
    recovery = RecoveryManager(BackupManager(BackupConfig(backup_path=tmp_path / "repo")))
    for info in infos:
        assert recovery.verify_backup(info.backup_id)


UNITS = sorted((ROOT / "docs" / "systemd").glob("*.*"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    # the units name /usr/local/bin/peak-backup; give systemd-analyze one to find
    copy = tmp_path / unit.name
    text = unit.read_text()
    fake_bin = tmp_path / "peak-backup"
    fake_bin.write_text("#!/bin/sh\n")
    fake_bin.chmod(0o755)
    copy.write_text(text.replace("/usr/local/bin/peak-backup", str(fake_bin)))
    if unit.suffix == ".timer":
        service = unit.with_suffix(".service")
        (tmp_path / service.name).write_text(
            service.read_text().replace("/usr/local/bin/peak-backup", str(fake_bin))
        )
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and "Failed to" in result.stderr and "bus" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()[:200]}")
    problems = [
        line
        for line in result.stderr.splitlines()
        if unit.name in line or "Unknown" in line or "Invalid" in line
    ]
    assert result.returncode == 0 and not problems, result.stderr
