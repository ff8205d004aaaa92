"""The repository on S3 (a real SeaweedFS): the whole backup cycle, encryption, the CLI without
leaking credentials, two hosts and a pruner on one bucket, and the server dying mid-upload."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.errors import BackupError, ObjectExistsError, StorageError
from src.infra.backup.repository.locks import BACKUP_LEASE_KIND, list_leases, utcnow
from src.infra.backup.storage.s3 import S3Store
from tests.conftest import S3Bucket, create_bucket, start_server
from tests.helpers import PROJECT_ROOT, run_cli_inline
from tools.s3_server import SeaweedS3, free_ports

ZERO = timedelta(0)


def test_backup_cycle_on_s3(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "state").mkdir(parents=True)
    (work / "state" / "portfolio.json").write_text('{"equity": 10000}')
    (work / "config.toml").write_text("[strategy]\nname = 'ma'\n")
    config = s3_bucket.config(sources=["config.toml", "state/"], base_dir=work)
    manager = BackupManager(config)
    history = [{"id": n, "price": n * 1.5} for n in range(20_000)]
    ids = []
    scratch = os.urandom(400_000)  # only the first backup has it: its pack is mostly dead
    for n in range(3):
        history.append({"id": 100_000 + n, "price": 0.5})
        data: dict[str, object] = {"portfolio": {"cash": n}, "history": history}
        if n == 0:
            data["scratch"] = scratch
        ids.append(manager.create_backup(data))
    assert manager.repository.store.location == s3_bucket.url
    fresh = BackupManager(config)
    assert [b.backup_id for b in fresh.list_backups()] == ids[::-1]
    recovery = RecoveryManager(fresh)
    latest = recovery.restore_latest_backup()
    assert latest["portfolio"] == {"cash": 2} and latest["history"] == history
    assert all(recovery.verify_backup(i) for i in ids)
    out = tmp_path / "restored"
    recovery.restore_to_directory(ids[0], out)
    assert (out / "state" / "portfolio.json").read_text() == '{"equity": 10000}'

    fresh.delete_backup(ids[0])
    report = fresh.prune(grace=ZERO)
    assert report.deleted > 0 and report.packs_repacked and report.packs_deleted
    check = fresh.check()
    assert check.backups == 2 and not check.missing_chunks and not check.corrupt_chunks
    assert check.orphaned_chunks == 0


def test_encrypted_repository_on_s3(s3_bucket: S3Bucket) -> None:
    config = s3_bucket.config(encryption="aes-256-gcm")
    manager = BackupManager(config, passphrase="s3 passphrase")
    backup_id = manager.create_backup({"secret_strategy": {"edge": 0.42}}, tags={"k": "v"})
    client = s3_bucket.boto3_client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.name)["Contents"]]
    for key in keys:
        body = client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read()
        assert b"secret_strategy" not in body and b"edge" not in body
    reader = BackupManager(config, passphrase="s3 passphrase")
    assert reader.load_backup(backup_id) == {"secret_strategy": {"edge": 0.42}}


def test_cli_on_s3_never_shows_credentials(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    secret = s3_bucket.server.secret_key
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / "config.toml").write_text(
        f'[backup]\nbackup_path = "{s3_bucket.url}"\nsources = ["data.json"]\n' + s3_bucket.toml()
    )
    outputs = []
    for args in (["create"], ["list", "--json"], ["verify", "--all", "--json"], ["status"]):
        result = run_cli_inline(*args, cwd=tmp_path)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr
    assert "manual_" in outputs[1]
    listed = json.loads(run_cli_inline("list", "--json", cwd=tmp_path).stdout)
    assert len(listed) == 1

    wrong = "WRONG-" + secret
    (tmp_path / "config.toml").write_text(
        (tmp_path / "config.toml").read_text().replace(secret, wrong)
    )
    for args in (["list"], ["create", "--json"], ["-v", "list"]):
        result = run_cli_inline(*args, cwd=tmp_path)
        assert result.returncode != 0
        assert "access denied" in result.stdout + result.stderr
        outputs.append(result.stdout + result.stderr)
    for text in outputs:
        assert secret not in text and s3_bucket.server.access_key not in text


def test_config_errors_never_repeat_a_secret(tmp_path: Path) -> None:
    with pytest.raises(BackupError) as info:
        BackupConfig(backup_path="s3://bucket/x", s3={"secret_access_key": 12345678})
    assert "12345678" not in str(info.value) and "secret_access_key" in str(info.value)
    assert "super-secret" not in repr(
        BackupConfig(backup_path="s3://bucket/x", s3={"secret_access_key": "super-secret"})
    )
    with pytest.raises(BackupError, match="invalid bucket name"):
        BackupConfig(backup_path="s3://x/")


def test_conditional_writes_and_the_fallback(s3_bucket: S3Bucket) -> None:
    store = S3Store(s3_bucket.url, s3_bucket.options)
    assert store.conditional_writes() is True  # SeaweedFS honours If-None-Match: *
    assert list(store.list("locks/")) == []  # the probe cleaned up after itself
    store.put("snapshots/a.json", b"first", exclusive=True)
    with pytest.raises(ObjectExistsError):
        store.put("snapshots/a.json", b"second", exclusive=True)
    # A retried conditional PUT whose first answer was lost finds its own bytes: success.
    store.put("snapshots/a.json", b"first", exclusive=True)

    fallback = S3Store(s3_bucket.url, s3_bucket.options)
    fallback._conditional = False  # as on a server without conditional writes
    fallback.put("snapshots/b.json", b"one", exclusive=True)
    with pytest.raises(ObjectExistsError):
        fallback.put("snapshots/b.json", b"two", exclusive=True)
    assert fallback.get("snapshots/b.json") == b"one"


@pytest.mark.timeout(30)  # a guard only: a hang fails here instead of blocking the suite
def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    """Nothing listens on the endpoint: a StorageError naming the location, after the
    configured retries (the client's message counts them), not a hang and not a client
    exception."""
    (port,) = free_ports(1)
    config = BackupConfig(
        backup_path="s3://peak-bucket/repo",
        s3={
            "endpoint_url": f"http://127.0.0.1:{port}",
            "access_key_id": "AK",
            "secret_access_key": "SK-never-shown",
            "max_retries": 1,
            "retry_timeout": "5s",
            "connect_timeout": "1s",
        },
    )
    with pytest.raises(StorageError, match=r"s3://peak-bucket/repo") as info:
        BackupManager(config).create_backup({"a": 1})
    # The mechanism: the configured retry budget was spent, then the error surfaced.
    assert "after 1 retries, max_retries: 1" in str(info.value), info.value
    assert "SK-never-shown" not in str(info.value)


# -- two hosts and a pruner on one bucket -------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    sys.path.insert(0, os.getcwd())
    from src.infra.backup import BackupConfig, BackupManager
    config, count, log_path = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    manager = BackupManager(BackupConfig(**config))
    host = os.environ["PEAK_BACKUP_HOST"]
    with open(log_path, "a") as log:
        for n in range(count):
            data = {"host": host, "n": n, "blob": [host * 50] * (n + 1)}
            sha = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
            backup_id = manager.create_backup(data, backup_type="pre_trade")
            log.write(json.dumps({"op": "commit", "id": backup_id, "sha": sha}) + "\\n")
            log.flush()
            if n % 4 == 3:
                manager.delete_backup(backup_id)
                log.write(json.dumps({"op": "deleted", "id": backup_id}) + "\\n")
                log.flush()
    print("done")
    """
)

