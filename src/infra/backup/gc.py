"""Garbage collection (``prune``): reclaim chunks no backup references, never blocking a backup.

Backups take no lock, so a backup may be deduplicating against a chunk at the very moment that
chunk becomes unreferenced. Collection therefore has two phases ("fossil collection"):

1. **Collect**: chunks that no manifest references and that are older than the grace period
   are moved from ``chunks/`` to ``fossils/``, and the move is recorded in
   ``gc/collection-<time>.json`` (written *before* the moves). Readers look in ``fossils/``
   when a chunk is missing from ``chunks/``, so nothing becomes unreadable.
2. **Delete**, in a later run (or the same one), once the collection is older than the grace
   period **and** every backup that was in progress when it was made has finished (their
   leases are gone, expired, or held by a dead PID): fossils that a manifest now references
   are moved back; the rest are deleted.

A backup that started after a collection cannot refer to its fossils: it learns chunks only
from a parent manifest that still exists or by finding them in ``chunks/``. A backup that
outlives its lease re-checks its chunks before it commits. Only one prune runs at a time
(an exclusive lock); a second one gets :class:`RepositoryBusyError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from src.infra.backup.blobs import chunk_key
from src.infra.backup.errors import CorruptDataError, IntegrityError
from src.infra.backup.locks import ExclusiveLock, LeaseInfo, list_leases, utcnow
from src.infra.backup.repository import BACKUP_LEASE_KIND, FOSSIL_PREFIX, Repository

log = logging.getLogger(__name__)

COLLECTION_PREFIX = "gc/"
DEFAULT_GRACE = timedelta(hours=1)
PRUNE_LOCK_TTL = timedelta(minutes=30)
# Leases are compared with times from other hosts: tolerate this much clock skew.
CLOCK_SKEW = timedelta(minutes=5)


class Collection(msgspec.Struct, frozen=True):
    """``gc/collection-<time>.json``: chunks moved to ``fossils/`` at ``time``."""

    time: datetime
    fossils: list[str]


@dataclass
class PruneReport:
    """What a prune did (or, with ``dry_run``, would do)."""

    dry_run: bool
    referenced_chunks: int = 0
    fossilized: int = 0
    fossilized_bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    resurrected: int = 0
    temp_removed: int = 0
    temp_bytes: int = 0
    stale_leases_removed: int = 0
    postponed: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        """Bytes deleted for good (fossil deletions and temp leftovers)."""
        return self.deleted_bytes + self.temp_bytes


def fossil_key(cid: str) -> str:
    """Where a collected chunk waits for deletion."""
    return f"{FOSSIL_PREFIX}{cid[:2]}/{cid}"


def referenced_chunks(repo: Repository) -> dict[str, list[str]]:
    """Every chunk id (incl. chunk-list blobs) any backup references -> those backups.

    Raises :class:`IntegrityError` when a manifest or a chunk list cannot be read: then the
    references are unknown and nothing may be collected.
    """
    repo.list_snapshots()
    damaged = repo.damaged_snapshots()
    if damaged:
        names = ", ".join(sorted(damaged))
        raise IntegrityError(
            f"cannot tell which chunks are in use: damaged manifests ({names}); "
            "run `check`, then delete or repair them"
        )
    users: dict[str, list[str]] = {}
    for manifest in repo.list_snapshots():
        for entry in manifest.entries:
            for lref in entry.lists:
                users.setdefault(lref.id, []).append(manifest.backup_id)
            for ref in repo.entry_refs(entry):
                users.setdefault(ref.id, []).append(manifest.backup_id)
    return users


def prune(
    repo: Repository,
    *,
    grace: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    lock_wait: float = 0.0,
) -> PruneReport:
    """Collect unreferenced chunks and delete those collected long enough ago."""
    report = PruneReport(dry_run=dry_run)
    lock = (
        None if dry_run else ExclusiveLock(repo.store, "prune", PRUNE_LOCK_TTL).acquire(lock_wait)
    )
    try:
        now = utcnow()
        leases = list_leases(repo.store, BACKUP_LEASE_KIND)
        _delete_collected(repo, report, leases, now, grace)
        _collect(repo, report, now, grace)
        _remove_leftovers(repo, report, leases, now, grace)
    finally:
        if lock is not None:
            lock.release()
    return report


def _delete_collected(
    repo: Repository,
    report: PruneReport,
    leases: list[LeaseInfo],
    now: datetime,
    grace: timedelta,
) -> None:
    """Phase 2: delete (or bring back) the fossils of collections old enough."""
    users: dict[str, list[str]] | None = None
    for key in sorted(repo.store.list(COLLECTION_PREFIX)):
        try:
            collection = msgspec.json.decode(repo.store.get(key), type=Collection)
        except (KeyError, msgspec.MsgspecError) as exc:
            raise CorruptDataError(f"{key}: damaged collection record ({exc})") from exc
        if collection.time > now - grace:
            report.postponed.append(f"{key}: younger than the grace period ({grace})")
            continue
        blocking = [
            lease
            for lease in leases
            if lease.is_live(now) and lease.record.started < collection.time + CLOCK_SKEW
        ]
        if blocking:
            holder = blocking[0].record
            report.postponed.append(
                f"{key}: a backup that started before it is still running "
                f"({holder.host} pid {holder.pid})"
            )
            continue
        if users is None:
            users = referenced_chunks(repo)
        for cid in collection.fossils:
            fossil = fossil_key(cid)
            try:
                size = repo.store.size(fossil)
            except KeyError:
                continue  # a crash before it was moved, or already handled
            if cid in users:
                report.resurrected += 1
                if not report.dry_run:
                    _resurrect(repo, cid)
            else:
                report.deleted += 1
                report.deleted_bytes += size
                if not report.dry_run:
                    repo.store.delete(fossil)
        if not report.dry_run:
            repo.store.delete(key)


def _resurrect(repo: Repository, cid: str) -> None:
    if repo.store.exists(chunk_key(cid)):
        repo.store.delete(fossil_key(cid))  # a backup wrote it again meanwhile
    else:
        repo.store.move(fossil_key(cid), chunk_key(cid))


def _collect(repo: Repository, report: PruneReport, now: datetime, grace: timedelta) -> None:
    """Phase 1: move unreferenced chunks older than the grace period to ``fossils/``."""
    users = referenced_chunks(repo)
    report.referenced_chunks = len(users)
    cutoff = now.timestamp() - grace.total_seconds()
    candidates = []
    for info in repo.store.list_info("chunks/"):
        cid = info.key.rsplit("/", 1)[-1]
        if cid not in users and info.mtime <= cutoff:
            candidates.append((cid, info.size))
    if not candidates:
        return
    report.fossilized += len(candidates)
    report.fossilized_bytes += sum(size for _, size in candidates)
    if report.dry_run:
        # What a real run would free once the collection is old enough.
        report.deleted += len(candidates)
        report.deleted_bytes += sum(size for _, size in candidates)
        return
    stamp = f"{now:%Y%m%dT%H%M%S%fZ}"
    key = f"{COLLECTION_PREFIX}collection-{stamp}.json"
    fossils = [cid for cid, _ in candidates]
    # Recorded before the moves, so a crash leaves no fossil unaccounted for...
    repo.store.put(key, msgspec.json.encode(Collection(time=now, fossils=fossils)))
    for cid in fossils:
        try:
            repo.store.move(chunk_key(cid), fossil_key(cid))
        except KeyError:
            continue
    # ...and re-dated after them: every backup that started before the last move could have
    # found one of these chunks in chunks/, so all of them must finish before deletion.
    repo.store.put(key, msgspec.json.encode(Collection(time=utcnow(), fossils=fossils)))


def _remove_leftovers(
    repo: Repository,
    report: PruneReport,
    leases: Iterable[LeaseInfo],
    now: datetime,
    grace: timedelta,
) -> None:
    """Temp files older than the grace period, and leases that are dead or expired."""
    cutoff = time.time() - max(grace.total_seconds(), 60.0)
    for info in repo.store.list_temporary():
        if info.mtime <= cutoff:
            report.temp_removed += 1
            report.temp_bytes += info.size
            if not report.dry_run:
                repo.store.delete_temporary(info.key)
    for lease in leases:
        if not lease.is_live(now):
            report.stale_leases_removed += 1
            if not report.dry_run:
                repo.store.delete(lease.key)
