"""Garbage collection (``prune``): reclaim chunks no backup references, never blocking a backup.

Backups take no lock, so a backup may be deduplicating against a chunk at the very moment that
chunk becomes unreferenced. Collection therefore has two phases ("fossil collection"):

1. **Collect**: chunks that no manifest references and that are older than the grace period
   are moved from ``chunks/`` to ``fossils/``. The move is recorded in
   ``gc/collection-<time>.json`` before it starts.
   Readers look in ``fossils/`` when a chunk is missing from ``chunks/``, so nothing becomes
   unreadable.
2. **Delete**, in the same or a later run, once the collection is older than the grace period
   **and** every backup that started before the collection's (end) time, give or take a clock
   skew, has finished (its lease is gone, expired, or held by a dead PID on this host):
   fossils that a manifest now references are moved back; the rest are deleted.

Why that is safe: a backup reads the pending collection records after taking its lease and
never reuses their chunks unseen (it writes them again if they are not in ``chunks/``), and
before it commits it brings every listed chunk it references back into ``chunks/`` (the moves
may still be running). So a backup that started after a collection was recorded cannot come
to depend on its fossils, and one that started before holds a lease that keeps them. A backup
that outlives its lease re-checks all of its chunks before it commits. Only one prune runs at
a time (an exclusive lock); a second one gets :class:`RepositoryBusyError`.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import msgspec

from src.infra.backup.errors import CorruptDataError, DiskFullError, IntegrityError, StorageError
from src.infra.backup.format.layout import (
    CHUNK_PREFIX,
    COLLECTION_PREFIX,
    GC_STATE_KEY,
    PACK_PREFIX,
    chunk_id_of,
    chunk_key,
    collection_key,
    fossil_key,
)
from src.infra.backup.format.manifest import (
    JSON_ERRORS,
    ChunkRef,
    Collection,
    Entry,
    GcState,
    Manifest,
)
from src.infra.backup.repository.locks import (
    BACKUP_LEASE_KIND,
    ExclusiveLock,
    LeaseInfo,
    list_leases,
    utcnow,
)
from src.infra.backup.repository.pack_gc import DEAD_PREFIX as PACK_DEAD_PREFIX
from src.infra.backup.repository.pack_gc import (
    collect_packs,
    consolidate_index,
    delete_packs,
)
from src.infra.backup.repository.pack_index import PackedRepository, PackIndex
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=1)
COLLECTION_BATCH = 64  # chunk ids per collection record (about 4.3 KB)
PRUNE_LOCK_TTL = timedelta(minutes=30)
# Leases are compared with times from other hosts: tolerate this much clock skew.
CLOCK_SKEW = timedelta(minutes=5)


class CollectableRepository(PackedRepository, Protocol):
    """What the pruner needs of a repository (the repository package's reader has it)."""

    def list_snapshots(self) -> list[Manifest]: ...

    def entry_refs(self, entry: Entry, *, fresh: bool = False) -> list[ChunkRef]: ...

    def damaged_snapshots(self) -> dict[str, str]: ...


# -- the writer's half of the protocol ----------------------------------------------------------


def pending_collections(
    store: Store, cache: dict[str, tuple[str, Collection]], lock: threading.Lock
) -> list[Collection]:
    """The records of pending collections (one listing; each record read once per version,
    ``cache`` keeps them, guarded by ``lock``)."""
    listed = {info.key: info.version for info in store.list_info(COLLECTION_PREFIX)}
    with lock:
        for key in [k for k in cache if k not in listed]:
            del cache[key]
    records = []
    for key, version in listed.items():
        cached = cache.get(key)
        if cached is None or cached[0] != version:
            try:
                record = msgspec.json.decode(store.get(key), type=Collection)
            except KeyError:
                continue  # finished meanwhile
            except JSON_ERRORS as exc:
                raise CorruptDataError(f"{key}: damaged collection record ({exc})") from exc
            cached = (version, record)
            with lock:
                cache[key] = cached
        records.append(cached[1])
    return records


def read_gc_state(store: Store) -> GcState | None:
    """The collection records' state (``gc-state.json``); ``None`` if there is none or it
    is unreadable: then nothing may be assumed of the records."""
    try:
        return msgspec.json.decode(store.get(GC_STATE_KEY), type=GcState)
    except KeyError:
        return None
    except JSON_ERRORS as exc:
        log.warning("ignoring a damaged %s (%s): the next prune rewrites it", GC_STATE_KEY, exc)
        return None


def open_gc_state(store: Store) -> str:
    """Mark the collection records as changing (durably, before any record is written or
    deleted): a new token, open. Returns the token for :func:`close_gc_state`."""
    token = secrets.token_hex(8)
    store.put(GC_STATE_KEY, msgspec.json.encode(GcState(token=token, open=True)))
    return token


def close_gc_state(store: Store, token: str | None = None) -> None:
    """Mark the collection records as settled (the prune that opened ``token`` is done, or a
    new repository has none)."""
    token = token or secrets.token_hex(8)
    store.put(GC_STATE_KEY, msgspec.json.encode(GcState(token=token, open=False)))


# Collection records name the chunks that go with collected packs by this many leading hex
# digits of their ids: short records fit on a full disk, and a chunk wrongly taken for one
# of them is only written again.
DEAD_PREFIX = PACK_DEAD_PREFIX


@dataclass(frozen=True)
class Collected:
    """What pending collections take away: chunks moved to ``fossils/`` (ids), chunks that
    go with collected packs (id prefixes, see :data:`DEAD_PREFIX`), and those packs."""

    fossils: frozenset[str] = frozenset()
    dead: frozenset[str] = frozenset()
    packs: frozenset[str] = frozenset()
    # Packs whose records list no chunks (``dead_all``): see :meth:`with_whole_packs`.
    whole_packs: frozenset[str] = frozenset()

    def with_whole_packs(self, index: PackIndex) -> Collected:
        """Add the chunks of :attr:`whole_packs` that no other pack holds, as ``index``
        (refreshed) lists them, to :attr:`fossils`."""
        if not self.whole_packs:
            return self
        index.refresh()
        listed = index.packs()
        ids = {
            blob.id
            for pack_id in self.whole_packs
            if pack_id in listed
            for blob in listed[pack_id].blobs
            if not any(loc.pack not in self.packs for loc in index.locations(blob.id))
        }
        return dataclasses.replace(self, fossils=self.fossils | ids, whole_packs=frozenset())

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, str) and (cid in self.fossils or cid[:DEAD_PREFIX] in self.dead)

    def __bool__(self) -> bool:
        return bool(self.fossils or self.dead or self.packs)