PRUNER = textwrap.dedent(
    """
    import json, os, sys, time
    from datetime import timedelta
    sys.path.insert(0, os.getcwd())
    from src.infra.backup import BackupConfig, BackupManager
    from src.infra.backup.errors import RepositoryBusyError
    config, stop = json.loads(sys.argv[1]), sys.argv[2]
    runs = 0
    while True:  # at least one run, even if the writers are done before it starts
        done = os.path.exists(stop)
        try:
            BackupManager(BackupConfig(**config)).prune(grace=timedelta(0))
            runs += 1
        except RepositoryBusyError:
            pass
        if done and runs:
            break
        time.sleep(0.05)
    print(json.dumps({"runs": runs}))
    """
)


def _child_config(bucket: S3Bucket) -> str:
    options = bucket.options
    return json.dumps(
        {
            "backup_path": bucket.url,
            "retention_days": 0,
            "auto_prune": False,
            "s3": {
                "endpoint_url": options.endpoint_url,
                "region": options.region,
                "access_key_id": options.access_key_id,
                "secret_access_key": options.secret_access_key,
            },
        }
    )


@pytest.mark.timeout(240)
def test_two_hosts_and_a_pruner_share_a_bucket(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    config = _child_config(s3_bucket)
    BackupManager(s3_bucket.config()).create_backup({"seed": 0}, backup_type="pre_trade")
    stop = tmp_path / "stop"
    logs = {host: tmp_path / f"{host}.log" for host in ("host-a", "host-b")}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, config, "16", str(log)],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PEAK_BACKUP_HOST": host},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for host, log in logs.items()
    ]
    pruner = subprocess.Popen(
        [sys.executable, "-c", PRUNER, config, str(stop)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PEAK_BACKUP_HOST": "host-c"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for writer in writers:
        out, err = writer.communicate(timeout=180)
        assert writer.returncode == 0 and out.strip() == "done", err
    stop.touch()
    out, err = pruner.communicate(timeout=60)
    assert pruner.returncode == 0, err
    assert json.loads(out)["runs"] > 0

    manager = BackupManager(s3_bucket.config())
    manager.prune(grace=ZERO)
    expected: dict[str, str] = {}
    for log in logs.values():
        live: dict[str, str] = {}  # a deleted id may be taken again by the other host
        for record in map(json.loads, log.read_text().splitlines()):
            if record["op"] == "commit":
                live[record["id"]] = record["sha"]
            else:
                live.pop(record["id"])
        assert not set(live) & set(expected), "one id live for both hosts"
        expected.update(live)
    listed = {b.backup_id: b for b in manager.list_backups()}
    assert set(expected) <= set(listed)
    assert {listed[i].host for i in expected} == {"host-a", "host-b"}
    for backup_id, sha in expected.items():
        data = manager.load_backup(backup_id)
        assert hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest() == sha
    check = manager.check()
    assert not check.missing_chunks and not check.corrupt_chunks and not check.damaged_manifests
    # What garbage is left sits in packs whose live share is above the repack threshold: a
    # second prune finds nothing to do.
    again = manager.prune(grace=ZERO)
    assert again.packs_collected == 0 and again.deleted == 0, again


# -- the server dies in the middle of an upload --------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def _wait_until_readable(store: S3Store, key: str, seconds: float = 60.0) -> None:
    """After a restart SeaweedFS answers on its port before its volumes serve objects (a GET
    gets 500 for a moment): wait until ``key`` reads."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            store.get(key)
            return
        except StorageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_server_killed_mid_upload(
    tmp_path: Path, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private server is SIGKILLed while a large backup uploads its first pack (with the
    other packs of the same batch in flight): a clear error, nothing partial listed; once it
    is back the next backup completes."""
    server = start_server(SeaweedS3(tmp_path / "private-s3"))
    try:
        bucket = create_bucket(server, "killed-bucket")
        manager = BackupManager(bucket.config())
        first = manager.create_backup({"small": 1})
        store = manager.repository.store
        assert isinstance(store, S3Store)
        real_upload, uploads, killed_at = store._upload, itertools.count(1), []

        def upload(key: str, data: bytes) -> None:  # runs in the store's upload threads
            if next(uploads) == 1:  # the backup's first pack
                server.kill()
                killed_at.append(key)
            real_upload(key, data)

        monkeypatch.setattr(store, "_upload", upload)
        with pytest.raises(StorageError, match="s3://killed-bucket/repo"):
            manager.create_backup({"blob": os.urandom(20 * 1024 * 1024)})  # 3 packs
        assert killed_at, "the server was not killed during the upload"
        server.restart()
        _wait_until_readable(S3Store(bucket.url, bucket.options), "repo.json")
        fresh = BackupManager(bucket.config())
        ids = {b.backup_id for b in fresh.list_backups()}
        assert ids == {first}
        check = fresh.check(read_data=False)
        assert not check.missing_chunks and not check.damaged_manifests
        after = fresh.create_backup({"after": True})
        assert fresh.load_backup(after) == {"after": True}
        assert RecoveryManager(fresh).verify_backup(after)
    finally:
        server.kill()


def test_a_backup_on_s3_leaves_its_lease_to_expire_and_deletes_nothing(
    s3_bucket: S3Bucket,
) -> None:
    """One DELETE less per backup (and nothing to fail for credentials that cannot delete):
    the finished lease is left to expire, its key reused by the next backup; this process no
    longer counts it as live, so its own prune is not held back by it."""
    manager = BackupManager(s3_bucket.config())
    first = manager.create_backup({"n": 1})
    store = manager.repository.store
    before = store.requests()
    manager.create_backup({"n": 2})
    after = store.requests()
    assert after.get("DELETE", 0) == before.get("DELETE", 0)
    (lease,) = list_leases(store, BACKUP_LEASE_KIND)  # one key, used again
    assert lease.record.pid == os.getpid() and not lease.is_live(utcnow())
    manager.delete_backup(first)
    report = manager.prune(grace=ZERO)
    assert not report.postponed, report.postponed
