"""Every Python sample and CLI command of the user's seed document, as written.

The samples are copied verbatim from ``shared/seed/000_bf31b758ee39cfd8.txt``. Only the seed's
placeholders are filled: ``[...]`` becomes a small list, helper functions the seed leaves to the
reader (``current_portfolio_state()``, ``execute_trade()``, ...) are defined, the example id
``manual_20251217_214030`` is replaced by a real id where a backup must exist, and the
scheduler's endless ``while True`` loop runs once.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
from seed_config import SEED_BACKUP_TABLE

from tests.helpers import PROJECT_ROOT, run_cli_process

PROGRAMMATIC = """
from src.infra.backup import BackupManager, BackupConfig

# Backup Manager erstellen
config = BackupConfig(
    backup_path="./backups",
    compress=True,
    retention_days=30,
)
manager = BackupManager(config)

# Backup erstellen
data = {
    "portfolio": {
        "positions": [...],
        "equity": 10000,
    },
    "config": {
        "strategy": "ma_crossover",
        "risk_per_trade": 0.01,
    },
}
backup_id = manager.create_backup(data, backup_type="manual")
print(f"Backup created: {backup_id}")

# Backups auflisten
backups = manager.list_backups()
for backup in backups:
    print(f"{backup.backup_id}: {backup.size_bytes} bytes")

# Backup laden
data = manager.load_backup(backup_id)
portfolio = data["portfolio"]
"""

PORTFOLIO = """
portfolio_state = {
    "timestamp": datetime.now().isoformat(),
    "equity": 10000.0,
    "positions": [
        {
            "symbol": "BTC/USD",
            "size": 0.1,
            "entry_price": 50000,
        }
    ],
    "cash": 5000.0,
}

manager.create_backup(
    {"portfolio": portfolio_state},
    backup_type="pre_trade"
)
"""

HISTORY = """
trading_history = {
    "trades": [
        {
            "timestamp": "2025-12-17T10:00:00",
            "symbol": "BTC/USD",
            "side": "buy",
            "size": 0.1,
            "price": 50000,
        }
    ],
    "performance": {
        "total_return": 0.15,
        "sharpe_ratio": 1.8,
    },
}

manager.create_backup(
    {"history": trading_history},
    backup_type="automatic"
)
"""

CONFIGS = """
config_backup = {
    "strategy_config": {
        "name": "ma_crossover",
        "fast_period": 10,
        "slow_period": 30,
    },
    "risk_config": {
        "risk_per_trade": 0.01,
        "max_positions": 2,
    },
}

manager.create_backup(
    {"config": config_backup},
    backup_type="manual"
)
"""

LEARNED = """
learned_data = {
    "patterns": {
        "successful_setups": [...],
        "failed_setups": [...],
    },
    "statistics": {
        "win_rate": 0.65,
        "avg_return": 0.02,
    },
}

manager.create_backup(
    {"learned": learned_data},
    backup_type="automatic"
)
"""

AUTOMATIC_RECOVERY = """
from src.infra.backup import RecoveryManager

recovery = RecoveryManager()

# Neuestes Backup wiederherstellen
data = recovery.restore_latest_backup()
portfolio = data["portfolio"]

# Spezifisches Backup wiederherstellen
data = recovery.restore_backup("manual_20251217_214030")
"""

VERIFY = """
recovery = RecoveryManager()

# Backup verifizieren
is_valid = recovery.verify_backup("manual_20251217_214030")
if is_valid:
    print("Backup is valid")
else:
    print("Backup is corrupted")
"""

ROLLBACK = """
from src.infra.backup import RecoveryManager

def risky_operation():
    try:
        # Backup vor Operation
        manager = BackupManager()
        backup_id = manager.create_backup(
            {"portfolio": current_portfolio_state()},
            backup_type="pre_trade"
        )
        
        # Riskante Operation
        execute_trade()
        
    except Exception as e:
        # Bei Fehler: Rollback
        recovery = RecoveryManager()
        data = recovery.restore_backup(backup_id)
        restore_portfolio_state(data["portfolio"])
        raise
"""

CONFIG_TOML = SEED_BACKUP_TABLE

CONFIG_LOAD = """
from src.core import load_config
from src.infra.backup import BackupConfig, BackupManager

