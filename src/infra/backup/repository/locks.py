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
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec

from src.infra.backup.errors import (
    BackupError,
    ObjectExistsError,
    RepositoryBusyError,
    StorageError,
)
from src.infra.backup.format.layout import LOCK_PREFIX, delete_probe_key, lease_key, lock_key
from src.infra.backup.format.manifest import AwareDatetime
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

# The lease every running backup holds (garbage collection waits for these; see gc.py).
BACKUP_LEASE_KIND = "backup"

# The host name recorded in leases, manifests and status files. $PEAK_BACKUP_HOST overrides it
# (containers whose host names change on every start; tests that play several hosts).
HOSTNAME = os.environ.get("PEAK_BACKUP_HOST") or os.uname().nodename or "localhost"
JSON_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError)
# Breaking a stale lock is itself guarded by an exclusive token; a token older than this is
# left by a breaker that died and is ignored.
BREAK_TOKEN_TTL = 30.0
# Exclusive locks this process holds (key -> holder), so a lock our own PID left behind
# (its release failed) is recognised as stale, while one another thread holds is not.
_held_here: dict[str, ExclusiveLock] = {}
# Leases of this process whose work is running. On a network store a finished lease is not
# deleted but left to expire (one request less per backup, and a host whose credentials
# cannot delete has nothing to fail): a record of this very process counts as live only while
# its key is here, and its key is used again by the next lease of the same kind.
_running_here: set[str] = set()
_idle_keys: dict[str, list[str]] = {}
_keys_lock = threading.Lock()


class LeaseRecord(msgspec.Struct, frozen=True):
    """The content of a lease object."""

    kind: str
    host: str
    pid: int
    started: AwareDatetime
    expires: AwareDatetime


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as found in the store."""

    key: str
    record: LeaseRecord

    def is_live(self, now: datetime) -> bool:
        """Unexpired, and (on this host) held by a running process (of this process: one
        whose work is still running)."""
        if self.record.expires <= now:
            return False
        if self.record.host != HOSTNAME:
            return True
        if self.record.pid == os.getpid():
            return self.key in _running_here
        return pid_alive(self.record.pid)


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
        except (KeyError, *JSON_ERRORS):
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
        with _keys_lock:
            idle = _idle_keys.get(f"{store.location}\0{kind}")
            self.key = idle.pop() if idle else lease_key(kind, os.urandom(8).hex())
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
        _running_here.add(self.key)
        try:
            self._write()
        except BaseException:
            _running_here.discard(self.key)
            raise
        return self

    def renew_if_due(self) -> None:
        """Extend the lease when a third of its time-to-live has passed."""
        if time.monotonic() - self._renewed_at > self.ttl.total_seconds() / 3:
            self._write()

    def still_valid(self) -> bool:
        """Whether the lease has not expired (a frozen process may have outlived it)."""
        return utcnow() < self.expires

    def release(self) -> None:
        """Withdraw the lease: deleted on a local store; on a network store left to expire
        (this process no longer counts it as live, and reuses its key; see
        ``_running_here``). Best effort: an unreleased lease just expires."""
        _running_here.discard(self.key)
        if not self.store.cheap_exists:
            with _keys_lock:
                _idle_keys.setdefault(f"{self.store.location}\0{self.kind}", []).append(self.key)
            return
        try:
            self.store.delete(self.key, durable=False)
        except BackupError as exc:  # never mask the outcome of the work itself
            log.warning("could not release lease %s: %s", self.key, exc)


def check_deletes_allowed(store: Store, work: str) -> None:
    """Fail before ``work`` (prune, migrate: work that deletes) changes anything if these
    credentials may not delete: a delete of ``locks/<work>.delete-probe``, a key that never
    exists. Allowed, it changes nothing (a versioned bucket adds a delete marker); S3 checks
    the permission before it looks the key up, so a host whose identity may not delete is
    refused here, not after collection records were written and objects moved."""
    try:
        store.delete(delete_probe_key(work), durable=False)
    except StorageError as exc:
        raise type(exc)(f"{work} stopped before it changed anything: {exc}") from exc


class ExclusiveLock(Lease):
    """A lease that only one holder can have at a time (``locks/<name>.lock``)."""

    def __init__(self, store: Store, name: str, ttl: timedelta) -> None:  # no idle key reuse
        self.store = store
        self.kind = name
        self.ttl = ttl
        self.key = lock_key(name)
        self.started = utcnow()
        self.expires = self.started
        self._renewed_at = 0.0

    def acquire(self, wait: float = 0.0) -> ExclusiveLock:  # type: ignore[override]
        """Take the lock, waiting up to ``wait`` seconds; :class:`RepositoryBusyError` if
        another live process holds it. A stale lock (expired, or its PID dead) is broken."""
        check_deletes_allowed(self.store, self.kind)  # a lock is taken only to delete
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            self.started = utcnow()
            try:
                self._write(exclusive=True)
                _held_here[self.key] = self
                return self
            except ObjectExistsError:
                holder = self._holder()
                if holder is not None and self._is_stale(holder):
                    self._break(holder)
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

    def _is_stale(self, holder: LeaseInfo) -> bool:
        record = holder.record
        if record.host == HOSTNAME and record.pid == os.getpid():
            return self.key not in _held_here  # our own leftover, not another thread's lock
        return not holder.is_live(utcnow())

    def _break(self, holder: LeaseInfo) -> None:
        """Remove a stale lock. Only one process may break at a time (an exclusive token),
        and the lock is re-read under the token, so nobody deletes a lock just taken."""
        token = f"{self.key}.break"
        try:
            # Unique content: a store may accept an exclusive put of identical bytes (S3, a
            # retried conditional PUT), and two breakers must never both win.
            owner = f"{HOSTNAME} {os.getpid()} {os.urandom(8).hex()}".encode()
            self.store.put(token, owner, exclusive=True, durable=False)
        except ObjectExistsError:
            try:
                if time.time() - self.store.stat(token).mtime > BREAK_TOKEN_TTL:
                    self.store.delete(token, durable=False)  # its breaker died
            except KeyError:
                pass
            return
        try:
            current = self._holder()
            if current is not None and current.record == holder.record:
                log.warning(
                    "breaking stale %s lock of %s pid %d (started %s)",
                    self.kind,
                    holder.record.host,
                    holder.record.pid,
                    holder.record.started,
                )
                self.store.delete(self.key)
        finally:
            self.store.delete(token, durable=False)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        _held_here.pop(self.key, None)
        current = self._holder()
        mine = current is not None and (
            current.record.host == HOSTNAME
            and current.record.pid == os.getpid()
            and current.record.started == self.started
        )
        if mine:  # always deleted: a lock left to expire would block every other prune
            try:
                self.store.delete(self.key, durable=False)
            except BackupError as exc:
                log.warning("could not release lock %s: %s", self.key, exc)

    def _holder(self) -> LeaseInfo | None:
        try:
            raw = self.store.get(self.key)
        except KeyError:
            return None
        try:
            return LeaseInfo(self.key, msgspec.json.decode(raw, type=LeaseRecord))
        except JSON_ERRORS:
            # Unreadable (damaged): stale once it is older than a break token could be.
            try:
                age = time.time() - self.store.stat(self.key).mtime
            except KeyError:
                return None
            if age > BREAK_TOKEN_TTL:
                epoch = datetime.fromtimestamp(0, timezone.utc)
                return LeaseInfo(self.key, LeaseRecord(self.kind, "?", 0, epoch, epoch))
            return LeaseInfo(
                self.key,
                LeaseRecord(self.kind, "?", 0, utcnow(), utcnow() + self.ttl),
            )
