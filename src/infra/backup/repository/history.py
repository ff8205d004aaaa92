"""Run history: what the last backups, failures and verifies of each host were.

A successful backup's record is its manifest: the newest manifest of each type is its last
success, with the run statistics (duration, store requests) the manifest carries. So a
backup writes nothing here and costs no request for its history (issue 16's request budget).

What no manifest records goes to one small JSON object per host, ``status/<host>.json``: per
backup type the last failure (time, error), and the last verify (time, backup id, ok).
Versions before 0.3 also wrote each success there; such records are still read, and the
newer of a record and the newest manifest wins. Failures and verifies update it
**best-effort**: the write is one small non-durable ``put`` and a failure to write it is
logged as a warning, never raised, so status can never fail a backup. It is a monitoring
aid, not a commit record.

Concurrent writers on one host may lose an update to each other (last writer wins); the next
failure or verify writes it again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from src.infra.backup.format.layout import STATUS_PREFIX, status_key
from src.infra.backup.format.manifest import RunStats
from src.infra.backup.repository.locks import HOSTNAME
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

STATUS_VERSION = 1
MAX_ERROR_LENGTH = 1000
VERIFY_MAX_AGE = timedelta(days=7)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_lock = threading.Lock()


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def _parse_time(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


@dataclass(frozen=True)
class SuccessRecord:
    """The last successful backup of a type. ``duration_seconds`` and ``requests`` (the store
    requests it made, by operation: ``storage.requests``) come from its manifest's run
    statistics, or from a record of a version before 0.3; ``None`` where unknown."""

    backup_id: str
    time: datetime
    duration_seconds: float | None = None
    size_bytes: int | None = None
    requests: dict[str, int] | None = field(default=None, hash=False)

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "backup_id": self.backup_id,
            "time": iso_utc(self.time),
            "duration_seconds": self.duration_seconds,
            "size_bytes": self.size_bytes,
        }
        if self.requests is not None:  # optional: absent in records of older versions
            raw["requests"] = dict(self.requests)
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SuccessRecord:
        duration = raw.get("duration_seconds")
        size = raw.get("size_bytes")
        requests = raw.get("requests")
        return cls(
            backup_id=str(raw["backup_id"]),
            time=_parse_time(raw["time"]),
            duration_seconds=float(duration) if duration is not None else None,
            size_bytes=int(size) if size is not None else None,
            requests={str(op): int(n) for op, n in requests.items()}
            if isinstance(requests, dict)
            else None,
        )


@dataclass(frozen=True)
class FailureRecord:
    """The last failed backup attempt of a type."""

    time: datetime
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"time": iso_utc(self.time), "error": self.error}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FailureRecord:
        return cls(time=_parse_time(raw["time"]), error=str(raw.get("error", "")))


@dataclass(frozen=True)
class VerifyRecord:
    """The last verify of a backup (``full``: every chunk read, not only checked to exist)."""

    time: datetime
    ok: bool
    backup_id: str | None = None
    full: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "time": iso_utc(self.time),
            "ok": self.ok,
            "backup_id": self.backup_id,
            "full": self.full,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> VerifyRecord:
        backup_id = raw.get("backup_id")
        return cls(
            time=_parse_time(raw["time"]),
            ok=bool(raw["ok"]),
            backup_id=str(backup_id) if backup_id is not None else None,
            full=bool(raw.get("full", True)),
        )


@dataclass
class TypeStatus:
    """Last success and last failure of one backup type."""

    last_success: SuccessRecord | None = None
    last_failure: FailureRecord | None = None

    @property
    def failing(self) -> bool:
        """Whether the last run failed: a failure newer than the last success."""
        if self.last_failure is None:
            return False
        return self.last_success is None or self.last_failure.time > self.last_success.time


@dataclass
class HostStatus:
    """The content of ``status/<host>.json``."""

    host: str
    types: dict[str, TypeStatus] = field(default_factory=dict)
    last_verify: VerifyRecord | None = None
    updated: datetime | None = None

    def type_status(self, backup_type: str) -> TypeStatus:
        return self.types.setdefault(backup_type, TypeStatus())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATUS_VERSION,
            "host": self.host,
            "updated": iso_utc(self.updated) if self.updated else None,
            "types": {
                name: {
                    "last_success": ts.last_success.to_json() if ts.last_success else None,
                    "last_failure": ts.last_failure.to_json() if ts.last_failure else None,
                }
                for name, ts in sorted(self.types.items())
            },
            "last_verify": self.last_verify.to_json() if self.last_verify else None,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> HostStatus:
        types = {}
        for name, entry in dict(raw.get("types") or {}).items():
            success = entry.get("last_success")
            failure = entry.get("last_failure")
            types[str(name)] = TypeStatus(
                last_success=SuccessRecord.from_json(success) if success else None,
                last_failure=FailureRecord.from_json(failure) if failure else None,
            )
        verify = raw.get("last_verify")
        updated = raw.get("updated")
        return cls(
            host=str(raw.get("host", "")),
            types=types,
            last_verify=VerifyRecord.from_json(verify) if verify else None,
            updated=_parse_time(updated) if updated else None,
        )


def current_host() -> str:
    return HOSTNAME


def read_status(store: Store, host: str | None = None) -> HostStatus:
    """The status of ``host`` (default: this host); empty if none was written or it is
    unreadable (logged)."""
    host = host or current_host()
    try:
        raw = json.loads(store.get(status_key(host)))
        return HostStatus.from_json(raw)
    except KeyError:
        return HostStatus(host)
    except Exception as exc:  # noqa: BLE001 - a damaged status file must not break anything
        log.warning("ignoring unreadable backup status of %s: %s", host, exc)
        return HostStatus(host)


def read_all_statuses(store: Store) -> list[HostStatus]:
    """Every host's status in the repository (unreadable ones are skipped)."""
    statuses = []
    try:
        keys = sorted(store.list(STATUS_PREFIX))
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot list backup status files: %s", exc)
        return []
    for key in keys:
        if not key.endswith(".json"):
            continue
        try:
            statuses.append(HostStatus.from_json(json.loads(store.get(key))))
        except Exception as exc:  # noqa: BLE001
            log.warning("ignoring unreadable backup status %s: %s", key, exc)
    return statuses