def collected_chunks(
    store: Store, cache: dict[str, tuple[str, Collection]], lock: threading.Lock
) -> Collected:
    """What pending collections take away (:class:`Collected`): a backup reads it after
    taking its lease and never reuses such a chunk unseen."""
    fossils: set[str] = set()
    dead: set[str] = set()
    packs: set[str] = set()
    whole: set[str] = set()
    for record in pending_collections(store, cache, lock):
        fossils.update(record.fossils)
        dead.update(prefix[:DEAD_PREFIX] for prefix in record.dead)
        packs.update(record.packs)
        if record.dead_all:
            whole.update(record.packs)
    return Collected(frozenset(fossils), frozenset(dead), frozenset(packs), frozenset(whole))


def revalidate(store: Store, chunk_ids: Iterable[str]) -> None:
    """Make sure every chunk a backup refers to is in ``chunks/`` before it commits (the
    backup outlived its lease, so a collection may have moved some of them to ``fossils/``)."""
    for cid in chunk_ids:
        if store.exists(chunk_key(cid)):
            continue
        try:
            store.move(fossil_key(cid), chunk_key(cid))
        except KeyError:
            raise StorageError(
                f"chunk {cid} was reclaimed while this backup was suspended past its "
                "lease; nothing was committed, run the backup again"
            ) from None


def read_chunk_blob(store: Store, cid: str) -> bytes:
    """A chunk's blob from ``chunks/``, or from ``fossils/`` where a collection may have moved
    it meanwhile; tried again in case it was just moved back."""
    for key in (chunk_key(cid), fossil_key(cid), chunk_key(cid)):
        try:
            return store.get(key)
        except KeyError:
            continue
    raise IntegrityError(f"chunk {cid} is missing from the repository")


# -- the pruner's half ------------------------------------------------------------------------


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
    packs_collected: int = 0
    packs_repacked: int = 0
    packs_deleted: int = 0
    packs_kept: int = 0

    @property
    def freed_bytes(self) -> int:
        """Bytes deleted for good (fossil deletions and temp leftovers)."""
        return self.deleted_bytes + self.temp_bytes


