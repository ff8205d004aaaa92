"""A bot host whose S3 credentials may read, list and write but not delete (issue 16, part 4).

The restricted identity is real on both test servers, and each test first proves that it
cannot delete (a raw delete through the store is refused and the object stays):

- SeaweedFS: its identity actions cannot deny deletes on their own ("Write" includes them), so
  the admin identity sets a bucket policy denying ``s3:DeleteObject`` to the second identity
  of ``tools/s3_server.py`` (``RESTRICTED_USER``); the server applies it to DeleteObject and
  to each key of a DeleteObjects (obstore's delete).
- moto: an IAM user allowed ``s3:*`` and denied ``s3:Delete*`` (a deny of ``s3:DeleteObject``
  alone does not stop a DeleteObjects there, where AWS authorises each key as
  ``s3:DeleteObject``; its bucket policies ignore the principal, so they cannot single out
  one user).

Such a host backs up, lists, verifies, restores and reports its status without a warning;
``prune`` and ``delete`` there fail at once with an error naming the object and saying to run
them from a host with full rights, leaving the bucket exactly as it was; a host with full
rights then prunes the same bucket. Retention configured on the restricted host warns after
each backup it cannot apply, and the backup stands. ``[backup.s3] object_lock_days`` is
tested on SeaweedFS (which supports S3 Object Lock): retention on manifests, packs and
``repo.json``, an overwrite by the restricted host undone from the locked version, and prune
on a locked bucket.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.errors import ConfigError, StorageError
from src.infra.backup.storage.s3 import PROBE_NAME, S3Store
from src.infra.backup.storage.s3_location import OBJECT_LOCK_SLACK, S3Options
from tests.conftest import S3Bucket, create_bucket
from tests.helpers import PROJECT_ROOT, run_cli_inline, run_cli_process
from tests.s3_moto_server import MotoS3
from tools.s3_server import (
    RESTRICTED_ACCESS_KEY,
    RESTRICTED_PRINCIPAL,
    RESTRICTED_SECRET_KEY,
    SeaweedS3,
)

ZERO = timedelta(0)
DENIED = "these credentials may not delete"
ADVICE = "Run prune, retention and delete from a host whose credentials may delete"
PEAK_BACKUP = PROJECT_ROOT / ".venv" / "bin" / "peak-backup"
# moto: everything but deletes (see the module docstring for why s3:Delete*).
NO_DELETE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:Delete*", "Resource": "*"},
    ],
}
# Bucket settings a bot host must not change (SeaweedFS's "Write" action includes them).
BUCKET_SETTINGS = [
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:PutBucketObjectLockConfiguration",
    "s3:DeleteBucket",
]


@dataclass
class Identity:
    """Other credentials on the same server (an ``S3Endpoint``)."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str


@dataclass(frozen=True)
class Hosts:
    """One bucket seen by the pruning host (full rights) and by the bot (no deletes)."""

    full: S3Bucket
    bot: S3Bucket


def deny_deletes_on_seaweedfs(bucket: S3Bucket, *, object_lock: bool = False) -> Hosts:
    """The bucket policy of docs/S3.md that takes deletes from ``RESTRICTED_USER`` (set by
    the admin): no object or version deletes, and none of the bucket settings that would
    undo versioning (SeaweedFS's "Write" grants them); with ``object_lock`` it also allows
    ``s3:PutObjectRetention``, which a PUT with retention headers needs (SeaweedFS asks for
    it as AWS does; "Write" does not grant it)."""
    objects = f"arn:aws:s3:::{bucket.name}/*"
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Deny",
            "Principal": {"AWS": RESTRICTED_PRINCIPAL},
            "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
            "Resource": objects,
        },
        {
            "Effect": "Deny",
            "Principal": {"AWS": RESTRICTED_PRINCIPAL},
            "Action": BUCKET_SETTINGS,
            "Resource": f"arn:aws:s3:::{bucket.name}",
        },
    ]
    if object_lock:
        statements.append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": RESTRICTED_PRINCIPAL},
                "Action": ["s3:PutObjectRetention"],
                "Resource": objects,
            }
        )
    policy = {"Version": "2012-10-17", "Statement": statements}
    bucket.boto3_client().put_bucket_policy(Bucket=bucket.name, Policy=json.dumps(policy))
    server = bucket.server
    bot = Identity(server.endpoint_url, RESTRICTED_ACCESS_KEY, RESTRICTED_SECRET_KEY, server.region)
    return Hosts(bucket, S3Bucket(bot, bucket.name))


