"""Run history (status files), `peak-backup status`, the health check, Prometheus metrics and
structured (JSON) logging."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from layout_helpers import object_files
from stored_chunks import is_packed

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.app.outcome import BackupOutcome
from src.infra.backup.errors import BackupError, ConfigError, UnsupportedValueError
from src.infra.backup.format.ids import new_backup_id
from src.infra.backup.format.layout import status_key
from src.infra.backup.monitoring.health import BackupHealthCheck, check_backup_health
from src.infra.backup.monitoring.logging_setup import configure_logging
from src.infra.backup.monitoring.metrics import (
    BackupMetrics,
    instrument,
    metrics_available,
    start_http_server,
    write_textfile,
)
from src.infra.backup.monitoring.status import collect_status
from src.infra.backup.repository.history import (
    current_host,
    read_status,
    record_failure,
    record_verify,
)
from src.infra.backup.repository.snapshot_writer import DataInput
from tests.helpers import run_cli_inline, run_python

CONFIG = """\
[backup]
backup_path = "repo"
retention_days = 0
interval_hours = 24
sources = ["data.txt"]
"""


def stored_size(repo: Path) -> int:
    """Bytes of the objects holding chunks: chunk files, and packs (in a format-2 repository,
    the default: there are some)."""
    files = object_files(repo, ("chunks/", "packs/"))
    assert any(key.startswith("packs/") for key in files) == is_packed(repo)
    return sum(path.stat().st_size for path in files.values())


def _ago(**kwargs: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(**kwargs)


def _backup_made(manager: BackupManager, backup_type: str, when: datetime) -> str:
    """A backup of ``backup_type`` made at ``when`` (a success's record is its manifest)."""
    backup_id = new_backup_id(backup_type, f"{when.astimezone():%Y%m%d_%H%M%S}")
    data = DataInput.from_value("state", {"made": when.isoformat()})
    repository = manager.open_repository(create=True)
    repository.create_snapshot_as(backup_id, when, backup_type, [data])
    return backup_id


@pytest.fixture
def configured_cwd(tmp_path: Path) -> Path:
    """A directory with a config.toml (repository ./repo, one source file)."""
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "data.txt").write_text("positions: BTC 0.1\n")
    return tmp_path


@pytest.fixture
def project_manager(configured_cwd: Path) -> BackupManager:
    """A manager on the repository of ``configured_cwd``."""
    return BackupManager(
        BackupConfig(backup_path=configured_cwd / "repo", retention_days=0, interval_hours=24)
    )


def _status(cwd: Path, *args: str) -> tuple[int, dict[str, object]]:
    result = run_cli_inline("status", "--json", *args, cwd=cwd)
    return result.returncode, json.loads(result.stdout)


# -- run history ------------------------------------------------------------------------------


def test_a_success_is_recorded_by_its_manifest(manager: BackupManager) -> None:
    manager.create_backup({"portfolio": {"equity": 1}}, "pre_trade")
    backup_id = manager.create_backup({"portfolio": {"equity": 10000}}, "pre_trade")
    store = manager.repository.store
    assert not store.exists(status_key(current_host()))  # a success writes no status
    run = manager.repository.read_manifest(backup_id).run
    assert run is not None and run.seconds >= 0 and run.requests["PUT"] >= 1
    success = collect_status(manager).types["pre_trade"].last_success
    assert success is not None and success.backup_id == backup_id  # the newest, not the first
    assert success.size_bytes == manager.get_backup_info(backup_id).size_bytes
    assert success.duration_seconds == run.seconds and success.requests == run.requests
    assert collect_status(manager).types["pre_trade"].last_failure is None


def test_a_status_record_of_an_older_version_still_counts(manager: BackupManager) -> None:
    backup_id = manager.create_backup({"a": 1}, "daily")
    store = manager.repository.store
    newer = datetime.now(timezone.utc) + timedelta(minutes=5)  # e.g. a pruned newer backup
    old_record = {"backup_id": "daily_x", "time": newer.isoformat(), "duration_seconds": 2.5}
    status = {
        "version": 1,
        "host": current_host(),
        "types": {"daily": {"last_success": old_record, "last_failure": None}},
    }
    store.put(status_key(current_host()), json.dumps(status).encode())
    success = collect_status(manager).types["daily"].last_success
    assert success is not None and success.backup_id == "daily_x"
    assert success.duration_seconds == 2.5 and success.requests is None
    store.put(
        status_key(current_host()),
        json.dumps(status).replace(newer.isoformat(), _ago(hours=1).isoformat()).encode(),
    )
    success = collect_status(manager).types["daily"].last_success
    assert success is not None and success.backup_id == backup_id  # the manifest is newer