def write_status(store: Store, status: HostStatus) -> None:
    """Write ``status`` (not durable: losing the last update in a crash is acceptable).
    Raises on failure; the ``record_*`` functions catch that."""
    status.updated = now_utc()
    payload = json.dumps(status.to_json(), indent=1, sort_keys=True).encode()
    store.put(status_key(status.host), payload, durable=False)


def _update(store: Store, change: Any, what: str, host: str | None = None) -> None:
    try:
        with _lock:
            status = read_status(store, host)
            change(status)
            write_status(store, status)
    except Exception as exc:  # noqa: BLE001 - status is best-effort by contract
        log.warning("could not record backup status (%s): %s", what, exc)


def record_failure(
    store: Store,
    backup_type: str,
    error: str | BaseException,
    *,
    time: datetime | None = None,
    host: str | None = None,
) -> None:
    """Record a failed backup attempt (best-effort, never raises)."""
    message = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
    record = FailureRecord(time or now_utc(), message[:MAX_ERROR_LENGTH])
    _update(
        store,
        lambda s: setattr(s.type_status(backup_type), "last_failure", record),
        f"failure of a {backup_type} backup",
        host,
    )


def record_verify(
    store: Store,
    backup_id: str | None,
    ok: bool,
    *,
    full: bool = True,
    time: datetime | None = None,
    host: str | None = None,
) -> None:
    """Record a verify result (best-effort, never raises)."""
    record = VerifyRecord(time or now_utc(), ok, backup_id, full)
    _update(store, lambda s: setattr(s, "last_verify", record), "verify", host)


# -- hooks -------------------------------------------------------------------------------


@dataclass
class TypeSummary:
    """What ``status`` reports for one backup type (merged over hosts and manifests)."""

    backup_type: str
    last_success: SuccessRecord | None = None
    last_failure: FailureRecord | None = None

    @property
    def failing(self) -> bool:
        return TypeStatus(self.last_success, self.last_failure).failing


def _newer(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a if a.time >= b.time else b


def merge_statuses(statuses: Iterable[HostStatus]) -> tuple[dict[str, TypeSummary], Any]:
    """Per type the newest success and failure over all hosts, and the newest verify."""
    types: dict[str, TypeSummary] = {}
    verify: VerifyRecord | None = None
    for status in statuses:
        for name, ts in status.types.items():
            summary = types.setdefault(name, TypeSummary(name))
            summary.last_success = _newer(summary.last_success, ts.last_success)
            summary.last_failure = _newer(summary.last_failure, ts.last_failure)
        verify = _newer(verify, status.last_verify)
    return types, verify


class ListedBackup(Protocol):
    """What :func:`merged_history` needs of a listed backup (``BackupInfo`` has it)."""

    @property
    def backup_id(self) -> str: ...

    @property
    def backup_type(self) -> str: ...

    @property
    def timestamp_utc(self) -> datetime: ...

    @property
    def size_bytes(self) -> int: ...


def merged_history(
    store: Store,
    backups: Iterable[ListedBackup],
    run_of: Callable[[str], RunStats | None] | None = None,
) -> tuple[dict[str, TypeSummary], VerifyRecord | None]:
    """The run history of every host merged per type, and the newest verify. Each type's
    last success is the newest of its ``backups``, unless a status record (of a version
    before 0.3) names a newer one; ``run_of(backup_id)`` gives that backup's run statistics
    (its manifest's, read only for the newest of each type)."""
    types, verify = merge_statuses(read_all_statuses(store))
    newest: dict[str, ListedBackup] = {}
    for info in backups:
        best = newest.get(info.backup_type)
        if best is None or info.timestamp_utc > best.timestamp_utc:
            newest[info.backup_type] = info
    for name, info in newest.items():
        summary = types.setdefault(name, TypeSummary(name))
        recorded = summary.last_success
        if recorded is not None and recorded.time >= info.timestamp_utc:
            continue
        run = run_of(info.backup_id) if run_of is not None else None
        summary.last_success = SuccessRecord(
            info.backup_id,
            info.timestamp_utc,
            run.seconds if run is not None else None,
            info.size_bytes,
            dict(run.requests) if run is not None and run.requests else None,
        )
    return types, verify