@pytest.fixture
def seaweed_hosts(s3_bucket: S3Bucket) -> Hosts:
    return deny_deletes_on_seaweedfs(s3_bucket)


@pytest.fixture(params=["seaweedfs", "moto"])
def hosts(request: pytest.FixtureRequest) -> Hosts:
    """The restricted identity on each server in turn."""
    if request.param == "seaweedfs":
        return deny_deletes_on_seaweedfs(request.getfixturevalue("s3_bucket"))
    bucket: S3Bucket = request.getfixturevalue("moto_s3_bucket")
    server: MotoS3 = request.getfixturevalue("moto_s3_server")
    key, secret = server.add_user(f"bot-{uuid.uuid4().hex[:12]}", NO_DELETE_POLICY)
    bot = Identity(server.endpoint_url, key, secret, server.region)
    return Hosts(bucket, S3Bucket(bot, bucket.name))


def all_keys(bucket: S3Bucket) -> dict[str, str]:
    """Every key in the bucket with its ETag, as the full identity lists it."""
    pages = bucket.boto3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


def prove_deletes_refused(hosts: Hosts) -> None:
    """The restricted identity really cannot delete (else every test here passes vacuously):
    a raw delete through the store and a DeleteObject of boto3 are refused, the object stays;
    the full identity deletes it. Waits a moment for the policy to apply."""
    bot = S3Store(hosts.bot.url, hosts.bot.options)
    full = S3Store(hosts.full.url, hosts.full.options)
    deadline = time.monotonic() + 10
    while True:
        bot.put("proof/object", b"kept")
        try:
            bot.delete("proof/object")
        except StorageError as exc:
            message = str(exc)
            break
        if time.monotonic() > deadline:
            pytest.fail("the restricted identity deletes: the tests here would prove nothing")
        time.sleep(0.2)
    assert f"cannot delete {hosts.bot.url}/proof/object" in message and DENIED in message
    assert bot.get("proof/object") == b"kept"
    with pytest.raises(ClientError) as info:
        hosts.bot.boto3_client().delete_object(Bucket=hosts.bot.name, Key="repo/proof/object")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert full.get("proof/object") == b"kept"
    full.delete("proof/object")  # the pruning host may
    assert not full.exists("proof/object")


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_host_that_cannot_delete_backs_up_and_a_full_host_prunes(
    hosts: Hosts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Backups, listing, verify (values decoded), restores to memory and to a folder on the
    restricted host: no warning, nothing deleted. Its ``prune`` and ``delete`` fail at once,
    clearly, and change nothing. The full host then deletes and prunes: every other backup
    restores, ``check`` is clean, and the bot goes on backing up."""
    prove_deletes_refused(hosts)
    caplog.set_level(logging.INFO)
    work = tmp_path / "work"
    (work / "state").mkdir(parents=True)
    config = hosts.bot.config(sources=["state/"], base_dir=work)
    bot = BackupManager(config)
    history = [{"id": n, "price": n * 1.5} for n in range(5_000)]
    scratch = os.urandom(300_000)  # only the first backup has it: its pack is mostly dead
    expected: dict[str, dict[str, Any]] = {}
    for n in range(3):
        (work / "state" / "positions.json").write_text(f'{{"BTC": {n}}}')
        history.append({"id": 100_000 + n, "price": 0.5})
        data: dict[str, Any] = {"portfolio": {"cash": n}, "history": list(history)}
        if n == 0:
            data["scratch"] = scratch
        expected[bot.create_backup(data, backup_type="pre_trade")] = data
    ids = list(expected)

    fresh = BackupManager(config)  # another process of the bot host
    assert [b.backup_id for b in fresh.list_backups()] == ids[::-1]
    recovery = RecoveryManager(fresh)
    assert all(recovery.verify_backup(i, decode=True) for i in ids)
    assert recovery.restore_latest_backup() == expected[ids[-1]]
    recovery.restore_to_directory(ids[0], tmp_path / "restored", verify=True)
    assert (tmp_path / "restored" / "state" / "positions.json").read_text() == '{"BTC": 0}'
    assert warnings_in(caplog) == []
    # One probe object at most (this identity cannot remove it, and every process probes the
    # same key): never one per process.
    locks = [k for k in all_keys(hosts.full) if k.startswith("repo/locks/probe-")]
    assert locks in ([], [f"repo/locks/probe-{PROBE_NAME}"])

    before = all_keys(hosts.full)
    with pytest.raises(StorageError) as refused:
        fresh.prune(grace=ZERO)
    message = str(refused.value)
    assert message.startswith("prune stopped before it changed anything: cannot delete ")
    assert f"{hosts.bot.url}/locks/prune.delete-probe" in message
    assert DENIED in message and ADVICE in message
    assert all_keys(hosts.full) == before  # no lock, no collection record, nothing moved
    with pytest.raises(StorageError) as refused:
        fresh.delete_backup(ids[0])
    message = str(refused.value)
    # The listing token goes first (catalog.py): its refused delete stops it all.
    assert message.startswith(f"backup {ids[0]} not deleted: cannot delete {hosts.bot.url}/")
    assert DENIED in message and ADVICE in message
    assert all_keys(hosts.full) == before
    assert fresh.load_backup(ids[0]) == expected[ids[0]]

    full = BackupManager(hosts.full.config())
    full.delete_backup(ids[0])
    report = full.prune(grace=ZERO)  # no lock left behind to wait for
    assert report.packs_deleted and report.packs_repacked, report
    check = full.check()
    assert check.clean and check.backups == 2, check
    for backup_id in ids[1:]:
        assert BackupManager(config).load_backup(backup_id) == expected[backup_id]
    caplog.clear()
    after = bot.create_backup({"portfolio": {"cash": 9}}, backup_type="pre_trade")
    assert BackupManager(config).load_backup(after) == {"portfolio": {"cash": 9}}
    assert warnings_in(caplog) == []


def test_the_cli_on_a_host_that_cannot_delete(seaweed_hosts: Hosts, tmp_path: Path) -> None:
    """``peak-backup`` with the restricted identity: create, list, verify, restore, check
    (through the installed entry point, a process of its own), status and a dry-run prune
    exit 0 and print no warning; ``prune`` and ``delete`` exit 1 with the object named and
    the advice, and leave the bucket as it was; the full host's ``prune`` then exits 0."""
    hosts = seaweed_hosts
    prove_deletes_refused(hosts)
    (tmp_path / "positions.json").write_text('{"BTC": 1}')
    base = f'[backup]\nbackup_path = "{hosts.bot.url}"\nsources = ["positions.json"]\n'
    (tmp_path / "config.toml").write_text(base + hosts.bot.toml())

    def quiet(*args: str) -> str:
        result = run_cli_inline(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert result.stderr == "", (args, result.stderr)
        return result.stdout

    quiet("create", "--type", "pre_trade")
    quiet("create", "--type", "pre_trade")
    ids = [b["backup_id"] for b in json.loads(quiet("list", "--json"))]
    assert len(ids) == 2
    quiet("verify", "--all")
    quiet("restore", ids[0], "--target", str(tmp_path / "out"), "--verify")
    assert (tmp_path / "out" / "positions.json").read_text() == '{"BTC": 1}'
    # The installed entry point, in a process of its own (``check`` in-process leaves the S3
    # store's reader threads to the interpreter's exit).
    command = [str(PEAK_BACKUP)] if PEAK_BACKUP.exists() else None
    child = run_cli_process("check", cwd=tmp_path, command=command)
    assert child.returncode == 0 and child.stderr == "", child.stderr
    quiet("status")
    quiet("prune", "--dry-run")

    before = all_keys(hosts.full)
    result = run_cli_inline("prune", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    text = " ".join(result.stderr.split())  # the console wraps long lines
    assert "prune stopped before it changed anything" in text and DENIED in text
    assert "locks/prune.delete-probe" in text and ADVICE in text
    result = run_cli_inline("--json", "prune", cwd=tmp_path)
    error = json.loads(result.stdout)["error"]
    assert result.returncode == 1 and error["type"] == "StorageError" and error["exit_code"] == 1
    assert all_keys(hosts.full) == before
    result = run_cli_inline("delete", ids[0], "--yes", cwd=tmp_path)
    text = " ".join(result.stderr.split())
    assert result.returncode == 1 and f"backup {ids[0]} not deleted" in text and DENIED in text
    assert all_keys(hosts.full) == before
    assert len(json.loads(quiet("list", "--json"))) == 2

    full_dir = tmp_path / "pruner"
    full_dir.mkdir()
    (full_dir / "config.toml").write_text(
        f'[backup]\nbackup_path = "{hosts.full.url}"\n' + hosts.full.toml()
    )
    result = run_cli_inline("prune", "--grace", "0s", cwd=full_dir)
    assert result.returncode == 0, result.stderr


def test_retention_on_a_host_that_cannot_delete_warns_and_the_backup_stands(
    seaweed_hosts: Hosts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retention configured on the restricted host: after the backup it tries the first
    delete, is refused, and logs one warning naming the manifest it could not delete and
    where to run retention; the backup is committed, recorded as a success and exits 0. The
    full host's ``prune`` applies the same policy."""
    hosts = seaweed_hosts
    prove_deletes_refused(hosts)
    caplog.set_level(logging.INFO)
    config = hosts.bot.config(retention={"keep_last": 1})
    bot = BackupManager(config)
    first = bot.create_backup({"n": 1}, backup_type="pre_trade")
    assert warnings_in(caplog) == []  # nothing to forget yet
    second = bot.create_backup({"n": 2}, backup_type="pre_trade")
    (warning,) = warnings_in(caplog)
    assert warning.startswith(f"retention after backup {second} failed: backup {first} not ")
    assert DENIED in warning and ADVICE in warning
    listed = [b.backup_id for b in BackupManager(config).list_backups()]
    assert listed == [second, first]  # the new backup stands, nothing was lost
    assert BackupManager(config).load_backup(second) == {"n": 2}

    (tmp_path / "positions.json").write_text('{"BTC": 1}')
    (tmp_path / "config.toml").write_text(
        f'[backup]\nbackup_path = "{hosts.bot.url}"\nsources = ["positions.json"]\n'
        "[backup.retention]\nkeep_last = 1\n" + hosts.bot.toml()
    )
    result = run_cli_inline("create", cwd=tmp_path)  # a manual backup
    assert result.returncode == 0 and "Backup created" in result.stdout, result.stderr
    text = " ".join(result.stderr.split())
    assert "retention after backup" in text and DENIED in text and ADVICE in text
    assert run_cli_inline("status", cwd=tmp_path).returncode == 0  # a success, not stale

    full = BackupManager(hosts.full.config(retention={"keep_last": 1}))
    assert full.apply_retention(auto_prune=False) == [first]  # the newest of a type stays
    full.prune(grace=ZERO)
    assert sorted(b.backup_type for b in full.list_backups()) == ["manual", "pre_trade"]
    assert full.check().clean


# -- Object Lock ----------------------------------------------------------------------------------


def lock_options(bucket: S3Bucket, days: int) -> S3Options:
    options = bucket.options
    return S3Options(
        endpoint_url=options.endpoint_url,
        region=options.region,
        access_key_id=options.access_key_id,
        secret_access_key=options.secret_access_key,
        max_retries=options.max_retries,
        retry_timeout=options.retry_timeout,
        object_lock_days=days,
    )


def retention_of(bucket: S3Bucket, key: str, version: str | None = None) -> dict[str, Any] | None:
    client = bucket.boto3_client()
    extra = {"VersionId": version} if version else {}
    try:
        answer = client.get_object_retention(Bucket=bucket.name, Key=key, **extra)
    except ClientError:
        return None  # no retention on this object
    retention: dict[str, Any] | None = answer.get("Retention")
    return retention


def test_object_lock_days_is_validated() -> None:
    options = BackupConfig(backup_path="s3://b-1/x", s3={"object_lock_days": 30}).s3_options
    assert options.object_lock_days == 30
    assert options.locks("snapshots/a.json") and options.locks("packs/ab/abcd")
    assert options.locks("repo.json") and not options.locks("repo.json.bak")
    assert not any(map(options.locks, ("locks/backup-1.json", "status/h.json", "index/packs/1")))
    assert not BackupConfig(backup_path="s3://b-1/x").s3_options.locks("packs/ab/abcd")
    again = BackupConfig(backup_path="s3://b-1/x", s3=options).s3_options  # round trip
    assert again.object_lock_days == 30 and again.locks("packs/ab/abcd")
    for bad in (0, -1, "30", 1.5, True, 40_000):
        with pytest.raises(ConfigError, match="object_lock_days"):
            BackupConfig(backup_path="s3://b-1/x", s3={"object_lock_days": bad})


def test_locked_writes_carry_a_retention_date_that_moves_with_time() -> None:
    """The headers of a locked write, and the client that sends them made anew once its date
    is an hour old (so no object is retained less than ``object_lock_days``)."""
    options = S3Options(
        endpoint_url="http://127.0.0.1:1", object_lock_days=2, object_lock_keys=("packs/",)
    )
    assert options.object_lock_headers(datetime(2030, 1, 1, tzinfo=timezone.utc)) == {
        "x-amz-object-lock-mode": "GOVERNANCE",
        "x-amz-object-lock-retain-until-date": "2030-01-03T01:00:00Z",
        "x-amz-sdk-checksum-algorithm": "SHA256",
    }
    store = S3Store("s3://b-1/x", options)  # builds clients, sends nothing
    first = store._client_for("packs/ab/x")
    assert first is not store._client and store._client_for("packs/cd/y") is first
    assert store._client_for("locks/backup-1.json") is store._client
    store._lock_client = (first, time.monotonic() - OBJECT_LOCK_SLACK.total_seconds())
    assert store._client_for("packs/ab/x") is not first


def test_object_lock_on_a_bucket_without_it_is_a_clear_error(s3_bucket: S3Bucket) -> None:
    manager = BackupManager(s3_bucket.config(s3=lock_options(s3_bucket, 1)))
    with pytest.raises(StorageError) as info:
        manager.create_backup({"n": 1})
    message = str(info.value)
    assert f"cannot write {s3_bucket.url}/repo.json" in message
    assert "object_lock_days needs a bucket with Object Lock enabled" in message


def test_object_lock_keeps_what_the_bot_host_overwrites(
    s3_server: SeaweedS3, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``object_lock_days = 1`` on a bucket with Object Lock (SeaweedFS): the restricted host's
    manifests, packs and ``repo.json`` carry governance retention of a day (leases and status
    files none); it may not turn versioning off nor change the lifecycle; when it overwrites a
    manifest and a pack with garbage, ``check`` finds it and the full host puts the locked
    versions back, which no one may delete meanwhile. A prune on the locked bucket deletes
    (delete markers) and the locked versions stay."""
    bucket = create_bucket(s3_server, f"lock-{uuid.uuid4().hex[:16]}", object_lock=True)
    hosts = deny_deletes_on_seaweedfs(bucket, object_lock=True)
    prove_deletes_refused(hosts)
    caplog.set_level(logging.INFO)
    config = hosts.bot.config(s3=lock_options(hosts.bot, 1))
    bot = BackupManager(config)
    started = datetime.now(timezone.utc)
    ids = [
        bot.create_backup({"n": 0, "scratch": os.urandom(200_000)}),
        bot.create_backup({"n": 1, "history": list(range(20_000))}),
    ]
    assert warnings_in(caplog) == []
    keys = all_keys(hosts.full)
    locked = [k for k in keys if k.startswith(("repo/snapshots/", "repo/packs/"))]
    assert len(locked) >= 4 and "repo/repo.json" in keys
    for key in [*locked, "repo/repo.json"]:
        retention = retention_of(hosts.full, key)
        assert retention is not None and retention["Mode"] == "GOVERNANCE", key
        until = retention["RetainUntilDate"]
        assert started + timedelta(days=1) - timedelta(seconds=5) <= until, key
        assert until <= datetime.now(timezone.utc) + timedelta(days=1) + OBJECT_LOCK_SLACK
    for key in keys:
        if key.startswith(("repo/locks/", "repo/status/")):
            assert retention_of(hosts.full, key) is None, key

    # The compromised bot host overwrites a manifest and a pack (PUT is all it needs); it may
    # not turn versioning off nor have old versions expire.
    attacker = hosts.bot.boto3_client()
    expire = {"NoncurrentVersionExpiration": {"NoncurrentDays": 1}, "Status": "Enabled"}
    lifecycle = {"Rules": [{"ID": "x", "Filter": {"Prefix": ""}, **expire}]}
    settings: list[tuple[str, dict[str, Any]]] = [
        ("put_bucket_versioning", {"VersioningConfiguration": {"Status": "Suspended"}}),
        ("put_bucket_lifecycle_configuration", {"LifecycleConfiguration": lifecycle}),
        ("delete_bucket_policy", {}),
    ]
    for method, arguments in settings:
        with pytest.raises(ClientError, match="AccessDenied"):
            getattr(attacker, method)(Bucket=bucket.name, **arguments)
    manifest = f"repo/snapshots/{ids[1]}.json"
    pack = next(k for k in locked if k.startswith("repo/packs/"))
    for key in (manifest, pack):
        attacker.put_object(Bucket=bucket.name, Key=key, Body=b"garbage")
    full = BackupManager(hosts.full.config())
    assert not full.check().clean
    admin = hosts.full.boto3_client()
    for key in (manifest, pack):
        versions = admin.list_object_versions(Bucket=bucket.name, Prefix=key)["Versions"]
        old = next(v for v in versions if not v["IsLatest"] and v["Key"] == key)
        with pytest.raises(ClientError):  # locked: not even the full identity may delete it
            admin.delete_object(Bucket=bucket.name, Key=key, VersionId=old["VersionId"])
        source = {"Bucket": bucket.name, "Key": key, "VersionId": old["VersionId"]}
        admin.copy_object(Bucket=bucket.name, Key=key, CopySource=source)
    full = BackupManager(hosts.full.config())
    assert full.check().clean
    assert full.load_backup(ids[1]) == {"n": 1, "history": list(range(20_000))}

    full.delete_backup(ids[0])
    report = full.prune(grace=ZERO)
    assert report.packs_deleted, report
    assert full.check().clean and [b.backup_id for b in full.list_backups()] == [ids[1]]
    gone = set(locked) - set(all_keys(hosts.full))
    assert f"repo/snapshots/{ids[0]}.json" in gone and any("/packs/" in k for k in gone)
    for key in gone:  # still there underneath, locked, until the retention ends
        versions = admin.list_object_versions(Bucket=bucket.name, Prefix=key)["Versions"]
        assert any(retention_of(hosts.full, key, v["VersionId"]) for v in versions), key