def _failing(manager: BackupManager) -> BackupManager:
    """A manager on the same repository whose backups fail after opening it (secrets asked
    for, but the repository is not encrypted)."""
    config = replace(manager.config, include_secrets=True, sources=["data.txt"])
    return BackupManager(config)


def test_failed_create_records_failure(manager: BackupManager) -> None:
    manager.create_backup({"a": 1}, "daily")
    with pytest.raises(ConfigError):
        _failing(manager).create_backup({"a": 1}, "daily")
    entry = read_status(manager.repository.store).types["daily"]
    assert entry.last_failure is not None and "ConfigError" in entry.last_failure.error
    assert entry.failing
    summary = collect_status(manager)
    assert summary.failing_types == ["daily"]
    manager.create_backup({"a": 2}, "daily")  # a success after the failure clears it
    assert collect_status(manager).failing_types == []


def test_refused_input_is_not_recorded(manager: BackupManager, repo_dir: Path) -> None:
    manager.create_backup({"a": 1}, "daily")
    record_failure(manager.repository.store, "daily", "an earlier failure")
    before = (repo_dir / status_key(current_host())).read_bytes()
    with pytest.raises(UnsupportedValueError):
        manager.create_backup({"bad": object()}, "daily")
    assert (repo_dir / status_key(current_host())).read_bytes() == before


def test_failure_before_repository_exists_writes_nothing(repo_dir: Path) -> None:
    manager = BackupManager(BackupConfig(backup_path=repo_dir, retention_days=0))
    with pytest.raises(UnsupportedValueError):
        manager.create_backup({"bad": object()})
    assert list(repo_dir.iterdir()) == []  # neither a repository nor a status file
    blocker = repo_dir / "file"
    blocker.write_text("not a directory")
    outcomes: list[BackupOutcome] = []
    manager = BackupManager(BackupConfig(backup_path=blocker / "repo", retention_days=0))
    manager.hooks.append(outcomes.append)
    with pytest.raises(BackupError):  # the repository cannot even be created
        manager.create_backup({"a": 1}, "daily")
    assert [p.name for p in repo_dir.iterdir()] == ["file"]
    assert len(outcomes) == 1 and not outcomes[0].ok and outcomes[0].backup_type == "daily"


def test_status_write_failure_never_fails_a_backup(
    manager: BackupManager, caplog: pytest.LogCaptureFixture
) -> None:
    manager.create_backup({"a": 1})
    path = manager.config.repository_path / status_key(current_host())
    path.parent.mkdir(exist_ok=True)
    path.mkdir()  # the status file cannot be written now
    with caplog.at_level(logging.WARNING):
        backup_id = manager.create_backup({"a": 2})
    assert manager.load_backup(backup_id) == {"a": 2}
    assert not caplog.records  # a success writes no status at all
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError):  # the backup's error
        _failing(manager).create_backup({"a": 3})
    assert any("could not record backup status" in r.getMessage() for r in caplog.records)


def test_hook_errors_never_fail_a_backup(manager: BackupManager) -> None:
    seen: list[BackupOutcome] = []

    def broken(outcome: BackupOutcome) -> None:
        seen.append(outcome)
        raise RuntimeError("hook broke")

    manager.hooks.append(broken)
    backup_id = manager.create_backup({"a": 1})
    assert seen[0].ok and seen[0].backup_id == backup_id and seen[0].size_bytes


def test_verify_is_recorded(manager: BackupManager) -> None:
    backup_id = manager.create_backup({"a": 1})
    recovery = RecoveryManager(manager)
    assert recovery.verify_backup(backup_id)
    verify = read_status(manager.repository.store).last_verify
    assert verify is not None and verify.ok and verify.backup_id == backup_id and verify.full
    # Every object holding chunks goes (chunk files; packs, by default).
    holders = object_files(manager.config.repository_path, ("chunks/", "packs/"))
    assert holders
    for path in holders.values():
        path.unlink()
    assert not recovery.verify_backup(backup_id)
    verify = read_status(manager.repository.store).last_verify
    assert verify is not None and not verify.ok


# -- the status command -------------------------------------------------------------------------


