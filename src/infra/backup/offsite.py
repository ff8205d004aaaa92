"""Off-site replica and fallback repository: the policies around ``replication.py``.

``[backup.offsite]`` keeps a replica (typically ``s3://...``) up to date in the background:
:func:`offsite_replicator` builds the :class:`Replicator` a ``BackupManager`` notifies after each
commit. The replica applies its own retention: a backup its policy would forget is neither
copied nor kept, so local and off-site histories can differ in length (30 days here, a year
there).

``fallback_path`` takes backups while the primary store fails (disk full, S3 unreachable). It is
a replica of the primary (same ``repo.json``, prepared as soon as the primary is reachable), so
its backups are synced back byte for byte once the primary works again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from src.infra.backup.config import BackupConfig, OffsiteSettings
from src.infra.backup.errors import BackupError, RepositoryBusyError, RepositoryNotFoundError
from src.infra.backup.gc import prune
from src.infra.backup.replication import Replicator, SyncReport, open_replica
from src.infra.backup.repository import Repository
from src.infra.backup.retention import RetentionPolicy, apply_policy
from src.infra.backup.snapshot_index import Summary

log = logging.getLogger(__name__)


@dataclass
class ReplicaLag:
    """Backups one repository has that its replica lacks (and should have)."""

    location: str
    pending: list[str] = field(default_factory=list)
    oldest_utc: datetime | None = None
    error: str | None = None

    def age(self, now: datetime) -> timedelta | None:
        return now - self.oldest_utc if self.oldest_utc else None

    def to_json(self, now: datetime) -> dict[str, Any]:
        age = self.age(now)
        return {
            "location": self.location,
            "pending_backups": len(self.pending),
            "pending": self.pending,
            "oldest_pending_utc": self.oldest_utc.isoformat() if self.oldest_utc else None,
            "oldest_pending_age_seconds": age.total_seconds() if age else None,
            "error": self.error,
        }


def wanted_by_replica(
    source: list[Summary],
    replica: list[Summary],
    policy: dict[str, RetentionPolicy] | None,
    now: datetime,
) -> list[Summary]:
    """The source backups the replica should receive: all, or those its retention policy
    keeps among the union of both histories."""
    if policy is None:
        return source
    union = {s.backup_id: s for s in replica}
    union.update({s.backup_id: s for s in source})
    keep = {d.backup_id for d in apply_policy(list(union.values()), policy, now) if d.keep}
    return [s for s in source if s.backup_id in keep]


def replica_lag(
    source: Repository, replica: Repository, policy: dict[str, RetentionPolicy] | None
) -> ReplicaLag:
    """What ``replica`` still lacks of ``source`` (two listings; no chunk is read)."""
    there = replica.list_summaries()
    present = {s.backup_id for s in there}
    wanted = wanted_by_replica(source.list_summaries(), there, policy, datetime.now(timezone.utc))
    pending = [s for s in reversed(wanted) if s.backup_id not in present]  # oldest first
    return ReplicaLag(
        replica.store.location,
        [s.backup_id for s in pending],
        pending[0].time_utc if pending else None,
    )


def offsite_replicator(
    config: BackupConfig, open_source: Callable[[], Repository]
) -> tuple[Replicator, OffsiteSettings]:
    """The background replicator of ``[backup.offsite]`` (``ConfigError`` if there is none)."""
    settings = config.offsite_settings
    if settings is None:
        raise BackupError("no [backup.offsite] is configured")
    policy = settings.retention
    state = {"last_prune": float("-inf")}

    def open_destination(source: Repository) -> Repository:
        return open_replica(source, config.store_at(settings.path), create=True)

    def select(source: Repository, destination: Repository) -> list[str]:
        wanted = wanted_by_replica(
            source.list_summaries(),
            destination.list_summaries(),
            policy,
            datetime.now(timezone.utc),
        )
        return [s.backup_id for s in wanted]

    def after_sync(_source: Repository, destination: Repository, report: SyncReport) -> None:
        if policy is None:
            return
        forgotten = apply_replica_retention(destination, policy)
        grace = config.grace
        if forgotten and time.monotonic() - state["last_prune"] >= grace.total_seconds():
            state["last_prune"] = time.monotonic()
            try:
                prune(destination, grace=grace)
            except RepositoryBusyError:
                log.info("off-site prune skipped: another prune is running")

    replicator = Replicator(
        open_source,
        open_destination,
        select=select,
        after_sync=after_sync,
        name="peak-backup-offsite",
    )
    return replicator, settings


def apply_replica_retention(replica: Repository, policy: dict[str, RetentionPolicy]) -> list[str]:
    """Delete the replica's backups its own policy forgets; returns their ids."""
    decisions = apply_policy(replica.list_summaries(), policy, datetime.now(timezone.utc))
    deleted = []
    for decision in decisions:
        if not decision.keep:
            try:
                replica.delete_snapshot(decision.backup_id)
            except BackupError:
                continue  # deleted concurrently
            deleted.append(decision.backup_id)
            log.info("off-site retention deleted %s: %s", decision.backup_id, decision.reason)
    return deleted


def fallback_lag(fallback: Repository) -> ReplicaLag:
    """Backups waiting in the fallback repository: all of them (each is deleted there once
    it is synced back into the repository)."""
    pending = list(reversed(fallback.list_summaries()))
    return ReplicaLag(
        fallback.store.location,
        [s.backup_id for s in pending],
        pending[0].time_utc if pending else None,
    )


def move_back(fallback: Repository, report: SyncReport, grace: timedelta) -> None:
    """After a sync from the fallback into the repository: delete there what arrived (copied,
    renamed, or found identical), then collect its garbage (best effort)."""
    arrived = [*report.copied, *report.already_there]
    for backup_id in arrived:
        try:
            fallback.delete_snapshot(backup_id)
        except BackupError as exc:
            log.warning("fallback backup %s synced back but not removed: %s", backup_id, exc)
    if report.renamed:
        log.warning(
            "fallback backups stored under new ids: %s",
            ", ".join(f"{old} -> {new}" for old, new in report.renamed.items()),
        )
    if arrived:
        log.info("fallback backups synced back: %s", ", ".join(arrived))
        try:
            prune(fallback, grace=grace)
        except BackupError as exc:
            log.info("fallback prune skipped: %s", exc)


def open_fallback(
    config: BackupConfig,
    primary: Repository | None,
    *,
    passphrase: Callable[[], str] | None = None,
) -> Repository | None:
    """The fallback repository: a replica of ``primary`` (created as one when the primary is
    given), or, when the primary is unreachable, whatever is already there. ``None`` when
    there is no ``fallback_path`` or no fallback repository yet."""
    store = config.open_fallback_store()
    if store is None:
        return None
    if primary is not None:
        return open_replica(primary, store, create=True)
    try:
        return Repository.open(
            store, compression=config.compression_setting, passphrase=passphrase, create=False
        )
    except RepositoryNotFoundError:
        return None
