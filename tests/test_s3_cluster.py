"""A multi-process SeaweedFS on loopback (master, volume servers, filer, S3 gateway,
replication 001: every object on two volume servers) loses a volume server mid-run.

With two volume servers, SeaweedFS can no longer place a second copy, so it refuses writes;
reads go on from the surviving copy. Backups go on through ``fallback_path`` and move back
once the cluster is whole again. With three volume servers, writes go on in the cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from tests.conftest import REQUIRE_S3_ENV, create_bucket, port_lock
from tools.s3_server import S3ServerUnavailableError, SeaweedCluster


def start_cluster(path: Path, volumes: int) -> SeaweedCluster:
    cluster = SeaweedCluster(path, volumes=volumes)
    try:
        with port_lock():  # no other test server picks the same free ports meanwhile
            return cluster.start()
    except S3ServerUnavailableError as exc:
        if os.environ.get(REQUIRE_S3_ENV):
            pytest.fail(f"the SeaweedFS cluster is required but did not start: {exc}")
        pytest.skip(f"no SeaweedFS cluster: {exc}")


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[list[SeaweedCluster]]:
    started: list[SeaweedCluster] = []
    yield started
    for cluster in started:  # SIGKILL by PID: the data is thrown away (a clean stop takes 5 s)
        for process in cluster.processes.values():
            process.kill()
        for process in cluster.processes.values():
            process.wait(timeout=30)
        cluster.processes.clear()


def config_for(
    cluster: SeaweedCluster, bucket: str, timeout: str = "60s", **extra: object
) -> BackupConfig:
    """A fresh cluster can take seconds to place its first volumes (more on a loaded machine):
    a long timeout while it is whole, a short one once writes are expected to fail."""
    s3 = {
        "endpoint_url": cluster.endpoint_url,
        "region": cluster.region,
        "access_key_id": cluster.access_key,
        "secret_access_key": cluster.secret_key,
        "timeout": timeout,
        "max_retries": 1,
        "retry_timeout": "120s",
    }
    values: dict[str, object] = {
        "backup_path": f"s3://{bucket}/repo",
        "retention_days": 0,
        "s3": s3,
        **extra,
    }
    return BackupConfig(**values)


def state(n: int) -> dict[str, object]:
    return {"portfolio": {"cash": n}, "blob": os.urandom(200_000)}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_volume_servers_one_lost(tmp_path: Path, cluster_factory: list[SeaweedCluster]) -> None:
    cluster = start_cluster(tmp_path / "cluster", volumes=2)
    cluster_factory.append(cluster)
    create_bucket(cluster, "cluster-bucket")
    fallback_path = str(tmp_path / "fallback")
    config = config_for(cluster, "cluster-bucket", fallback_path=fallback_path)
    manager = BackupManager(config)
    before = {manager.create_backup(state(n)): n for n in range(3)}
    assert not BackupManager(config).fallback_lag().pending  # type: ignore[union-attr]

    cluster.stop_volume(1)
    # Every write now waits for the timeout (twice: one retry), a verify's status record too.
    config = config_for(cluster, "cluster-bucket", "2s", fallback_path=fallback_path)
    manager = BackupManager(config)
    recovery = RecoveryManager(BackupManager(config))
    for backup_id, n in before.items():  # restores go on from the surviving copy
        assert recovery.restore_backup(backup_id)["portfolio"] == {"cash": n}
    assert recovery.verify_backup(next(iter(before)))  # a full read of every chunk, too
    during = manager.create_backup(state(10))  # the cluster refuses writes: the fallback
    fallback = BackupManager(BackupConfig(backup_path=tmp_path / "fallback"))
    assert [b.backup_id for b in fallback.list_backups()] == [during]
    assert fallback.load_backup(during)["portfolio"] == {"cash": 10}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_volume_servers_one_lost(
    tmp_path: Path, cluster_factory: list[SeaweedCluster]
) -> None:
    cluster = start_cluster(tmp_path / "cluster", volumes=3)
    cluster_factory.append(cluster)
    create_bucket(cluster, "cluster-bucket")
    config = config_for(cluster, "cluster-bucket")
    manager = BackupManager(config)
    ids = {manager.create_backup(state(n)): n for n in range(3)}
    cluster.stop_volume(1)
    ids.update({manager.create_backup(state(n)): n for n in range(3, 6)})
    recovery = RecoveryManager(BackupManager(config))
    for backup_id, n in ids.items():
        assert recovery.restore_backup(backup_id)["portfolio"] == {"cash": n}
        assert recovery.verify_backup(backup_id)
    check = BackupManager(config).check()
    assert not check.missing_chunks and not check.corrupt_chunks
