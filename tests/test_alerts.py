"""Alerts that reach a person (``[backup.alerts]``, ``app/alerting.py``, ``monitoring/alerts.py``,
``peak-backup alert``): every format against a real HTTP server on 127.0.0.1, a command target,
incidents that alert once and recover, the rate limit, endpoints that hang or are gone (never
slowing or failing a backup), config errors naming the key, and secrets that never leak.

No test depends on timing: a hanging server is held by an event the test releases, and the
assertions are about order (the backup returned before the server answered), not durations.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.app.alert_settings import parse_alerts
from src.infra.backup.app.alerting import AlertService, default_state_path
from src.infra.backup.app.config import load_backup_config
from src.infra.backup.app.config_sections import parse_hooks
from src.infra.backup.app.scheduler import BackupScheduler
from src.infra.backup.errors import BackupError, ConfigError
from src.infra.backup.format.ids import new_backup_id
from src.infra.backup.monitoring.alerts import PeriodicAlertCheck, evaluate_conditions
from src.infra.backup.repository.snapshot_writer import DataInput
from tests.helpers import run_cli_inline, run_cli_process
from tests.stored_chunks import damage_chunk, stored_chunk_ids

SECRET = "s3cr3t-T0KEN-9f8e7d"
FAIL = [sys.executable, "-c", "raise SystemExit(1)"]


# -- a real HTTP server -------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    body: dict[str, Any]


@dataclass
class Endpoint:
    """A local HTTP server recording every POST; ``status`` is its answer; while ``hold`` is
    clear it answers nothing (``arrived`` is set when a request came in)."""

    port: int
    requests: list[Received] = field(default_factory=list)
    status: int = 200
    hold: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint(0)
    state.hold.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            state.arrived.set()
            state.hold.wait(30)
            state.requests.append(Received(self.path, body))
            self.send_response(state.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            state.answered.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.hold.set()
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alerts(tmp_path: Path, *targets: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"targets": list(targets), "state_file": str(tmp_path / "alerts.json"), **top}


def _manager(repo: Path, alerts: dict[str, Any], **config: Any) -> BackupManager:
    return BackupManager(BackupConfig(backup_path=repo, retention_days=0, alerts=alerts, **config))


def _flushed(manager: BackupManager) -> None:
    assert manager.alerts is not None
    assert manager.alerts.flush(30)


def _fail(manager: BackupManager, backup_type: str = "manual") -> None:
    failing = BackupManager(replace(manager.config, hooks=parse_hooks({"before": [FAIL]})))
    with pytest.raises(BackupError):
        failing.create_backup({"a": 1}, backup_type)
    _flushed(failing)


# -- every format -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["webhook", "telegram", "discord", "slack"])
def test_each_format_reaches_a_local_server(
    kind: str, endpoint: Endpoint, tmp_path: Path, repo_dir: Path
) -> None:
    """A failed backup reaches the target in the target's own message format."""
    if kind == "telegram":
        target = {"format": kind, "token": SECRET, "chat_id": -1001, "api_url": endpoint.url("")}
    else:
        target = {"format": kind, "url": endpoint.url(f"/{SECRET}")}
    manager = _manager(repo_dir, _alerts(tmp_path, target))
    _fail(manager)
    assert len(endpoint.requests) == 1
    got = endpoint.requests[0]
    if kind == "webhook":
        assert got.path == f"/{SECRET}"
        assert got.body["event"] == "backup_failed" and got.body["status"] == "firing"
        assert got.body["incident"] == "backup_failed:manual"
        assert got.body["severity"] == "critical"
        assert "HookError" in got.body["text"] or "failed" in got.body["text"]
        assert {"repository", "host", "time"} <= got.body.keys()
        assert got.body["repository"] == str(repo_dir)
    elif kind == "telegram":
        assert got.path == f"/bot{SECRET}/sendMessage"
        assert got.body["chat_id"] == "-1001" and "ALERT" in got.body["text"]
    elif kind == "discord":
        assert (
            set(got.body) == {"content"} and "backup of type manual failed" in got.body["content"]
        )
    else:
        assert set(got.body) == {"text"} and "backup of type manual failed" in got.body["text"]


