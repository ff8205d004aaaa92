"""The repository on the second S3 implementation (moto's server mode in its own process, IAM
enforced: ``tests/s3_moto_server.py``): a whole backup cycle, credentials refused, and the
conditional-write probe of :class:`S3Store` checked against what each server really does, on
moto and on SeaweedFS. ``tests/storage/test_s3_moto.py`` runs the store contract there."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from src.infra.backup import BackupManager, RecoveryManager
from src.infra.backup.errors import ObjectExistsError, StorageError
from src.infra.backup.storage.s3 import S3Store
from src.infra.backup.storage.s3_location import S3Options
from tests.conftest import S3Bucket

ZERO = timedelta(0)


def _keys(bucket: S3Bucket) -> set[str]:
    """Every key in the bucket, as another client sees it (boto3, paginated)."""
    pages = bucket.boto3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def test_backup_cycle_on_moto(moto_s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Create (values and a file), list, restore, verify, delete and prune on moto."""
    work = tmp_path / "work"
    (work / "state").mkdir(parents=True)
    position = work / "state" / "positions.json"
    config = moto_s3_bucket.config(sources=["state/"], base_dir=work)
    manager = BackupManager(config)
    history = [{"id": n, "price": n * 1.5} for n in range(20_000)]
    ids = []
    scratch = os.urandom(400_000)  # only the first backup has it: its pack is mostly dead
    for n in range(3):
        position.write_text(f'{{"BTC": {n}}}')
        history.append({"id": 100_000 + n, "price": 0.5})
        data: dict[str, object] = {"portfolio": {"cash": n}, "history": history}
        if n == 0:
            data["scratch"] = scratch
        ids.append(manager.create_backup(data))
    assert manager.repository.store.location == moto_s3_bucket.url

    fresh = BackupManager(config)  # a new process's view: everything comes from the server
    listed = fresh.list_backups()
    assert [b.backup_id for b in listed] == ids[::-1]
    assert all("state/positions.json" in b.files for b in listed)
    recovery = RecoveryManager(fresh)
    latest = recovery.restore_latest_backup()
    assert latest["portfolio"] == {"cash": 2} and latest["history"] == history
    assert fresh.load_backup(ids[0])["history"] == history[:20_001]
    assert all(recovery.verify_backup(i) for i in ids)
    out = tmp_path / "restored"
    recovery.restore_to_directory(ids[0], out, verify=True)
    assert (out / "state" / "positions.json").read_text() == '{"BTC": 0}'

    fresh.delete_backup(ids[0])
    assert [b.backup_id for b in fresh.list_backups()] == ids[:0:-1]
    before = _keys(moto_s3_bucket)
    report = fresh.prune(grace=ZERO)
    assert report.deleted > 0
    after = _keys(moto_s3_bucket)
    assert report.packs_repacked and report.packs_deleted  # its live chunks were copied out
    assert len(before - after) >= report.packs_deleted  # gone from the server, not unlisted
    check = fresh.check()
    assert check.backups == 2 and not check.missing_chunks and not check.corrupt_chunks
    assert check.orphaned_chunks == 0 and not check.damaged_manifests
    assert RecoveryManager(BackupManager(config)).restore_backup(ids[1])["portfolio"] == {"cash": 1}


def test_moto_refuses_a_wrong_secret(moto_s3_bucket: S3Bucket) -> None:
    """IAM is enforced on the moto server: a wrong secret is access denied, never shown."""
    options = moto_s3_bucket.options
    wrong = S3Options(
        endpoint_url=options.endpoint_url,
        region=options.region,
        access_key_id=options.access_key_id,
        secret_access_key="WRONG-" + str(options.secret_access_key),
        max_retries=0,
    )
    store = S3Store(moto_s3_bucket.url, wrong)
    with pytest.raises(StorageError, match="access denied") as info:
        store.put("x", b"x")
    assert str(options.secret_access_key) not in str(info.value)
    assert store.location == moto_s3_bucket.url


# -- the conditional-write probe, on both servers -----------------------------------------------


@pytest.fixture(params=["seaweedfs", "moto"])
def any_s3_bucket(request: pytest.FixtureRequest) -> S3Bucket:
    """A fresh bucket on each of the two S3 implementations in turn."""
    fixture = {"seaweedfs": "s3_bucket", "moto": "moto_s3_bucket"}[request.param]
    bucket: S3Bucket = request.getfixturevalue(fixture)
    return bucket


def _put_status(client: Any, bucket: S3Bucket, key: str, body: bytes, **extra: Any) -> int:
    try:
        answer = client.put_object(Bucket=bucket.name, Key=key, Body=body, **extra)
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return int(answer["ResponseMetadata"]["HTTPStatusCode"])


def test_conditional_write_probe_matches_the_server(any_s3_bucket: S3Bucket) -> None:
    """The probe's answer is what the server really does with ``If-None-Match: *``, asked
    first with another client (boto3); exclusive puts then refuse an existing key, whoever
    wrote it, and leave its bytes alone."""
    bucket = any_s3_bucket
    client = bucket.boto3_client()
    assert _put_status(client, bucket, "truth", b"one", IfNoneMatch="*") == 200
    second = _put_status(client, bucket, "truth", b"two", IfNoneMatch="*")
    assert second in (200, 412)
    honours = second == 412
    assert client.get_object(Bucket=bucket.name, Key="truth")["Body"].read() == (
        b"one" if honours else b"two"
    )

    store = S3Store(bucket.url, bucket.options)
    before = _keys(bucket)
    assert store.conditional_writes() is honours
    assert honours, "both test servers honour If-None-Match: * (412 on an existing key)"
    assert _keys(bucket) == before  # the probe object is gone again
    assert store.conditional_writes() is True  # remembered: no second probe

    store.put("snapshots/a.json", b"first", exclusive=True)
    with pytest.raises(ObjectExistsError):
        store.put("snapshots/a.json", b"second", exclusive=True)
    assert store.get("snapshots/a.json") == b"first"
    # A key another client wrote is refused the same way.
    client.put_object(Bucket=bucket.name, Key="repo/snapshots/b.json", Body=b"other")
    with pytest.raises(ObjectExistsError):
        store.put("snapshots/b.json", b"mine", exclusive=True)
    assert store.get("snapshots/b.json") == b"other"
    # A retried conditional PUT whose first answer was lost meets its own bytes: success.
    store.put("snapshots/a.json", b"first", exclusive=True)