def test_status_fresh_repository(configured_cwd: Path, project_manager: BackupManager) -> None:
    created = run_cli_inline("create", "--type", "daily", cwd=configured_cwd)
    assert created.returncode == 0, created.stderr
    assert run_cli_inline("verify", cwd=configured_cwd).returncode == 0
    code, doc = _status(configured_cwd)
    assert code == 0, doc
    assert doc["ok"] is True and doc["problems"] == []
    daily = doc["types"]["daily"]  # type: ignore[index]
    backup_id = project_manager.list_backups()[0].backup_id
    assert daily["last_success"]["backup_id"] == backup_id
    assert daily["last_success"]["size_bytes"] > 0 and daily["age_seconds"] < 600
    assert daily["last_failure"] is None
    assert doc["repository_size_bytes"] == stored_size(configured_cwd / "repo")
    assert doc["last_verify"]["ok"] is True  # type: ignore[index]
    assert doc["stale_after_seconds"] == 48 * 3600
    text = run_cli_inline("status", cwd=configured_cwd)
    assert text.returncode == 0 and backup_id in text.stdout and "OK" in text.stdout


def test_status_stale_repository(configured_cwd: Path, project_manager: BackupManager) -> None:
    _backup_made(project_manager, "daily", _ago(hours=49))
    code, doc = _status(configured_cwd)
    assert code == 9 and doc["ok"] is False
    assert "stale" in doc["problems"][0]  # type: ignore[index]
    assert _status(configured_cwd, "--max-age", "3d")[0] == 0  # --max-age overrides
    assert _status(configured_cwd, "--max-age", "1h")[0] == 9
    text = run_cli_inline("status", cwd=configured_cwd)
    assert text.returncode == 9 and "stale" in text.stdout
    assert run_cli_inline("status", "--max-age", "soon", cwd=configured_cwd).returncode == 2


def test_status_failed_repository(configured_cwd: Path, project_manager: BackupManager) -> None:
    project_manager.create_backup({"a": 1}, "daily")
    project_manager.create_backup({"a": 1}, "pre_trade")
    record_failure(project_manager.repository.store, "pre_trade", "disk full")
    code, doc = _status(configured_cwd)
    assert code == 9
    assert doc["types"]["pre_trade"]["failing"] is True  # type: ignore[index]
    assert doc["types"]["daily"]["failing"] is False  # type: ignore[index]
    assert any("disk full" in p for p in doc["problems"])  # type: ignore[attr-defined]


def test_status_without_repository(configured_cwd: Path) -> None:
    code, doc = _status(configured_cwd)
    assert code == 9 and doc["repository_exists"] is False
    assert doc["problems"] == ["no successful backup"]


def test_status_counts_backups_made_before_status_existed(
    project_manager: BackupManager,
) -> None:
    backup_id = project_manager.create_backup({"a": 1}, "daily")
    project_manager.repository.store.delete(status_key(current_host()))
    summary = collect_status(project_manager)
    success = summary.types["daily"].last_success
    assert success is not None and success.backup_id == backup_id


# -- health ----------------------------------------------------------------------------------


def test_health_colours(manager: BackupManager) -> None:
    assert check_backup_health(manager).status == "red"  # no backup at all
    backup_id = manager.create_backup({"a": 1}, "daily")
    store = manager.repository.store
    result = check_backup_health(manager)
    assert result.status == "yellow" and "no verify" in result.message  # never verified
    assert RecoveryManager(manager).verify_backup(backup_id)
    result = check_backup_health(manager)
    assert result.status == "green" and result.ok, result.message
    assert result.details["newest_backup_id"] == backup_id

    record_verify(store, backup_id, True, time=_ago(days=8))
    assert check_backup_health(manager).status == "yellow"  # verify too old
    record_verify(store, backup_id, True)
    manager.delete_backup(backup_id, force=True)
    old_id = _backup_made(manager, "daily", _ago(hours=30))
    result = check_backup_health(manager)
    assert result.status == "yellow" and "30.0h old" in result.message  # past the interval
    manager.delete_backup(old_id, force=True)
    _backup_made(manager, "daily", _ago(hours=49))
    assert check_backup_health(manager).status == "red"  # past 2 x interval
    assert check_backup_health(manager, max_age=timedelta(days=3)).status == "yellow"

    backup_id = manager.create_backup({"a": 2}, "daily")
    record_verify(store, backup_id, False)
    assert check_backup_health(manager).status == "red"  # verify failed
    record_verify(store, backup_id, True)
    record_failure(store, "daily", "disk full")
    result = check_backup_health(manager)
    assert result.status == "red" and "disk full" in result.message  # last run failed

    check = BackupHealthCheck(manager)
    assert check.name == "backup" and check.run().status == "red"


# -- metrics ---------------------------------------------------------------------------------


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in {text}")


needs_prometheus = pytest.mark.skipif(
    not metrics_available(), reason="prometheus-client (the metrics extra) is not installed"
)


