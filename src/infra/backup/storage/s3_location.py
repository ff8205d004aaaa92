"""Where an S3 store is and how to reach it: the ``s3://bucket/prefix`` grammar and
:class:`S3Options`. Kept apart from the backend so that parsing a configuration never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from src.infra.backup.storage.keys import validate_key


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket. Credentials left ``None`` come from the usual AWS environment
    variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``) or the instance's role.
    Secrets are excluded from ``repr`` so they cannot reach a log line by accident."""

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