def test_command_target_gets_the_alert_on_stdin_and_in_its_environment(
    tmp_path: Path, repo_dir: Path
) -> None:
    out = tmp_path / "alert.out"
    script = (
        "import os, sys; open(sys.argv[1], 'w').write("
        "os.environ['PEAK_ALERT_INCIDENT'] + '\\n' + sys.stdin.read())"
    )
    target = {"format": "command", "command": [sys.executable, "-c", script, str(out)]}
    manager = _manager(repo_dir, _alerts(tmp_path, target))
    _fail(manager, "daily")
    incident, body = out.read_text().split("\n", 1)
    assert incident == "backup_failed:daily"
    assert json.loads(body)["event"] == "backup_failed"


# -- incidents: once, then a recovery ----------------------------------------------------------


def test_failing_twice_alerts_once_and_a_success_recovers(
    endpoint: Endpoint, tmp_path: Path, repo_dir: Path
) -> None:
    """Two managers (as two processes would) share the incident through the state file."""
    alerts = _alerts(tmp_path, {"format": "webhook", "url": endpoint.url()})
    _fail(_manager(repo_dir, alerts))
    _fail(_manager(repo_dir, alerts))
    assert [b["status"] for b in endpoint.bodies()] == ["firing"]
    other = _manager(repo_dir, alerts)
    other.create_backup({"a": 2})
    _flushed(other)
    assert [b["status"] for b in endpoint.bodies()] == ["firing", "recovered"]
    assert endpoint.bodies()[1]["incident"] == "backup_failed:manual"
    other.create_backup({"a": 3})  # nothing open: nothing sent
    _flushed(other)
    assert len(endpoint.requests) == 2


def _config_file(cwd: Path, endpoint: Endpoint, *, failing: bool) -> None:
    hooks = f"[backup.hooks]\nbefore = [{json.dumps(FAIL)}]\n" if failing else ""
    (cwd / "config.toml").write_text(
        '[backup]\nbackup_path = "repo"\nretention_days = 0\nsources = ["data.txt"]\n'
        + hooks
        + '[backup.alerts]\nstate_file = "alerts.json"\n'
        + f'[[backup.alerts.targets]]\nformat = "webhook"\nurl = "{endpoint.url()}"\n'
    )