cfg = load_config()

if hasattr(cfg, "backup"):
    backup_config = BackupConfig(
        backup_path=cfg.backup.backup_path,
        compress=cfg.backup.compress,
        retention_days=cfg.backup.retention_days,
    )
    manager = BackupManager(backup_config)
"""

SCHEDULED = """
import schedule
import time
from src.infra.backup import BackupManager

manager = BackupManager()

def create_scheduled_backup():
    data = collect_current_state()
    backup_id = manager.create_backup(data, backup_type="scheduled")
    print(f"Scheduled backup created: {backup_id}")

# Tägliches Backup um 2 Uhr nachts
schedule.every().day.at("02:00").do(create_scheduled_backup)

while True:
    schedule.run_pending()
    time.sleep(3600)  # Check every hour
"""

RETENTION = """
config = BackupConfig(
    retention_days=30,  # Backups älter als 30 Tage löschen
)
manager = BackupManager(config)

# Cleanup wird automatisch bei jedem create_backup() aufgerufen
manager.create_backup(data)
"""

MANUAL_CLEANUP = """
manager = BackupManager()

# Lösche alle Backups älter als 7 Tage
from datetime import datetime, timedelta
cutoff = datetime.now() - timedelta(days=7)

for backup in manager.list_backups():
    if backup.timestamp < cutoff:
        manager.delete_backup(backup.backup_id)
        print(f"Deleted old backup: {backup.backup_id}")
"""

METADATA = """
manager = BackupManager()
backups = manager.list_backups()

for backup in backups:
    print(f"ID: {backup.backup_id}")
    print(f"Type: {backup.backup_type}")
    print(f"Time: {backup.timestamp}")
    print(f"Size: {backup.size_bytes / 1024:.1f} KB")
    print(f"Compressed: {backup.compressed}")
    print(f"Files: {backup.files}")
    print()
"""

TROUBLE_BACKUP = """
try:
    manager.create_backup(data)
except Exception as e:
    logger.error(f"Backup failed: {e}")
    # Fallback: Speichere in temporärem Ordner
"""

TROUBLE_RECOVERY = """
from src.infra.backup import RecoveryError

try:
    data = recovery.restore_backup(backup_id)
except RecoveryError as e:
    logger.error(f"Recovery failed: {e}")
    # Versuche älteres Backup
    backup_id = recovery.get_latest_backup()
    data = recovery.restore_backup(backup_id)
"""


def fill(sample: str) -> str:
    """Fill the seed's ``[...]`` placeholders minimally."""
    return textwrap.dedent(sample).replace("[...]", '[{"symbol": "BTC/USD", "size": 0.1}]')


def run(sample: str, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(fill(sample), "<seed sample>", "exec"), namespace)
    return namespace


@pytest.fixture
def seed_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory as the seed assumes it (``./backups`` relative to it), with the
    project root importable. It is ``tmp_path``: the autouse ``_isolated_cwd`` already changed
    into it and removed $PEAK_TRADE_CONFIG_PATH."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT))
    return tmp_path


