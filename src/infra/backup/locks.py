"""Leases and locks in the store, so coordination works across processes and hosts.

A *lease* announces work in progress (a backup) without excluding anyone: garbage collection
reads the leases to know which backups may still commit. An *exclusive lock* (one prune at a
time) is a lease written with an exclusive create. Both expire: whatever a killed process left
behind blocks nothing for longer than its time-to-live, and on the same host a dead PID is
recognised at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec

from src.infra.backup.errors import BackupError, ObjectExistsError, RepositoryBusyError
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

LOCK_PREFIX = "locks/"
HOSTNAME = socket.gethostname()


class LeaseRecord(msgspec.Struct, frozen=True):
    """The content of a lease object."""

    kind: str
    host: str
    pid: int
    started: datetime
    expires: datetime


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as found in the store."""

    key: str
    record: LeaseRecord

    def is_live(self, now: datetime) -> bool:
        """Unexpired, and (on this host) held by a running process."""
        if self.record.expires <= now:
            return False
        return not (self.record.host == HOSTNAME and not pid_alive(self.record.pid))


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def list_leases(store: Store, kind: str | None = None) -> list[LeaseInfo]:
    """All readable leases (of ``kind``). Unreadable lease objects are skipped."""
    leases = []
    for key in store.list(LOCK_PREFIX):
        try:
            record = msgspec.json.decode(store.get(key), type=LeaseRecord)
        except (KeyError, msgspec.MsgspecError):
            continue  # released meanwhile, or half-written by a killed process
        if kind is None or record.kind == kind:
            leases.append(LeaseInfo(key, record))
    return leases


class Lease:
    """A renewable lease on work in progress, stored at ``locks/<kind>-<random>.json``."""

    def __init__(self, store: Store, kind: str, ttl: timedelta) -> None:
        self.store = store
        self.kind = kind
        self.ttl = ttl
        self.key = f"{LOCK_PREFIX}{kind}-{secrets.token_hex(8)}.json"
        self.started = utcnow()
        self.expires = self.started
        self._renewed_at = 0.0

    def _write(self, *, exclusive: bool = False) -> None:
        now = utcnow()
        record = LeaseRecord(self.kind, HOSTNAME, os.getpid(), self.started, now + self.ttl)
        # Not fsync'ed: a lease means nothing after a crash (its holder died with it).
        self.store.put(self.key, msgspec.json.encode(record), exclusive=exclusive, durable=False)
        self.expires = record.expires
        self._renewed_at = time.monotonic()

    def acquire(self) -> Lease:
        """Announce the work."""
        self.started = utcnow()
        self._write()
        return self

    def renew_if_due(self) -> None:
        """Extend the lease when a third of its time-to-live has passed."""
        if time.monotonic() - self._renewed_at > self.ttl.total_seconds() / 3:
            self._write()

    def still_valid(self) -> bool:
        """Whether the lease has not expired (a frozen process may have outlived it)."""
        return utcnow() < self.expires

    def release(self) -> None:
        """Withdraw the lease (best effort: an unreleased lease just expires)."""
        try:
            self.store.delete(self.key, durable=False)
        except BackupError as exc:  # never mask the outcome of the work itself
            log.warning("could not release lease %s: %s", self.key, exc)


class ExclusiveLock(Lease):
    """A lease that only one holder can have at a time (``locks/<name>.lock``)."""

    def __init__(self, store: Store, name: str, ttl: timedelta) -> None:
        super().__init__(store, name, ttl)
        self.key = f"{LOCK_PREFIX}{name}.lock"

    def acquire(self, wait: float = 0.0) -> ExclusiveLock:  # type: ignore[override]
        """Take the lock, waiting up to ``wait`` seconds; :class:`RepositoryBusyError` if
        another live process holds it. A stale lock (expired, or its PID dead) is broken."""
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            self.started = utcnow()
            try:
                self._write(exclusive=True)
                return self
            except ObjectExistsError:
                holder = self._holder()
                if holder is not None and not holder.is_live(utcnow()):
                    log.warning(
                        "breaking stale %s lock of %s pid %d (started %s)",
                        self.kind,
                        holder.record.host,
                        holder.record.pid,
                        holder.record.started,
                    )
                    self.store.delete(self.key)
                    continue
            if time.monotonic() >= deadline:
                holder = self._holder()
                who = (
                    f"{holder.record.host} pid {holder.record.pid} since "
                    f"{holder.record.started:%Y-%m-%d %H:%M:%S} UTC"
                    if holder
                    else "another process"
                )
                raise RepositoryBusyError(
                    f"repository busy: a {self.kind} is running ({who}); "
                    "try again later or pass --retry-lock DURATION"
                )
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
            delay = min(delay * 2, 1.0)

    def _holder(self) -> LeaseInfo | None:
        try:
            raw = self.store.get(self.key)
        except KeyError:
            return None
        try:
            return LeaseInfo(self.key, msgspec.json.decode(raw, type=LeaseRecord))
        except msgspec.MsgspecError:
            # Half-written by a process killed mid-write: stale once it is old enough.
            try:
                age = time.time() - self.store.stat(self.key).mtime
            except KeyError:
                return None
            if age > self.ttl.total_seconds():
                epoch = datetime.fromtimestamp(0, timezone.utc)
                return LeaseInfo(self.key, LeaseRecord(self.kind, "?", 0, epoch, epoch))
            return LeaseInfo(
                self.key,
                LeaseRecord(self.kind, "?", 0, utcnow(), utcnow() + self.ttl),
            )
