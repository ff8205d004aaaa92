"""``sync``: replicas on S3 (a real SeaweedFS) and local directories; only missing blobs are
copied, an interrupted sync (a SIGKILLed process) resumes without re-uploading, damage is
never copied, and `sync --from` brings a lost repository back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from layout_helpers import write_stored
from stored_chunks import is_packed, read_stored, stored_chunk_ids

from src.infra.backup import BackupManager, RecoveryManager
from src.infra.backup.errors import BackupError, InvalidInputError
from src.infra.backup.repository.replication import lag, open_replica, sync
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.local import LocalStore
from src.infra.backup.storage.s3 import S3Store
from tests.conftest import S3Bucket
from tests.factories import fresh_manager
from tests.helpers import MAIN_SCRIPT, cli_env, run_cli_inline

PASSWORD = "sync passphrase"


def make_backups(manager: BackupManager, count: int, start: int = 0) -> list[str]:
    history = [{"n": n, "price": n * 0.25} for n in range(30_000)]
    ids = []
    for n in range(start, start + count):
        history.append({"n": 10**6 + n, "price": 1.0})
        ids.append(manager.create_backup({"portfolio": {"cash": n}, "history": history}))
    return ids


def test_sync_to_s3_copies_only_what_is_missing(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    local = fresh_manager(tmp_path / "repo")
    ids = make_backups(local, 3)
    source = local.repository
    replica = open_replica(source, S3Store(s3_bucket.url, s3_bucket.options), create=True)
    assert lag(source, replica).backups == ids

    first = sync(source, replica, verify=True)
    assert first.copied == ids and first.verified == 3 and first.lag.backups == []
    assert first.blobs_copied == len(replica.chunk_ids())
    assert sync(source, replica).copied == []  # nothing to do

    (new,) = make_backups(local, 1, start=3)
    second = sync(source, replica)
    assert second.copied == [new]
    assert second.blobs_copied <= 4, second  # an append: a tail chunk and a chunk list or two
    remote = BackupManager(s3_bucket.config())
    assert [b.backup_id for b in remote.list_backups()] == [new, *ids[::-1]]
    assert remote.load_backup(new) == local.load_backup(new)


def test_encrypted_replica_holds_only_ciphertext(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    local = fresh_manager(tmp_path / "repo", encryption="aes-256-gcm")
    local = BackupManager(local.config, passphrase=PASSWORD)
    backup_id = local.create_backup({"strategy": {"secret_edge": 0.42}})
    replica = open_replica(local.repository, S3Store(s3_bucket.url, s3_bucket.options), create=True)
    assert sync(local.repository, replica).copied == [backup_id]
    client = s3_bucket.boto3_client()
    for item in client.list_objects_v2(Bucket=s3_bucket.name)["Contents"]:
        body = client.get_object(Bucket=s3_bucket.name, Key=item["Key"])["Body"].read()
        assert b"secret_edge" not in body
    remote = BackupManager(s3_bucket.config(), passphrase=PASSWORD)
    assert remote.load_backup(backup_id) == {"strategy": {"secret_edge": 0.42}}


def test_a_different_repository_is_refused(tmp_path: Path) -> None:
    one, other = fresh_manager(tmp_path / "one"), fresh_manager(tmp_path / "other")
    one.create_backup({"a": 1})
    other.create_backup({"b": 2})
    with pytest.raises(InvalidInputError, match="another repository"):
        open_replica(one.repository, LocalStore(tmp_path / "other"), create=True)


def test_damage_is_never_copied(tmp_path: Path) -> None:
    local = fresh_manager(tmp_path / "repo")
    good, bad = local.create_backup({"good": 1}), local.create_backup({"bad": 2})
    blob_ids = local.repository.blob_sizes(local.repository.read_manifest(bad))
    shared = local.repository.blob_sizes(local.repository.read_manifest(good))
    (victim,) = [cid for cid in blob_ids if cid not in shared]
    repo = tmp_path / "repo"
    assert is_packed(repo)  # the default format: the blob is in a pack
    data = bytearray(read_stored(repo, victim))
    data[-1] ^= 0xFF  # the blob's last byte, where it is stored
    write_stored(repo, victim, bytes(data))
    replica = open_replica(local.repository, LocalStore(tmp_path / "replica"), create=True)
    with pytest.raises(BackupError, match=victim[:16]):
        sync(local.repository, replica)
    assert replica.snapshot_ids() == [good]  # copied before the damaged one; nothing partial
    stored = stored_chunk_ids(tmp_path / "replica")
    assert stored and victim not in stored  # neither packed nor loose


@pytest.mark.timeout(240)
def test_interrupted_sync_resumes_without_reuploading(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """A `sync` process SIGKILLed mid-copy; the next run copies exactly the blobs the bucket
    still lacks, and only complete backups are ever listed there."""
    local = fresh_manager(tmp_path / "repo")
    ids = [local.create_backup({"blob": os.urandom(6 * 1024 * 1024), "n": n}) for n in range(6)]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[backup]\nbackup_path = "{tmp_path / "repo"}"\nretention_days = 0\n' + s3_bucket.toml()
    )
    proc = subprocess.Popen(
        [sys.executable, str(MAIN_SCRIPT), "sync", "--to", s3_bucket.url],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    store = S3Store(s3_bucket.url, s3_bucket.options)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(store.list("snapshots/"))) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)

    replica = open_replica(local.repository, store, create=False)
    listed = replica.snapshot_ids()
    assert 2 <= len(listed) < len(ids), "the kill should land mid-sync"
    for backup_id in listed:  # whatever is listed is complete
        assert replica.verify_snapshot(backup_id).ok
    present = replica.chunk_ids()
    needed: set[str] = set()
    for backup_id in ids:
        needed.update(local.repository.blob_sizes(local.repository.read_manifest(backup_id)))
    report = sync(local.repository, replica, verify=True)
    assert report.blobs_copied == len(needed - present)  # nothing uploaded twice
    assert sorted(report.copied + listed) == sorted(ids)
    assert report.lag.backups == []


def test_cli_sync_dry_run_json_and_sync_from(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """`sync --dry-run` shows the lag, `sync --to` copies, and after the local repository is
    lost `sync --from` brings it back and `restore` works."""
    (tmp_path / "state.json").write_text('{"equity": 1}')
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "repo"\nsources = ["state.json"]\n' + s3_bucket.toml()
    )
    for _ in range(2):
        assert run_cli_inline("create", cwd=tmp_path).returncode == 0
    dry = run_cli_inline("sync", "--to", s3_bucket.url, "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert len(json.loads(dry.stdout)["backups"]) == 2
    assert not S3Store(s3_bucket.url, s3_bucket.options).exists("repo.json")  # wrote nothing

    done = run_cli_inline("sync", "--to", s3_bucket.url, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["copied"]) == 2 and report["lag"]["backups"] == []
    text = run_cli_inline("sync", "--to", s3_bucket.url, cwd=tmp_path)
    assert "up to date" in text.stdout
    assert s3_bucket.server.secret_key not in done.stdout + text.stdout + text.stderr

    (tmp_path / "repo").rename(tmp_path / "lost")
    back = run_cli_inline("sync", "--from", s3_bucket.url, cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert "Synced 2 backups" in back.stdout
    (tmp_path / "state.json").write_text('{"equity": 0}')
    restored = run_cli_inline("restore", "--in-place", cwd=tmp_path, input="y\n")
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "state.json").read_text() == '{"equity": 1}'
    assert RecoveryManager(fresh_manager(tmp_path / "repo")).verify_backup(report["copied"][-1])


def test_sync_between_local_directories(tmp_path: Path) -> None:
    local = fresh_manager(tmp_path / "repo")
    ids = make_backups(local, 2)
    replica = open_replica(local.repository, LocalStore(tmp_path / "usb"), create=True)
    assert sync(local.repository, replica).copied == ids
    opened = Repository.open(LocalStore(tmp_path / "usb"), create=False)
    assert opened.config.repository_id == local.repository.config.repository_id
    assert fresh_manager(tmp_path / "usb").load_backup(ids[-1]) == local.load_backup(ids[-1])
