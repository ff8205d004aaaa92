"""``[backup.offsite]`` (background replication to S3 with its own retention, flushed at exit)
and ``fallback_path`` (backups go there while the repository's store fails, and come back
after), against real SeaweedFS servers that are stopped and started again."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.errors import ConfigError
from src.infra.backup.format.values import ENCODING_NAME, encode_value
from src.infra.backup.repository.replication import open_replica
from src.infra.backup.repository.snapshot_writer import DataInput
from src.infra.backup.storage.s3 import S3Store
from tests.conftest import S3Bucket, create_bucket
from tests.helpers import run_cli_inline, run_python
from tools.s3_server import SeaweedS3


def s3_table(bucket: S3Bucket) -> dict[str, Any]:
    options = bucket.options
    return {
        "endpoint_url": options.endpoint_url,
        "region": options.region,
        "access_key_id": options.access_key_id,
        "secret_access_key": options.secret_access_key,
        "max_retries": 1,
        "retry_timeout": "3s",
        "connect_timeout": "1s",
    }


def offsite_manager(tmp_path: Path, bucket: S3Bucket, **offsite: Any) -> BackupManager:
    return BackupManager(
        BackupConfig(
            backup_path=tmp_path / "repo",
            retention_days=0,
            s3=s3_table(bucket),
            offsite={"path": bucket.url, **offsite},
        )
    )


def remote_ids(bucket: S3Bucket) -> list[str]:
    store = S3Store(bucket.url, bucket.options)
    return sorted(k.split("/")[-1].removesuffix(".json") for k in store.list("snapshots/"))


def test_backups_follow_to_the_replica_in_the_background(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    manager = offsite_manager(tmp_path, s3_bucket)
    ids = [manager.create_backup({"portfolio": {"cash": n}}) for n in range(3)]
    assert manager.flush_offsite(30)
    assert remote_ids(s3_bucket) == sorted(ids)
    lag = manager.offsite_lag()
    assert lag is not None and lag.pending == [] and lag.error is None
    remote = BackupManager(BackupConfig(backup_path=s3_bucket.url, s3=s3_table(s3_bucket)))
    assert remote.load_backup(ids[-1]) == {"portfolio": {"cash": 2}}


def test_the_replica_keeps_its_own_retention(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    manager = offsite_manager(tmp_path, s3_bucket, retention={"keep_last": 2})
    ids = []
    for n in range(5):
        ids.append(manager.create_backup({"n": n}))
        assert manager.flush_offsite(30)
    assert remote_ids(s3_bucket) == sorted(ids[-2:])
    assert len(manager.list_backups()) == 5  # the local repository keeps its own
    lag = manager.offsite_lag()
    assert lag is not None and lag.pending == []  # forgotten ones are not "pending"


def test_exit_flushes_pending_uploads(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """A process that backs up and exits at once: the backup still reaches the replica."""
    config = json.dumps(
        {
            "backup_path": str(tmp_path / "repo"),
            "retention_days": 0,
            "s3": s3_table(s3_bucket),
            "offsite": {"path": s3_bucket.url, "flush_timeout": "60s"},
        }
    )
    script = textwrap.dedent(
        """
        import json, sys, os
        sys.path.insert(0, os.getcwd())
        from src.infra.backup import BackupConfig, BackupManager
        manager = BackupManager(BackupConfig(**json.loads(sys.argv[1])))
        print(manager.create_backup({"blob": "x" * 200_000}))
        """
    )
    done = run_python(script, config, timeout=120)
    assert done.returncode == 0, done.stderr
    assert remote_ids(s3_bucket) == [done.stdout.strip()]


@pytest.mark.timeout(240)
def test_replica_down_then_back(tmp_path: Path, s3_server: SeaweedS3) -> None:
    """While the off-site server is down, backups succeed locally and status reports the lag
    (exit 9 once it exceeds max_lag); when it is back, the replicator catches up."""
    server = SeaweedS3(tmp_path / "offsite-s3").start()
    try:
        bucket = create_bucket(server, "offsite-bucket")
        manager = offsite_manager(tmp_path, bucket, max_lag="1s")
        first = manager.create_backup({"n": 0})
        assert manager.flush_offsite(30)
        server.stop()
        started = time.monotonic()
        later = [manager.create_backup({"n": n}) for n in (1, 2)]
        assert time.monotonic() - started < 5  # backups never wait for the replica
        assert not manager.flush_offsite(1)
        lag = manager.offsite_lag()
        assert lag is not None and lag.error
        (tmp_path / "config.toml").write_text(
            f'[backup]\nbackup_path = "{tmp_path / "repo"}"\nretention_days = 0\n'
            "[backup.offsite]\n"
            f'path = "{bucket.url}"\nmax_lag = "1s"\n' + bucket.toml()
        )
        time.sleep(1.2)
        status = run_cli_inline("status", "--json", cwd=tmp_path)
        assert status.returncode == 9, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert any(p.startswith("off-site") for p in report["problems"])

        server.restart()
        assert manager.flush_offsite(60)
        assert remote_ids(bucket) == sorted([first, *later])
        status = run_cli_inline("status", "--json", cwd=tmp_path)
        assert json.loads(status.stdout)["offsite"]["pending_backups"] == 0
    finally:
        server.stop()


@pytest.mark.timeout(240)
def test_fallback_takes_backups_while_the_repository_is_down(tmp_path: Path) -> None:
    """The repository is on S3; its server dies. Backups go to fallback_path, status warns;
    when S3 is back, the next backup syncs the fallback ones back and status is clean."""
    server = SeaweedS3(tmp_path / "primary-s3").start()
    try:
        bucket = create_bucket(server, "primary-bucket")
        config = BackupConfig(
            backup_path=bucket.url,
            retention_days=0,
            s3=s3_table(bucket),
            fallback_path=str(tmp_path / "fallback"),
        )
        manager = BackupManager(config)
        first = manager.create_backup({"n": 0})
        assert (tmp_path / "fallback" / "repo.json").exists()  # prepared as a replica
        server.kill()
        rescued = [manager.create_backup({"n": n}) for n in (1, 2)]
        fallback = BackupManager(BackupConfig(backup_path=tmp_path / "fallback"))
        assert sorted(b.backup_id for b in fallback.list_backups()) == sorted(rescued)
        lag = BackupManager(config).fallback_lag()
        assert lag is not None and sorted(lag.pending) == sorted(rescued)

        server.restart()
        after = manager.create_backup({"n": 3})
        assert manager.flush_fallback(60)
        fresh = BackupManager(config)
        backups = fresh.list_backups()  # rescued ones may carry a new id (same second)
        assert {first, after} <= {b.backup_id for b in backups} and len(backups) == 4
        assert sorted(fresh.load_backup(b.backup_id)["n"] for b in backups) == [0, 1, 2, 3]
        recovery = RecoveryManager(fresh)
        assert all(recovery.verify_backup(b.backup_id) for b in backups)
        lag = fresh.fallback_lag()
        assert lag is not None and lag.pending == []  # moved, not copied: status is clean
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_first_backup_with_the_repository_unreachable(tmp_path: Path) -> None:
    """No repository exists yet and its store is down: the fallback becomes a new repository;
    once the store is back, the repository is created as its replica and receives them."""
    server = SeaweedS3(tmp_path / "late-s3").start()
    try:
        bucket = create_bucket(server, "late-bucket")
        config = BackupConfig(
            backup_path=bucket.url,
            retention_days=0,
            s3=s3_table(bucket),
            fallback_path=str(tmp_path / "fallback"),
        )
        server.kill()
        early = BackupManager(config).create_backup({"early": True})
        server.restart()
        manager = BackupManager(config)
        later = manager.create_backup({"later": True})
        assert manager.flush_fallback(60)
        backups = BackupManager(config).list_backups()
        assert later in {b.backup_id for b in backups} and len(backups) == 2
        loaded = [BackupManager(config).load_backup(b.backup_id) for b in backups]
        assert sorted(map(str, loaded)) == ["{'early': True}", "{'later': True}"]
        assert early  # it may have arrived under a new id if both fell in one second
        primary = BackupManager(config).repository
        assert open_replica(primary, S3Store(bucket.url, bucket.options), create=False)
    finally:
        server.stop()


def test_offsite_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="offsite"):
        BackupConfig(offsite={"pth": "s3://bucket/x"})
    with pytest.raises(ConfigError, match="max_lag"):
        BackupConfig(offsite={"path": "s3://bucket/x", "max_lag": "soon"})
    with pytest.raises(ConfigError, match="keep_lats"):
        BackupConfig(offsite={"path": "s3://bucket/x", "retention": {"keep_lats": 1}})
    with pytest.raises(ConfigError, match="fallback_path must differ"):
        BackupConfig(backup_path="./b", fallback_path="./b")


def test_cli_sync_move_drains_the_fallback(tmp_path: Path) -> None:
    """`sync --from <fallback> --move`: fallback backups arrive (one whose id the repository
    took in the same second arrives under the next id), the fallback is left empty and
    `status` no longer warns."""
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "repo"\nfallback_path = "fallback"\nretention_days = 0\n'
    )
    primary = BackupManager(
        BackupConfig(backup_path=tmp_path / "repo", fallback_path=str(tmp_path / "fallback"))
    )
    first = primary.create_backup({"where": "primary"})
    fallback = BackupManager(BackupConfig(backup_path=tmp_path / "fallback", retention_days=0))
    info = primary.get_backup_info(first)
    stranded = fallback.repository.create_snapshot_as(  # the same id as `first`, other data
        first,
        info.timestamp_utc,
        "manual",
        [DataInput("where", encode_value("fallback"), ENCODING_NAME)],
    ).backup_id
    status = run_cli_inline("status", "--json", cwd=tmp_path)
    assert status.returncode == 9
    assert any(p.startswith("fallback:") for p in json.loads(status.stdout)["problems"])

    moved = run_cli_inline("sync", "--from", "fallback", "--move", "--json", cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report["copied"] == [stranded]
    arrived = report["renamed"][stranded]
    assert arrived == f"{first}_2"
    assert primary.load_backup(arrived) == {"where": "fallback"}
    assert primary.load_backup(first) == {"where": "primary"}
    assert fallback.list_backups() == []
    status = run_cli_inline("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stdout
