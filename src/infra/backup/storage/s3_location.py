"""Where an S3 store is and how to reach it: the ``s3://bucket/prefix`` grammar and
:class:`S3Options`. Kept apart from the backend so that parsing a configuration never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from src.infra.backup.storage.keys import validate_key

# A locked write's retention date is fixed in the headers of the client that sends it (obstore
# adds no header to one request): objects get ``object_lock_days`` plus at most this much,
# then the store makes the client anew.
OBJECT_LOCK_SLACK = timedelta(hours=1)
OBJECT_LOCK_MODE = "GOVERNANCE"


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket. Credentials left ``None`` come from the usual AWS environment
    variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``) or the instance's role.
    Secrets are excluded from ``repr`` so they cannot reach a log line by accident.

    ``object_lock_days`` (``0``: off): objects written under ``object_lock_keys`` (a key, or a
    prefix ending in ``/``) carry S3 Object Lock retention in governance mode until at least
    that many days after their write; the bucket must have Object Lock enabled (docs/S3.md).
    The repository names the keys (manifests, packs, ``repo.json``); the store knows none."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    timeout: timedelta = timedelta(seconds=30)
    connect_timeout: timedelta = timedelta(seconds=5)
    max_retries: int = 5
    retry_timeout: timedelta = timedelta(minutes=3)
    concurrency: int = 8
    object_lock_days: int = 0
    object_lock_keys: tuple[str, ...] = ()

    def locks(self, key: str) -> bool:
        """Whether an object written under ``key`` gets Object Lock retention."""
        return self.object_lock_days > 0 and any(
            key.startswith(name) if name.endswith("/") else key == name
            for name in self.object_lock_keys
        )

    def object_lock_headers(self, now: datetime) -> dict[str, str]:
        """The headers of a PUT with this retention, from ``now`` (aware): governance mode
        until ``object_lock_days`` plus :data:`OBJECT_LOCK_SLACK` from now, and the SHA-256
        checksum S3 wants on such a PUT (the client sends its ``x-amz-checksum-sha256``)."""
        until = now + timedelta(days=self.object_lock_days) + OBJECT_LOCK_SLACK
        return {
            "x-amz-object-lock-mode": OBJECT_LOCK_MODE,
            "x-amz-object-lock-retain-until-date": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "x-amz-sdk-checksum-algorithm": "SHA256",
        }


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; ``ValueError`` if it is
    not one."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket or not all(c.isalnum() or c in "-." for c in bucket) or len(bucket) < 3:
        raise ValueError(f"{url!r}: invalid bucket name {bucket!r}")
    prefix = prefix.strip("/")
    if prefix:
        validate_key(prefix)
    return bucket, prefix