def referenced_chunks(repo: CollectableRepository) -> dict[str, list[str]]:
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
    repo: CollectableRepository,
    *,
    grace: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    lock_wait: float = 0.0,
) -> PruneReport:
    """Collect unreferenced chunks and delete those collected long enough ago."""
    report = PruneReport(dry_run=dry_run)
    lock = None
    if not dry_run:
        lock = ExclusiveLock(repo.store, "prune", PRUNE_LOCK_TTL).acquire(lock_wait)
    renew = lock.renew_if_due if lock is not None else _nothing
    # Format 2: backups skip listing the records while this state stays closed and the same.
    gc_token = open_gc_state(repo.store) if lock is not None and repo.packed else None
    try:
        # Temp leftovers first: on a full disk they may be what makes room for the rest.
        _remove_temporary(repo, report, grace)

        def delete_at_once(key: str) -> None:
            # With no grace period a batch can go right away, which frees space batch by
            # batch: prune must work on a full disk, since it is how space is freed.
            leases = list_leases(repo.store, BACKUP_LEASE_KIND)
            _delete_collected(repo, report, leases, utcnow(), grace, renew, only=[key])

        immediate = grace <= timedelta(0) and not dry_run
        users = _collect(
            repo, report, utcnow(), grace, renew, delete_at_once if immediate else None
        )
        if repo.packed:
            pending = {pid for record in _records(repo) for pid in record[1].packs}
            after = delete_at_once if immediate else None
            collect_packs(repo, report, users, utcnow(), grace, pending, renew, after)
        # Leases are read after the collection was recorded: a backup that started since
        # sees the record (and avoids its fossils); one that started before holds a lease
        # that keeps the fossils until it has finished.
        leases = list_leases(repo.store, BACKUP_LEASE_KIND)
        _delete_collected(repo, report, leases, utcnow(), grace, renew)
        if repo.packed and not dry_run:
            try:
                consolidate_index(repo, drop=set())
            except DiskFullError as exc:
                log.warning("pack index files not merged, the disk is full (%s)", exc)
        _remove_stale_leases(repo, report, leases)
    finally:
        if gc_token is not None:
            _close_quietly(repo.store, gc_token)
        if lock is not None:
            lock.release()
    return report


def _close_quietly(store: Store, token: str) -> None:
    try:
        close_gc_state(store, token)
    except StorageError as exc:  # stays open: backups list the records until the next prune
        log.warning("could not mark the collection records settled: %s", exc)


def _nothing() -> None:
    return None


def _records(
    repo: CollectableRepository, only: list[str] | None = None
) -> list[tuple[str, Collection]]:
    """The pending collection records (those ``only`` names, if given), oldest first."""
    keys = only if only is not None else sorted(repo.store.list(COLLECTION_PREFIX))
    records = []
    for key in keys:
        try:
            records.append((key, msgspec.json.decode(repo.store.get(key), type=Collection)))
        except (KeyError, *JSON_ERRORS) as exc:
            raise CorruptDataError(f"{key}: damaged collection record ({exc})") from exc
    return records


def _delete_collected(
    repo: CollectableRepository,
    report: PruneReport,
    leases: list[LeaseInfo],
    now: datetime,
    grace: timedelta,
    renew: Callable[[], None],
    only: list[str] | None = None,
) -> None:
    """Phase 2: delete (or bring back) the fossils and packs of collections old enough (of
    the records ``only`` names, if given)."""
    users: dict[str, list[str]] | None = None
    records = _records(repo, only)
    pending_packs = {pid for _, record in _records(repo) for pid in record.packs}
    due_packs: list[tuple[str, Collection]] = []
    blocked: set[str] = set()
    for key, collection in records:
        if collection.time > now - grace:
            report.postponed.append(f"{key}: younger than the grace period ({grace})")
            blocked.update(collection.packs)
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
            blocked.update(collection.packs)
            continue
        if users is None:
            users = referenced_chunks(repo)
            packed = _packed_chunks(repo)
        for cid in collection.fossils:
            renew()
            fossil = fossil_key(cid)
            try:
                size = repo.store.size(fossil)
            except KeyError:
                continue  # a crash before it was moved, or already handled
            if cid in users and not packed(cid):
                report.resurrected += 1
                if not report.dry_run:
                    _resurrect(repo, cid)
            else:
                report.deleted += 1
                report.deleted_bytes += size
                if not report.dry_run:
                    repo.store.delete(fossil)
        if collection.packs:
            due_packs.append((key, collection))  # deleted together, after one index rewrite
        elif not report.dry_run:
            repo.store.delete(key)
    if due_packs and users is not None:
        records_due = [record for _, record in due_packs]
        if delete_packs(repo, report, records_due, set(users), pending_packs, renew, blocked):
            for key, _ in due_packs:
                repo.store.delete(key)