def test_a_failed_cli_create_alerts_before_its_process_exits(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    """Separate processes: the exit flush sends the alert of a failing ``create``; the second
    failing process sends nothing; the next success sends the recovery."""
    (tmp_path / "data.txt").write_text("positions\n")
    _config_file(tmp_path, endpoint, failing=True)
    for _ in range(2):
        result = run_cli_process("create", cwd=tmp_path)
        assert result.returncode != 0
    assert [b["status"] for b in endpoint.bodies()] == ["firing"]
    _config_file(tmp_path, endpoint, failing=False)
    assert run_cli_process("create", cwd=tmp_path).returncode == 0
    assert [b["status"] for b in endpoint.bodies()] == ["firing", "recovered"]


def test_a_failed_background_backup_alerts(
    endpoint: Endpoint, tmp_path: Path, repo_dir: Path
) -> None:
    alerts = _alerts(tmp_path, {"format": "slack", "url": endpoint.url()})
    manager = _manager(repo_dir, alerts, hooks={"before": [FAIL]})
    handle = manager.start_backup({"a": 1}, "live")
    with pytest.raises(BackupError):
        handle.result(60)
    _flushed(manager)
    (body,) = endpoint.bodies()
    assert "backup of type live failed in the background" in body["text"]


def test_verify_and_check_damage_alert_once(
    endpoint: Endpoint, tmp_path: Path, repo_dir: Path
) -> None:
    alerts = _alerts(tmp_path, {"format": "webhook", "url": endpoint.url()})
    manager = _manager(repo_dir, alerts)
    backup_id = manager.create_backup({"a": list(range(1000))})
    recovery = RecoveryManager(manager)
    assert recovery.verify_backup_report(backup_id).ok
    _flushed(manager)
    assert endpoint.requests == []  # intact, nothing open: nothing to say
    for cid in stored_chunk_ids(repo_dir):
        damage_chunk(repo_dir, cid, "flip")
    for _ in range(2):
        assert not recovery.verify_backup_report(backup_id).ok
    assert not manager.check().clean
    _flushed(manager)
    assert [(b["incident"], b["status"]) for b in endpoint.bodies()] == [
        (f"damage:{backup_id}", "firing"),
        ("damage:repository", "firing"),
    ]
    assert "damaged" in endpoint.bodies()[0]["text"]


# -- overdue and replica lag (alert check) ------------------------------------------------------


def _backup_made(manager: BackupManager, backup_type: str, when: datetime) -> str:
    backup_id = new_backup_id(backup_type, f"{when.astimezone():%Y%m%d_%H%M%S}")
    repository = manager.open_repository(create=True)
    repository.create_snapshot_as(backup_id, when, backup_type, [DataInput.from_value("s", 1)])
    return backup_id


def test_alert_check_alerts_an_overdue_schedule_and_a_lagging_replica(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "repo"\nretention_days = 0\ninterval_hours = 24\n'
        '[backup.offsite]\npath = "replica"\nmax_lag = "1h"\n'
        '[backup.alerts]\nstate_file = "alerts.json"\n'
        f'[[backup.alerts.targets]]\nformat = "webhook"\nurl = "{endpoint.url()}"\n'
    )
    manager = BackupManager(load_backup_config(tmp_path / "config.toml"))
    _backup_made(manager, "automatic", datetime.now(timezone.utc) - timedelta(days=3))
    for _ in range(2):  # the second check finds the same: nothing new is sent
        result = run_cli_inline("alert", "check", "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert list(found["overdue"]) == ["overdue:automatic"]
    assert list(found["replica_lag"]) == [f"replica_lag:{tmp_path / 'replica'}"]
    assert sorted(found["open_incidents"]) == sorted([*found["overdue"], *found["replica_lag"]])
    firing = sorted((b["incident"], b["event"]) for b in endpoint.bodies())
    assert firing == [
        ("overdue:automatic", "overdue"),
        (f"replica_lag:{tmp_path / 'replica'}", "replica_lag"),
    ]
    # A fresh backup, copied to the replica: both clear, and each recovery is sent once.
    manager.create_backup({"a": 1}, "automatic")
    assert manager.flush_offsite(60)
    assert manager.alerts is not None and manager.alerts.flush(30)
    result = run_cli_inline("alert", "check", "--json", cwd=tmp_path)
    assert json.loads(result.stdout)["open_incidents"] == {}
    recovered = sorted(b["incident"] for b in endpoint.bodies() if b["status"] == "recovered")
    assert recovered == sorted(i for i, _ in firing)


def test_the_scheduler_loop_runs_the_alert_check(
    endpoint: Endpoint, tmp_path: Path, repo_dir: Path
) -> None:
    alerts = _alerts(tmp_path, {"format": "webhook", "url": endpoint.url()})
    manager = _manager(repo_dir, alerts, interval_hours=24)
    _backup_made(manager, "automatic", datetime.now(timezone.utc) - timedelta(days=3))
    scheduler = BackupScheduler(manager)
    check = PeriodicAlertCheck(manager)
    scheduler.periodic.append(check)
    scheduler.periodic.append(scheduler.request_stop)  # one turn of the loop
    scheduler.run_forever(catch_up=False)
    check.join(60)
    _flushed(manager)
    assert [b["incident"] for b in endpoint.bodies()] == ["overdue:automatic"]


# -- rate limit, unreachable and hanging endpoints ---------------------------------------------


def test_rate_limit_drops_and_counts(
    endpoint: Endpoint, tmp_path: Path, repo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = _alerts(tmp_path, {"format": "webhook", "url": endpoint.url()}, max_per_hour=2)
    manager = _manager(repo_dir, alerts)
    with caplog.at_level(logging.WARNING):
        for backup_type in ("one", "two", "three"):
            _fail(manager, backup_type)
    assert [b["incident"] for b in endpoint.bodies()] == [
        "backup_failed:one",
        "backup_failed:two",
    ]
    assert "rate-limited" in caplog.text
    state = json.loads((tmp_path / "alerts.json").read_text())
    assert sorted(state["incidents"]) == [f"backup_failed:{t}" for t in ("one", "three", "two")]
    assert list(state["suppressed"].values()) == [1]


def test_a_hanging_endpoint_never_holds_up_a_backup(
    endpoint: Endpoint, tmp_path: Path, repo_dir: Path
) -> None:
    """The server holds every request until the test releases it: the backups (a failure, then
    a success that recovers it) return and the success commits while it has not answered."""
    endpoint.hold.clear()
    alerts = _alerts(tmp_path, {"format": "webhook", "url": endpoint.url(), "timeout": "60s"})
    manager = _manager(repo_dir, alerts)
    failing = BackupManager(replace(manager.config, hooks=parse_hooks({"before": [FAIL]})))
    with pytest.raises(BackupError):
        failing.create_backup({"a": 1})
    assert endpoint.arrived.wait(30)  # the failure's alert is at the server, unanswered
    backup_id = manager.create_backup({"a": 2})  # its recovery goes to the same server
    assert not endpoint.answered.is_set()
    assert manager.list_backups()[0].backup_id == backup_id
    endpoint.hold.set()
    _flushed(failing)
    _flushed(manager)
    # Two managers, two sender threads: the order the held requests are answered in is open.
    assert sorted(b["status"] for b in endpoint.bodies()) == ["firing", "recovered"]


def test_an_unreachable_endpoint_is_logged_without_its_secret(
    tmp_path: Path, repo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{_free_port()}/{SECRET}"
    manager = _manager(repo_dir, _alerts(tmp_path, {"format": "discord", "url": url}))
    with caplog.at_level(logging.WARNING):
        _fail(manager)
        assert manager.create_backup({"a": 1})  # succeeds, its recovery fails to send too
        _flushed(manager)
    assert "not delivered" in caplog.text
    assert SECRET not in caplog.text


def test_an_exiting_process_waits_only_flush_timeout_for_a_hanging_endpoint(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    """A failing ``create`` whose alert the server never answers still exits (after
    ``flush_timeout``), logging that the alert was not sent; the server is held throughout."""
    endpoint.hold.clear()
    (tmp_path / "data.txt").write_text("positions\n")
    _config_file(tmp_path, endpoint, failing=True)
    config = (tmp_path / "config.toml").read_text()
    config = config.replace(
        'state_file = "alerts.json"', 'state_file = "alerts.json"\nflush_timeout = "1s"'
    )
    (tmp_path / "config.toml").write_text(config.replace('url = "', 'timeout = "120s"\nurl = "'))
    result = run_cli_process("create", cwd=tmp_path)
    assert result.returncode != 0
    assert endpoint.arrived.is_set() and not endpoint.answered.is_set()
    assert "alerts not sent within" in result.stderr


def test_send_errors_never_hold_the_token(tmp_path: Path) -> None:
    target = {
        "format": "telegram",
        "token": SECRET,
        "chat_id": 7,
        "api_url": f"http://127.0.0.1:{_free_port()}",
    }
    service = AlertService(parse_alerts(_alerts(tmp_path, target)), "repo")
    ((name, error),) = service.send_test()
    assert name == "telegram#0" and error is not None and "Connection refused" in error
    assert SECRET not in error


# -- alert test, secrets ------------------------------------------------------------------------


def test_alert_test_command_and_secrets_never_shown(
    endpoint: Endpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "telegram.token"
    token_file.write_text(SECRET + "\n")
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "repo"\n'
        '[backup.alerts]\nstate_file = "alerts.json"\n'
        f'[[backup.alerts.targets]]\nname = "ops-chat"\nformat = "telegram"\n'
        f'token_file = "telegram.token"\nchat_id = "42"\napi_url = "{endpoint.url("")}"\n'
        f'[[backup.alerts.targets]]\nformat = "slack"\nurl_env = "SLACK_URL"\n'
    )
    env = {"SLACK_URL": endpoint.url(f"/services/{SECRET}")}
    result = run_cli_inline("alert", "test", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"target": "ops-chat", "format": "telegram", "ok": True, "error": None},
        {"target": "slack#1", "format": "slack", "ok": True, "error": None},
    ]
    assert endpoint.requests[0].path == f"/bot{SECRET}/sendMessage"
    assert "TEST" in endpoint.requests[1].body["text"]
    endpoint.status = 500  # a failing endpoint: named, never with its URL or token
    with caplog.at_level(logging.DEBUG):
        failed = run_cli_inline("alert", "test", cwd=tmp_path, env=env)
        failed_json = run_cli_inline("--log-json", "alert", "test", "--json", cwd=tmp_path, env=env)
    assert failed.returncode == 1 and "HTTP 500" in failed.stdout
    for text in (
        result.stdout,
        result.stderr,
        failed.stdout,
        failed.stderr,
        failed_json.stdout,
        failed_json.stderr,
        caplog.text,
    ):
        assert SECRET not in text


def test_secrets_stay_out_of_repr_and_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TG_TOKEN", SECRET)
    table = {"targets": [{"format": "telegram", "token_env": "TG_TOKEN", "chat_id": 1}]}
    config = BackupConfig(backup_path=tmp_path / "repo", alerts=table)
    assert SECRET not in repr(config) and SECRET not in repr(config.alerts)
    assert SECRET not in repr(AlertService(parse_alerts(table), "repo"))
    bad = [
        {"format": "webhook", "url": f"ftp://host/{SECRET}"},
        {"format": "slack", "url": f"https:///{SECRET}"},
        {"format": "telegram", "token": f"{SECRET} x", "chat_id": 1},
        {"format": "discord", "url": SECRET, "url_env": "X"},
    ]
    for target in bad:
        with pytest.raises(ConfigError) as caught:
            BackupConfig(alerts={"targets": [target]})
        assert SECRET not in str(caught.value)


# -- config errors name the key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "key"),
    [
        ({"format": "webhook", "url": "not a url"}, "[backup.alerts.targets][0].url"),
        ({"format": "webhook", "url": "ftp://example.com/x"}, "[backup.alerts.targets][0].url"),
        ({"format": "slack", "url": "https://"}, "[backup.alerts.targets][0].url"),
        ({"format": "pager", "url": "https://example.com"}, "[backup.alerts.targets][0].format"),
        ({"format": "telegram", "token": "1:abc"}, "[backup.alerts.targets][0].chat_id"),
        (
            {"format": "telegram", "token": "1:abc", "chat_id": 1, "api_url": "file:///x"},
            "[backup.alerts.targets][0].api_url",
        ),
        (
            {"format": "discord", "url": "https://x.example", "url_env": "X"},
            "[backup.alerts.targets][0].url_env",
        ),
        ({"format": "slack", "url_env": "PEAK_NO_SUCH_VAR"}, "[backup.alerts.targets][0].url_env"),
        ({"format": "slack", "url_file": "/nonexistent/f"}, "[backup.alerts.targets][0].url_file"),
        ({"format": "command", "command": "notify"}, "[backup.alerts.targets][0].command"),
        ({"format": "slack", "url": "https://x.example", "events": ["nope"]}, ".events"),
        ({"format": "slack", "url": "https://x.example", "colour": 1}, "unknown key 'colour'"),
    ],
)
def test_config_errors_name_the_key(target: dict[str, Any], key: str, tmp_path: Path) -> None:
    ok = {"format": "webhook", "url": "https://example.com/hook"}
    with pytest.raises(ConfigError) as caught:
        BackupConfig.from_table(
            {"backup_path": "repo", "alerts": {"targets": [target]}}, base_dir=tmp_path
        )
    assert key in str(caught.value)
    with pytest.raises(ConfigError, match=r"targets\]\[1\]"):
        BackupConfig(alerts={"targets": [ok, target]})


def test_config_errors_at_start_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[backup]\n[backup.alerts]\n[[backup.alerts.targets]]\nformat = "webhook"\n'
        'url = "http//broken"\n'
    )
    result = run_cli_inline("list", cwd=tmp_path)
    assert result.returncode == 6
    assert "[backup.alerts.targets][0].url" in result.stderr
    with pytest.raises(ConfigError, match="max_per_hour"):
        BackupConfig(
            alerts={"targets": [{"format": "slack", "url": "https://x.y"}], "max_per_hour": 0}
        )
    with pytest.raises(ConfigError, match=r"\[backup.alerts\].targets"):
        BackupConfig(alerts={"targets": []})


def test_default_state_file_is_one_per_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    first, second = default_state_path("/srv/a"), default_state_path("s3://bucket/a")
    assert first.parent == tmp_path / "state" / "peak-backup" and first != second
    manager = BackupManager(
        BackupConfig(
            backup_path=tmp_path / "repo",
            alerts={"targets": [{"format": "slack", "url": "https://x.example"}]},
        )
    )
    assert manager.alerts is not None
    assert manager.alerts.state_path == default_state_path(str(tmp_path / "repo"))


def test_no_alerts_without_the_table(repo_dir: Path) -> None:
    manager = BackupManager(BackupConfig(backup_path=repo_dir))
    assert manager.alerts is None and manager.hooks == []
    assert evaluate_conditions(manager).overdue == {}


def test_an_unusable_state_file_still_alerts(
    endpoint: Endpoint, tmp_path: Path, repo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    alerts = {
        "targets": [{"format": "webhook", "url": endpoint.url()}],
        "state_file": str(tmp_path / "not-a-dir" / "alerts.json"),
    }
    manager = _manager(repo_dir, alerts)
    with caplog.at_level(logging.WARNING):
        _fail(manager)
    assert [b["status"] for b in endpoint.bodies()] == ["firing"]
    assert "incidents kept in memory" in caplog.text


def test_alert_commands_without_targets_are_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[backup]\nbackup_path = "repo"\n')
    for command in ("test", "check"):
        result = run_cli_inline("alert", command, cwd=tmp_path)
        assert result.returncode == 6 and "[[backup.alerts.targets]]" in result.stderr