def test_programmatic_sample(seed_cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns = run(PROGRAMMATIC, {})
    assert ns["portfolio"] == {"positions": [{"symbol": "BTC/USD", "size": 0.1}], "equity": 10000}
    out = capsys.readouterr().out
    assert f"Backup created: {ns['backup_id']}" in out
    assert f"{ns['backup_id']}: " in out and " bytes" in out
    assert (seed_cwd / "backups" / "snapshots" / f"{ns['backup_id']}.json").is_file()


def test_what_is_backed_up_samples(seed_cwd: Path) -> None:
    from datetime import datetime

    ns = run(PROGRAMMATIC, {})
    ns["datetime"] = datetime
    for sample in (PORTFOLIO, HISTORY, CONFIGS, LEARNED):
        run(sample, ns)
    manager = ns["manager"]
    types = [b.backup_type for b in manager.list_backups()]
    assert sorted(types) == ["automatic", "automatic", "manual", "manual", "pre_trade"]
    learned = manager.load_backup(manager.list_backups("automatic")[0].backup_id)["learned"]
    assert learned["statistics"] == {"win_rate": 0.65, "avg_return": 0.02}
    pre = manager.load_backup(manager.list_backups("pre_trade")[0].backup_id)
    assert pre["portfolio"]["positions"][0]["entry_price"] == 50000


def test_recovery_samples(seed_cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns = run(PROGRAMMATIC, {})
    created = ns["backup_id"]
    sample = AUTOMATIC_RECOVERY.replace("manual_20251217_214030", created)
    ns = run(sample, {})
    assert ns["portfolio"]["equity"] == 10000
    assert ns["data"]["config"]["strategy"] == "ma_crossover"
    # Verify: as written (an id that does not exist is reported, never raised) and a real one.
    run(VERIFY, {"RecoveryManager": ns["RecoveryManager"]})
    assert "Backup is corrupted" in capsys.readouterr().out
    real = VERIFY.replace("manual_20251217_214030", created)
    run(real, {"RecoveryManager": ns["RecoveryManager"]})
    assert "Backup is valid" in capsys.readouterr().out


def test_rollback_sample(seed_cwd: Path) -> None:
    from src.infra.backup import BackupManager

    restored: list[Any] = []
    state = {"equity": 10000.0, "positions": [{"symbol": "BTC/USD", "size": 0.1}]}

    def execute_trade() -> None:
        state["equity"] = -1.0  # the trade corrupts the state, then fails
        raise RuntimeError("exchange rejected the order")

    ns = run(
        ROLLBACK,
        {
            "BackupManager": BackupManager,
            "current_portfolio_state": lambda: dict(state),
            "execute_trade": execute_trade,
            "restore_portfolio_state": restored.append,
        },
    )
    with pytest.raises(RuntimeError, match="exchange rejected"):
        ns["risky_operation"]()
    assert restored == [{"equity": 10000.0, "positions": [{"symbol": "BTC/USD", "size": 0.1}]}]


def test_config_toml_and_loading(seed_cwd: Path) -> None:
    (seed_cwd / "config.toml").write_text(CONFIG_TOML)
    ns = run(CONFIG_LOAD, {})
    manager = ns["manager"]
    assert ns["cfg"].backup.interval_hours == 24
    assert manager.config.retention_days == 30 and manager.config.compress is True
    backup_id = manager.create_backup({"x": 1})
    assert (seed_cwd / "backups" / "snapshots" / f"{backup_id}.json").is_file()


def test_scheduled_sample(seed_cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import schedule

    # The endless loop runs once; the job is run as the scheduler would at 02:00.
    sample = SCHEDULED.replace("while True:", "for _ in range(1):").replace(
        "time.sleep(3600)", "time.sleep(0)"
    )
    ns = run(sample, {"collect_current_state": lambda: {"portfolio": {"equity": 1.0}}})
    try:
        jobs = schedule.get_jobs()
        assert len(jobs) == 1 and jobs[0].at_time is not None
        assert jobs[0].at_time.strftime("%H:%M") == "02:00"
        schedule.run_all()
    finally:
        schedule.clear()
    assert "Scheduled backup created: scheduled_" in capsys.readouterr().out
    assert ns["manager"].list_backups("scheduled")


def test_retention_and_cleanup_samples(seed_cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from src.infra.backup import BackupConfig, BackupManager

    ns = run(
        RETENTION,
        {
            "BackupConfig": BackupConfig,
            "BackupManager": BackupManager,
            "data": {"portfolio": {"equity": 1}},
        },
    )
    assert len(ns["manager"].list_backups()) == 1
    run(MANUAL_CLEANUP, {"BackupManager": BackupManager})
    assert "Deleted old backup" not in capsys.readouterr().out  # nothing is 7 days old
    assert len(BackupManager().list_backups()) == 1


def test_metadata_sample(seed_cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from src.infra.backup import BackupManager

    BackupManager().create_backup({"portfolio": {"equity": 1}, "config": {"a": 1}})
    run(METADATA, {"BackupManager": BackupManager})
    out = capsys.readouterr().out
    assert "ID: manual_" in out and "Type: manual" in out and "Compressed: True" in out
    assert "Files: ['portfolio.json', 'config.json']" in out
    assert " KB" in out


def test_troubleshooting_samples(seed_cwd: Path, caplog: pytest.LogCaptureFixture) -> None:
    from src.infra.backup import BackupManager, RecoveryManager

    logger = logging.getLogger("seed")
    manager = BackupManager()
    good = manager.create_backup({"portfolio": {"equity": 1}})
    # A failing backup is caught by the sample's `except Exception`.
    run(TROUBLE_BACKUP, {"manager": manager, "data": {"bad": object()}, "logger": logger})
    assert "Backup failed:" in caplog.text and 'data["bad"]' in caplog.text
    # A failing restore falls back to the latest backup.
    ns = run(
        TROUBLE_RECOVERY,
        {"recovery": RecoveryManager(), "backup_id": "manual_19990101_000000", "logger": logger},
    )
    assert "Recovery failed:" in caplog.text
    assert ns["backup_id"] == good and ns["data"] == {"portfolio": {"equity": 1}}


S3_SAMPLE = """
import boto3
from pathlib import Path

def upload_to_s3(backup_id: str):
    s3 = boto3.client("s3")
    bucket = "peak-trade-backups"

    backup_dir = Path(f"./backups/{backup_id}")
    for file_path in backup_dir.glob("*"):
        s3_key = f"{backup_id}/{file_path.name}"
        s3.upload_file(str(file_path), bucket, s3_key)

    print(f"Uploaded {backup_id} to S3")

# Nach Backup-Erstellung
manager = BackupManager()
backup_id = manager.create_backup(data)
upload_to_s3(backup_id)
"""


def test_s3_sample(
    seed_cwd: Path,
    s3_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The seed's S3 sample, as written, against the real S3 test server (boto3 reads the
    endpoint and credentials from the standard AWS environment variables).

    It runs and reports the upload, but a backup of this repository format is not a folder
    ``./backups/<id>/`` (it is a manifest plus shared chunks), so the sample's loop finds no
    files to upload. The supported ways off-site are ``backup_path = "s3://..."`` and
    ``peak-backup sync --to s3://...`` (README "Off-site on S3"), tested in test_s3.py."""
    from conftest import create_bucket

    from src.infra.backup import BackupManager

    create_bucket(s3_server, "peak-trade-backups")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    ns = run(S3_SAMPLE, {"BackupManager": BackupManager, "data": {"portfolio": {"equity": 1}}})
    assert f"Uploaded {ns['backup_id']} to S3" in capsys.readouterr().out
    assert BackupManager().load_backup(ns["backup_id"]) == {"portfolio": {"equity": 1}}


def test_seed_cli_commands(seed_cwd: Path) -> None:
    (seed_cwd / "config.toml").write_text(CONFIG_TOML + 'sources = ["config.toml", "state/"]\n')
    (seed_cwd / "state").mkdir()
    (seed_cwd / "state" / "portfolio.json").write_text('{"equity": 10000}\n')

    first = run_cli_process("create", cwd=seed_cwd, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "Backup created: manual_" in first.stdout
    second = run_cli_process("create", cwd=seed_cwd, timeout=120)
    assert second.returncode == 0, second.stderr

    listed = run_cli_process("list", cwd=seed_cwd, timeout=120)
    assert listed.returncode == 0 and listed.stdout.count("manual_") >= 2

    restored = run_cli_process("restore", cwd=seed_cwd, timeout=120)
    assert restored.returncode == 0, restored.stderr
    ids = sorted(p.name for p in (seed_cwd / "restore").iterdir())
    assert len(ids) == 1
    assert (seed_cwd / "restore" / ids[0] / "state" / "portfolio.json").read_text() == (
        '{"equity": 10000}\n'
    )

    other = sorted(p.stem for p in (seed_cwd / "backups" / "snapshots").glob("*.json"))[0]
    specific = run_cli_process("restore", other, cwd=seed_cwd, timeout=120)
    assert specific.returncode == 0, specific.stderr
    assert (seed_cwd / "restore" / other / "config.toml").read_text() == (
        seed_cwd / "config.toml"
    ).read_text()

    deleted = run_cli_process("delete", other, cwd=seed_cwd, input="y\n", timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    assert not (seed_cwd / "backups" / "snapshots" / f"{other}.json").exists()
