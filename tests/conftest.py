"""Shared fixtures: a throw-away repository, a manager on it, and a CLI runner.

Every test runs with its working directory in its own ``tmp_path`` and without
``$PEAK_TRADE_CONFIG_PATH``, so nothing ever picks up the project's own ``config.toml`` or
writes to ``/work/main/backups``.

Temporary directories go to a tmpfs (``/dev/shm``) when there is one with room, unless
``--basetemp``, ``$PYTEST_DEBUG_TEMPROOT`` or ``$TMPDIR`` says otherwise: the code under test
fsyncs every object it writes, which costs milliseconds each on a disk and nothing on a tmpfs
(the calls are still made; what they would protect against, a power cut, no test can show).

Under pytest-xdist (``make test`` runs two workers) each worker is its own session: it starts
its own S3 server on free ports, under a lock so two servers never pick the same port.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.storage.s3_location import S3Options
from tests.helpers import CONFIG_ENV, CliRunner, run_cli_process
from tests.s3_moto_server import MotoS3
from tools.s3_server import S3Endpoint, S3ServerUnavailableError, SeaweedS3

FAST_TEMP_ROOT = Path("/dev/shm")
FAST_TEMP_MIN_FREE = 4 << 30  # room to spare: a whole run writes about 130 MB


def pytest_configure(config: pytest.Config) -> None:
    """Put pytest's temporary directories on a tmpfs, unless told where they go."""
    if config.option.basetemp or {"PYTEST_DEBUG_TEMPROOT", "TMPDIR"} & os.environ.keys():
        return
    try:
        stat = os.statvfs(FAST_TEMP_ROOT)
    except OSError:
        return
    if stat.f_bavail * stat.f_frsize >= FAST_TEMP_MIN_FREE and os.access(FAST_TEMP_ROOT, os.W_OK):
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(FAST_TEMP_ROOT)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow run first (in their collection order, the rest after them in
    theirs): on several workers none of them then starts last and runs on alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in its own temporary directory, without a config path from outside."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return tmp_path


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """An empty directory for a backup repository."""
    path = tmp_path / "repo"
    path.mkdir()
    return path


@pytest.fixture
def manager(repo_dir: Path) -> BackupManager:
    """A manager on ``repo_dir`` with retention off."""
    return BackupManager(BackupConfig(backup_path=repo_dir, retention_days=0))


@pytest.fixture(scope="session")
def run_cli() -> CliRunner:
    """``run_cli(*args, cwd=..., input=None, env=None, command=None)`` -> CompletedProcess."""
    return run_cli_process


# -- a real S3 server (SeaweedFS) ---------------------------------------------------------------

REQUIRE_S3_ENV = "PEAK_REQUIRE_S3"  # set by CI: an S3 server that cannot start fails the run
PORT_LOCK = Path(tempfile.gettempdir()) / "peak-backup-test-ports.lock"


@contextlib.contextmanager
def port_lock() -> Iterator[None]:
    """Held while a test server picks free ports and until it has bound them, so servers
    starting at the same time (xdist workers, other test runs on this machine) never pick
    the same port."""
    with open(PORT_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_server(server: SeaweedS3, attempts: int = 3) -> SeaweedS3:
    """``server.start()`` under :func:`port_lock`; a start that fails (a port taken by a process
    that does not take the lock) is tried again on other free ports."""
    for attempt in range(attempts):
        try:
            with port_lock():
                return server.start()
        except S3ServerUnavailableError:
            if attempt == attempts - 1:
                raise
            server._ports = []  # new free ports next time
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS per test session (per xdist worker) on 127.0.0.1 (free ports), killed by
    its PID at the end (its data is thrown away). Tests using it skip with the reason if it
    cannot start, unless ``$PEAK_REQUIRE_S3`` is set."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        start_server(server)
    except S3ServerUnavailableError as exc:
        if os.environ.get(REQUIRE_S3_ENV):
            pytest.fail(f"the S3 test server is required but did not start: {exc}")
        pytest.skip(f"no S3 test server: {exc}")
    try:
        yield server
    finally:
        server.kill()


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server, with what a client needs to reach it."""

    server: S3Endpoint
    name: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}/repo"

    @property
    def options(self) -> S3Options:
        return S3Options(
            endpoint_url=self.server.endpoint_url,
            region=self.server.region,
            access_key_id=self.server.access_key,
            secret_access_key=self.server.secret_key,
            max_retries=2,
            retry_timeout=timedelta(seconds=20),
        )

    def config(self, **overrides: Any) -> BackupConfig:
        """A BackupConfig on this bucket (retention off unless overridden)."""
        values: dict[str, Any] = {"backup_path": self.url, "retention_days": 0, "s3": self.options}
        values.update(overrides)
        return BackupConfig(**values)

    def toml(self) -> str:
        """``[backup.s3]`` for a config.toml of a CLI test (credentials included)."""
        server = self.server
        return (
            f'\n[backup.s3]\nendpoint_url = "{server.endpoint_url}"\nregion = "{server.region}"\n'
            f'access_key_id = "{server.access_key}"\nsecret_access_key = "{server.secret_key}"\n'
            "max_retries = 2\n"
        )

    def boto3_client(self) -> Any:
        import boto3  # a test dependency: the seed's own S3 sample uses it

        return boto3.client(
            "s3",
            endpoint_url=self.server.endpoint_url,
            aws_access_key_id=self.server.access_key,
            aws_secret_access_key=self.server.secret_key,
            region_name=self.server.region,
        )


def create_bucket(server: S3Endpoint, name: str, *, object_lock: bool = False) -> S3Bucket:
    """A new bucket (``object_lock``: created with S3 Object Lock enabled, hence versioned),
    ready for writes."""
    bucket = S3Bucket(server, name)
    client = bucket.boto3_client()
    if object_lock:
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    else:
        client.create_bucket(Bucket=name)
    deadline = time.monotonic() + 10  # the first PUT works ~0.2 s after CreateBucket
    while True:
        try:
            client.put_object(Bucket=name, Key="ready-probe", Body=b"")
            client.delete_object(Bucket=name, Key="ready-probe")
            return bucket
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3) -> S3Bucket:
    """A new, empty bucket for this test."""
    return create_bucket(s3_server, f"test-{uuid.uuid4().hex[:20]}")


# -- a second, independent S3 server (moto) -----------------------------------------------------


@pytest.fixture(scope="session")
def moto_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """One moto server per test session (per xdist worker) on 127.0.0.1 (a free port, picked
    under :func:`port_lock`), IAM enforced, stopped by its PID at the end: the second S3
    implementation beside SeaweedFS (see ``tests/s3_moto_server.py``). Skips with the reason if
    it cannot start, unless ``$PEAK_REQUIRE_S3`` is set."""
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    try:
        for attempt in range(3):  # a port taken by a process that does not take the lock
            try:
                with port_lock():
                    server.start()
                break
            except S3ServerUnavailableError:
                if attempt == 2:
                    raise
    except S3ServerUnavailableError as exc:
        if os.environ.get(REQUIRE_S3_ENV):
            pytest.fail(f"the second S3 test server (moto) is required but did not start: {exc}")
        pytest.skip(f"no second S3 test server (moto): {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_s3_bucket(moto_s3_server: MotoS3) -> S3Bucket:
    """A new, empty bucket on the moto server for this test."""
    return create_bucket(moto_s3_server, f"test-{uuid.uuid4().hex[:20]}")
