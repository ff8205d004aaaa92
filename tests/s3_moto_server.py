"""A second, independent S3 server for the tests: moto's server mode (``python -m moto.server``
from the ``moto`` package in the ``dev`` extra), beside SeaweedFS (``tools/s3_server.py``).

Another code base than SeaweedFS (Python and werkzeug instead of Go, objects in memory instead
of a filer and volumes), so a behaviour the store relies on that only one of them has shows up
as a difference between the two runs of the same tests. It runs as its own process on
127.0.0.1 on a free port and is stopped by the PID it started (SIGTERM, then SIGKILL).

IAM is enforced, as on a real service: the server starts open, the fixture creates one IAM
user with an allow-all policy and an access key through moto's IAM API, then switches
authentication on (``POST /moto-api/reset-auth`` with ``0``; the same switch as moto's
``INITIAL_NO_AUTH_ACTION_COUNT``). From then on every request must be signed with that key: a
wrong secret gets 403 ``SignatureDoesNotMatch``, an unknown key 403 ``InvalidAccessKeyId``.
The identity may use IAM too, so a test can add users with narrower policies.

    server = MotoS3(tmp_path / "moto").start()
    server.endpoint_url, server.access_key, server.secret_key
    server.stop()

Measured on the 2-core machine: ready in about 1 s, about 80 MB RSS, stops at once on SIGTERM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tools.s3_server import (
    REGION,
    S3ServerUnavailableError,
    answers_http,
    free_ports,
    log_tail,
    stop_process,
)

USER = "peak-test"
# The test identity may do anything: S3 (every test) and IAM (a test adding narrower users).
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
# Environment variables that would change how the server authenticates or what it serves.
_SCRUBBED_ENV = ("INITIAL_NO_AUTH_ACTION_COUNT", "MOTO_PORT", "TEST_SERVER_MODE")


class MotoS3:
    """One moto server process with IAM enforced and one allow-all identity."""

    def __init__(self, data_dir: Path, *, startup_timeout: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.access_key = self.secret_key = ""  # an IAM access key, created by start()
        self.region = REGION

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        """Start on a new free port, wait until it answers, create the identity and switch
        authentication on; :class:`S3ServerUnavailableError` if any of it fails."""
        missing = [
            m for m in ("moto", "flask", "flask_cors") if importlib.util.find_spec(m) is None
        ]
        if missing:
            raise S3ServerUnavailableError(
                f"moto's server is not installed (missing {', '.join(missing)}; "
                "pip install -e '.[dev]')"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.port,) = free_ports(1)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        log = open(self.data_dir / "moto.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise S3ServerUnavailableError(
                    f"moto exited with {self.process.returncode}: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise S3ServerUnavailableError(
                    f"moto did not answer within {self.startup_timeout:.0f} s"
                )
            time.sleep(0.1)
        try:
            self._enforce_iam()
        except Exception as exc:
            self.stop()
            raise S3ServerUnavailableError(f"moto's IAM could not be set up: {exc}") from exc
        return self

    def _enforce_iam(self) -> None:
        import boto3

        # Authentication is still off: any key reaches IAM now.
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name=self.region,
        )
        iam.create_user(UserName=USER)
        iam.put_user_policy(UserName=USER, PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        answer = self._post("/moto-api/reset-auth", b"0")
        if answer.get("status") != "ok":
            raise RuntimeError(f"reset-auth answered {answer}")

    def add_user(self, name: str, policy: dict[str, Any]) -> tuple[str, str]:
        """A new IAM user with ``policy`` (an inline policy document); returns its access key
        id and secret. Made with the server's identity (which may use IAM)."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _post(self, path: str, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            self.endpoint_url + path,
            data=body,
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form type would hide the body from moto
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def _answers(self) -> bool:
        """Whether the port answers HTTP at all (an error status is an answer)."""
        return answers_http(self.endpoint_url + "/moto-api/")

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.data_dir / "moto.log", lines)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM by PID, then SIGKILL after ``grace`` seconds (its objects are gone: moto
        keeps them in memory)."""
        process, self.process = self.process, None
        stop_process(process, grace)

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