@pytest.fixture
def instrumented(manager: BackupManager) -> BackupMetrics:
    metrics = instrument(manager)
    manager.create_backup({"a": 1}, "daily")
    manager.create_backup({"a": 2}, "daily")
    with pytest.raises(ConfigError):
        failing = _failing(manager)
        failing.hooks.append(metrics)
        failing.create_backup({"a": 3}, "daily")
    manager.create_backup({"a": 3}, "pre_trade")
    return metrics


def _check_exposition(text: str, manager: BackupManager) -> None:
    assert _sample(text, 'backups_created_total{type="daily"}') == 2
    assert _sample(text, 'backups_created_total{type="pre_trade"}') == 1
    assert _sample(text, 'backups_failed_total{type="daily"}') == 1
    assert _sample(text, 'backup_duration_seconds_count{type="daily"}') == 2
    stamp = _sample(text, 'backup_last_success_timestamp_seconds{type="daily"}')
    assert abs(stamp - time.time()) < 600
    size = stored_size(manager.config.repository_path)
    assert _sample(text, "backup_repository_size_bytes") == size > 0


@pytest.fixture
def server(instrumented: BackupMetrics) -> Iterator[int]:
    httpd, thread = start_http_server(0, instrumented)
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@needs_prometheus
def test_metrics_scraped_over_http(server: int, manager: BackupManager) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    _check_exposition(text, manager)


@needs_prometheus
def test_metrics_textfile(
    instrumented: BackupMetrics, manager: BackupManager, tmp_path: Path
) -> None:
    target = tmp_path / "textfile" / "peak_backup.prom"
    target.parent.mkdir()
    write_textfile(target, instrumented)
    text = target.read_text()
    assert "# TYPE backups_created_total counter" in text
    assert "# TYPE backup_duration_seconds histogram" in text
    _check_exposition(text, manager)
    assert [p.name for p in target.parent.iterdir()] == ["peak_backup.prom"]  # no temp left


@needs_prometheus
def test_metrics_seeded_from_history(manager: BackupManager) -> None:
    manager.create_backup({"a": 1}, "daily")
    metrics = BackupMetrics()
    instrument(manager, metrics)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    stamp = _sample(text, 'backup_last_success_timestamp_seconds{type="daily"}')
    assert abs(stamp - time.time()) < 600


def test_everything_works_without_prometheus_client(repo_dir: Path) -> None:
    script = f"""
import sys
sys.modules["prometheus_client"] = None  # as if not installed
from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.monitoring.health import check_backup_health
from src.infra.backup.monitoring import metrics
manager = BackupManager(BackupConfig(backup_path={str(repo_dir)!r}, retention_days=0))
manager.create_backup({{"a": 1}})
assert check_backup_health(manager).status == "yellow"
assert not metrics.metrics_available()
try:
    metrics.BackupMetrics()
except metrics.MetricsUnavailableError as exc:
    assert "peak-trade-backup[metrics]" in str(exc)
else:
    raise AssertionError("no error")
print("ok")
"""
    result = run_python(script)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# -- logging -----------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(logging.INFO, json_format=True, stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_json_log_lines_carry_structured_fields(
    manager: BackupManager, json_log: io.StringIO
) -> None:
    first = manager.create_backup({"a": 1}, "daily")
    manager.create_backup({"a": 2}, "daily")
    with pytest.raises(UnsupportedValueError):
        manager.create_backup({"bad": object()}, "daily")
    manager.delete_backup(first)
    manager.prune(dry_run=True)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    by_outcome = {line.get("outcome"): line for line in lines if "outcome" in line}
    created = by_outcome["created"]
    assert created["level"] == "INFO" and created["logger"] == "src.infra.backup.app.manager"
    assert created["backup_type"] == "daily" and created["backup_id"].startswith("daily_")
    assert created["size_bytes"] > 0 and created["duration_ms"] >= 0
    failed = by_outcome["failed"]
    assert failed["backup_type"] == "daily" and "backup_id" not in failed
    deleted = by_outcome["deleted"]
    assert deleted["backup_id"] == first and deleted["backup_type"] == "daily"
    assert "duration_ms" in by_outcome["prune_dry_run"]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_cli_log_json(configured_cwd: Path) -> None:
    result = run_cli_inline("--log-json", "-v", "create", "--type", "daily", cwd=configured_cwd)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    created = [line for line in lines if line.get("outcome") == "created"]
    assert created and created[0]["backup_type"] == "daily"
    assert all(not line.strip() or line.startswith("{") for line in result.stderr.splitlines())
