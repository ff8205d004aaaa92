"""The merged status of a repository: per backup type the last success, failure and verify
over every host's run history (:mod:`src.infra.backup.repository.history`), the repository
size and the replicas' lag, for ``peak-backup status``, the health check and metrics.

Reads the application's state; nothing below imports it back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from src.infra.backup.errors import BackupError
from src.infra.backup.format.manifest import RunStats
from src.infra.backup.policy.replica import ReplicaLag
from src.infra.backup.repository.history import (
    SuccessRecord,
    TypeSummary,
    VerifyRecord,
    iso_utc,
    merged_history,
    now_utc,
)
from src.infra.backup.storage.requests import ordered, total_requests

if TYPE_CHECKING:
    from src.infra.backup.app.manager import BackupManager
    from src.infra.backup.repository.repository import Repository

log = logging.getLogger(__name__)


# -- the merged view (status command, health check) ----------------------------------------


@dataclass
class StatusSummary:
    """The repository's run history: per type, plus the newest verify and repository size."""

    types: dict[str, TypeSummary]
    last_verify: VerifyRecord | None
    repository_size_bytes: int
    repository_exists: bool
    now: datetime
    offsite: ReplicaLag | None = None  # what the off-site replica still lacks
    offsite_max_lag: timedelta | None = None
    fallback: ReplicaLag | None = None  # fallback backups not yet synced back

    @property
    def newest_success(self) -> SuccessRecord | None:
        successes = [t.last_success for t in self.types.values() if t.last_success]
        return max(successes, key=lambda s: s.time, default=None)

    @property
    def failing_types(self) -> list[str]:
        return sorted(name for name, t in self.types.items() if t.failing)

    def age(self, when: datetime) -> timedelta:
        return self.now - when

    @property
    def last_measured_backup(self) -> tuple[str, SuccessRecord] | None:
        """The newest success (and its type) whose record has its store requests (records of
        older versions have none)."""
        measured = [
            (name, t.last_success)
            for name, t in self.types.items()
            if t.last_success is not None and t.last_success.requests is not None
        ]
        return max(measured, key=lambda item: item[1].time, default=None)

    def requests_json(self) -> dict[str, Any] | None:
        """The store requests of :attr:`last_measured_backup`, by operation and in total."""
        found = self.last_measured_backup
        if found is None:
            return None
        name, success = found
        by_op = ordered(success.requests or {})
        return {
            "backup_id": success.backup_id,
            "backup_type": name,
            "by_op": by_op,
            "total": total_requests(by_op),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "repository_exists": self.repository_exists,
            "repository_size_bytes": self.repository_size_bytes,
            "now": iso_utc(self.now),
            "types": {
                name: {
                    "last_success": t.last_success.to_json() if t.last_success else None,
                    "age_seconds": self.age(t.last_success.time).total_seconds()
                    if t.last_success
                    else None,
                    "last_failure": t.last_failure.to_json() if t.last_failure else None,
                    "failing": t.failing,
                }
                for name, t in sorted(self.types.items())
            },
            "last_verify": self.last_verify.to_json() if self.last_verify else None,
            "offsite": self.offsite.to_json(self.now) if self.offsite else None,
            "fallback": self.fallback.to_json(self.now) if self.fallback else None,
            "requests": {"last_backup": self.requests_json()},
        }

    @property
    def offsite_problem(self) -> str | None:
        """Why the off-site replica is behind, if it is (beyond ``max_lag``, or failing)."""
        lag = self.offsite
        if lag is None:
            return None
        age = lag.age(self.now)
        limit = self.offsite_max_lag
        if lag.pending and age is not None and limit is not None and age > limit:
            return (
                f"off-site: {len(lag.pending)} backups not yet in {lag.location}, the "
                f"oldest for {int(age.total_seconds() // 60)} min"
                + (f" ({lag.error})" if lag.error else "")
            )
        if lag.error and lag.error != "no replica yet":
            return f"off-site: {lag.location}: {lag.error}"
        return None

    @property
    def fallback_problem(self) -> str | None:
        """Fallback backups waiting to be synced back into the repository, if any."""
        lag = self.fallback
        if lag is None or not (lag.pending or lag.error):
            return None
        if lag.error:
            return f"fallback: {lag.location}: {lag.error}"
        return (
            f"fallback: {len(lag.pending)} backups in {lag.location} are not in the repository "
            "yet (they move back after the next successful backup, or: peak-backup sync "
            f"--from {lag.location} --move)"
        )


def collect_status(manager: BackupManager, *, now: datetime | None = None) -> StatusSummary:
    """The merged run history of ``manager``'s repository: the status files of every host.
    For a type without a recorded success (backups made before status was recorded, or by
    an import), the newest manifest of that type stands in as its last success."""
    from src.infra.backup.errors import RepositoryNotFoundError

    now = now or now_utc()
    try:
        repository = manager.repository
    except RepositoryNotFoundError:
        return StatusSummary({}, None, 0, False, now, fallback=manager.fallback_lag())
    types, verify = merged_history(
        repository.store, manager.list_backups(), _run_reader(repository)
    )
    size = manager.repository.stored_bytes()
    settings = manager.config.offsite_settings
    return StatusSummary(
        types,
        verify,
        size,
        True,
        now,
        offsite=manager.offsite_lag(),
        offsite_max_lag=settings.max_lag if settings else None,
        fallback=manager.fallback_lag(),
    )


def _run_reader(repository: Repository) -> Callable[[str], RunStats | None]:
    """A backup's run statistics from its manifest (``None`` if it cannot be read: status
    then shows the backup without them)."""

    def run_of(backup_id: str) -> RunStats | None:
        try:
            return repository.read_manifest(backup_id).run
        except BackupError as exc:
            log.warning("no run statistics for %s: %s", backup_id, exc)
            return None

    return run_of


def stale_threshold(manager: BackupManager, max_age: timedelta | None = None) -> timedelta:
    """``max_age``, else twice ``interval_hours``."""
    if max_age is not None:
        return max_age
    return timedelta(hours=2 * manager.config.interval_hours)