def _packed_chunks(repo: CollectableRepository) -> Callable[[str], bool]:
    """Whether a chunk is in a pack that exists and no pending collection names: its loose
    copy (from a format-1 past, see migrate.py) is then garbage."""
    if not repo.packed:
        return lambda cid: False
    index = repo.pack_index
    index.refresh()
    pending = {pid for _, record in _records(repo) for pid in record.packs}
    present = {key.rsplit("/", 1)[-1] for key in repo.store.list(PACK_PREFIX)} - pending
    return lambda cid: any(loc.pack in present for loc in index.locations(cid))


def _resurrect(repo: CollectableRepository, cid: str) -> None:
    if repo.store.exists(chunk_key(cid)):
        repo.store.delete(fossil_key(cid))  # a backup wrote it again meanwhile
    else:
        repo.store.move(fossil_key(cid), chunk_key(cid))


def _collect(
    repo: CollectableRepository,
    report: PruneReport,
    now: datetime,
    grace: timedelta,
    renew: Callable[[], None],
    after_batch: Callable[[str], None] | None,
) -> dict[str, list[str]]:
    """Phase 1: move unreferenced chunks older than the grace period to ``fossils/``, in
    batches with a record each (small records fit even on a nearly full disk). Returns the
    references it collected by (chunk id -> backups)."""
    users = referenced_chunks(repo)
    report.referenced_chunks = len(users)
    cutoff = now.timestamp() - grace.total_seconds()
    packed = _packed_chunks(repo)
    candidates = []
    for info in repo.store.list_info(CHUNK_PREFIX):
        cid = chunk_id_of(info.key)
        if (cid not in users or packed(cid)) and info.mtime <= cutoff:
            candidates.append((cid, info.size))
    if not candidates:
        return users
    report.fossilized += len(candidates)
    report.fossilized_bytes += sum(size for _, size in candidates)
    if report.dry_run:
        # What a real run would free once the collection is old enough.
        report.deleted += len(candidates)
        report.deleted_bytes += sum(size for _, size in candidates)
        return users
    stamp = f"{now:%Y%m%dT%H%M%S%fZ}"
    batch, start, number = COLLECTION_BATCH, 0, 0
    while start < len(candidates):
        key = collection_key(stamp, number)
        fossils = [cid for cid, _ in candidates[start : start + batch]]
        # Recorded (durably) before the moves: no fossil is ever unaccounted for, and every
        # backup that starts from now on sees the record and avoids these chunks.
        try:
            repo.store.put(key, msgspec.json.encode(Collection(time=utcnow(), fossils=fossils)))
        except DiskFullError:
            if batch == 1:
                raise
            batch = max(1, batch // 8)  # a smaller record fits; each batch frees space
            continue
        start, number = start + len(fossils), number + 1
        for cid in fossils:
            renew()
            try:
                repo.store.move(chunk_key(cid), fossil_key(cid))
            except KeyError:
                continue
        if after_batch is not None:
            after_batch(key)
    return users


def _remove_temporary(repo: CollectableRepository, report: PruneReport, grace: timedelta) -> None:
    """Temp files of interrupted writes, older than the grace period (at least a minute, so
    a write in progress is never touched)."""
    cutoff = time.time() - max(grace.total_seconds(), 60.0)
    for info in repo.store.list_temporary():
        if info.mtime <= cutoff:
            report.temp_removed += 1
            report.temp_bytes += info.size
            if not report.dry_run:
                repo.store.delete_temporary(info.key)


def _remove_stale_leases(
    repo: CollectableRepository, report: PruneReport, leases: Iterable[LeaseInfo]
) -> None:
    """Leases whose backup died (dead PID on this host) or expired."""
    now = utcnow()
    for lease in leases:
        if not lease.is_live(now):
            report.stale_leases_removed += 1
            if not report.dry_run:
                repo.store.delete(lease.key, durable=False)
