"""Garbage collection of packs (repository format 2), inside the protocol of gc.py.

Packs are never moved; a collection record names them instead:

1. **Collect** (phase 1). Packs older than the grace period that hold no chunk a backup
   uses are collected whole. Packs whose live share of bytes is below
   :data:`REPACK_BELOW`, and small packs (below :data:`SMALL_PACK`, when there are several),
   are repacked: their live chunks are copied into new packs first, then the old packs are
   collected. A pack whose contents are unknown (no index file lists it and its header is
   damaged) is never collected: ``check`` reports it. The record (``packs``, and ``dead``:
   the chunks that go with them, found in no other pack) is written before anything is
   deleted; a backup that starts later never takes a ``dead`` chunk as stored.
2. **Delete** (phase 2, under the same conditions as fossils: grace period over, no backup
   lease from before the record). The references are read again: a collected pack holding a
   chunk some backup now uses, with no copy in a pack that stays, is kept. The others are
   deleted, then one new index file listing every remaining pack replaces the index files
   read; the records go last (their ``dead`` lists protect writers until the index no longer
   lists the deleted packs). Each prune also writes an index file for the packs only their
   headers describe (writers write packs only).

A backup that outlived its lease re-checks every chunk it uses (:func:`revalidate_packed`):
a chunk found only in a collected pack that still exists is copied into a new pack of the
backup's own before it commits; one already deleted fails the backup, which commits nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Protocol

import msgspec

from src.infra.backup.errors import (
    CorruptDataError,
    DiskFullError,
    IntegrityError,
    StorageError,
)
from src.infra.backup.format.layout import (
    PACK_PREFIX,
    chunk_key,
    collection_key,
    fossil_key,
    pack_index_key,
    pack_key,
)
from src.infra.backup.format.manifest import Collection
from src.infra.backup.format.packs import PACK_SIZE, PackEntry, encode_index
from src.infra.backup.repository.blob_writer import BlobWriter
from src.infra.backup.repository.locks import utcnow
from src.infra.backup.repository.pack_index import PackedRepository, PackIndex
from src.infra.backup.storage.base import ObjectInfo

log = logging.getLogger(__name__)

# A pack whose live chunks fill less than this share of it is repacked.
REPACK_BELOW = 0.8
# Packs smaller than this (the last pack of each small backup) are merged once there are
# at least MERGE_SMALL_FROM of them.
SMALL_PACK = PACK_SIZE // 2
MERGE_SMALL_FROM = 8
# Packs per collection record (a record lists their dead chunks too).
PACKS_PER_RECORD = 16
# Leading hex digits of a dead chunk's id in a record (gc.DEAD_PREFIX, which imports this).
DEAD_PREFIX = 16
# Index files beyond this many are merged into one by a prune even when no pack goes.
MAX_INDEX_FILES = 16


class PackReport(Protocol):
    """Where pack collection records what it did (``gc.PruneReport``)."""

    dry_run: bool
    fossilized: int
    deleted: int
    packs_collected: int
    packs_repacked: int
    packs_deleted: int
    packs_kept: int
    deleted_bytes: int
    fossilized_bytes: int


def collect_packs(
    repo: PackedRepository,
    report: PackReport,
    users: Iterable[str],
    now: datetime,
    grace: timedelta,
    pending: set[str],
    renew: Callable[[], None],
    after_record: Callable[[str], None] | None = None,
) -> None:
    """Phase 1 (see the module docstring); ``pending``: packs earlier records collected;
    ``after_record(key)`` runs after each record is written (with no grace period, prune
    deletes right away, which frees space record by record on a full disk).

    Packs that go whole are recorded first: that needs no space but the records', so a
    prune on a full disk still frees space. Repacking writes new packs; on a full disk it is
    left for a later prune."""
    live = set(users)
    index = repo.pack_index
    index.refresh()
    listed = {info.key.rsplit("/", 1)[-1]: info for info in repo.store.list_info(PACK_PREFIX)}
    indexed = index.packs()
    packs = {pid: entry for pid, entry in indexed.items() if pid in listed}
    home = _homes(packs, live)
    cutoff = now.timestamp() - grace.total_seconds()
    whole: list[str] = []
    repack: list[str] = []
    small: list[str] = []
    for pack_id, entry in packs.items():
        info = listed[pack_id]
        if pack_id in pending or info.mtime > cutoff:
            continue
        kept = sum(b.length for b in entry.blobs if home.get(b.id) == pack_id)
        data = sum(b.length for b in entry.blobs)  # the header is not garbage
        if not kept:
            whole.append(pack_id)
        elif kept < REPACK_BELOW * data:
            repack.append(pack_id)
        elif info.size < SMALL_PACK:
            small.append(pack_id)
    if len(small) >= MERGE_SMALL_FROM:
        repack.extend(small)
    # A live chunk that a pack staying as it is also holds needs no copy out of a pack that
    # goes: re-home it there (else the copy would be a new duplicate for the next prune).
    home = _homes(packs, live, avoid=set(whole) | set(repack))
    stamp = f"{now:%Y%m%dT%H%M%S%fZ}"
    records = _Records(repo, stamp, report, after_record)
    first = whole
    if first:
        gone = set(first) | pending
        dead = _dead(whole, packs, index, listed, gone, copied=set())
        records.write(first, packs, dead, {pid: listed[pid].size for pid in first})
    if not repack:
        return
    if report.dry_run:
        records.write(repack, packs, [], {pid: listed[pid].size for pid in repack})
        report.packs_repacked += len(repack)
        return
    try:
        copied, written = _repack(repo, [packs[pid] for pid in repack], home, renew)
    except DiskFullError as exc:
        log.warning("not repacking now, the disk is full (%s); a later prune will", exc)
        return
    repack = [pid for pid in repack if pid not in written]  # (a pack made again, identical)
    if not repack:
        return
    gone = set(first) | set(repack) | pending
    dead = _dead(repack, packs, index, listed, gone, copied)
    freed = {
        pid: listed[pid].size - sum(b.length for b in packs[pid].blobs if b.id in copied)
        for pid in repack
    }
    records.write(repack, packs, dead, freed)
    report.packs_repacked += len(repack)


def _dead(
    pack_ids: list[str],
    packs: dict[str, PackEntry],
    index: PackIndex,
    listed: dict[str, ObjectInfo],
    gone: set[str],
    copied: set[str],
) -> list[str]:
    """The chunks of ``pack_ids`` that no pack outside ``gone`` holds (and not ``copied``)."""
    return sorted(
        {
            b.id
            for pid in pack_ids
            for b in packs[pid].blobs
            if b.id not in copied
            and not any(
                loc.pack in listed and loc.pack not in gone for loc in index.locations(b.id)
            )
        }
    )


class _Records:
    """Writes the collection records of one prune run: :data:`PACKS_PER_RECORD` packs each,
    fewer when the disk is too full for a record that big (down to one pack a record)."""

    def __init__(
        self,
        repo: PackedRepository,
        stamp: str,
        report: PackReport,
        after_record: Callable[[str], None] | None,
    ) -> None:
        self.repo, self.stamp, self.report = repo, stamp, report
        self.after_record = after_record
        self.number = 0

    def write(
        self,
        pack_ids: list[str],
        packs: dict[str, PackEntry],
        dead: list[str],
        freed: dict[str, int],
    ) -> None:
        report = self.report
        report.packs_collected += len(pack_ids)
        report.fossilized += len(dead)
        report.fossilized_bytes += sum(freed.values())
        if report.dry_run:
            report.deleted += len(dead)
            report.deleted_bytes += sum(freed.values())
            return
        batch, start = PACKS_PER_RECORD, 0
        while start < len(pack_ids):
            group = pack_ids[start : start + batch]
            members = {b.id for pid in group if pid in packs for b in packs[pid].blobs}
            # Timed when written, like every record: backups started before it block phase 2.
            prefixes = sorted({cid[:DEAD_PREFIX] for cid in dead if cid in members})
            record = Collection(time=utcnow(), packs=group, dead=prefixes)
            key = collection_key(f"{self.stamp}P", self.number)
            try:
                self.repo.store.put(key, msgspec.json.encode(record))
            except DiskFullError:
                if batch > 1:
                    batch = 1  # a record of one pack may fit; each one frees its pack's space
                    continue
                if not prefixes:
                    raise
                # Even one pack's list does not fit: name the pack alone (writers then take
                # its chunks from the pack index; gc.Collected).
                record = Collection(time=utcnow(), packs=group, dead_all=True)
                self.repo.store.put(key, msgspec.json.encode(record))
            start += len(group)
            self.number += 1
            if self.after_record is not None:
                self.after_record(key)


def _homes(
    packs: dict[str, PackEntry], live: set[str], avoid: set[str] | None = None
) -> dict[str, str]:
    """For each live chunk, the one pack that keeps it: of its packs, preferring those not in
    ``avoid``, the one holding the most live chunks (ties: the smaller pack id), so
    duplicates empty the other packs."""
    avoid = avoid or set()
    weight = {pid: sum(1 for b in entry.blobs if b.id in live) for pid, entry in packs.items()}
    home: dict[str, str] = {}
    for pid, entry in sorted(packs.items()):
        rank = (pid not in avoid, weight[pid])
        for blob in entry.blobs:
            if blob.id not in live:
                continue
            current = home.get(blob.id)
            if current is None or rank > (current not in avoid, weight[current]):
                home[blob.id] = pid
    return home


def _repack(
    repo: PackedRepository,
    entries: list[PackEntry],
    home: dict[str, str],
    renew: Callable[[], None],
) -> tuple[set[str], set[str]]:
    """Copy the live chunks of ``entries`` into new packs; returns the
    chunks copied and the packs written. Each blob is verified before it is copied, so damage
    never spreads; a damaged one stays where it is (``check`` reports it), and so its pack."""
    sink = BlobWriter(repo)
    copied: set[str] = set()
    codec = repo.codec
    for entry in entries:
        renew()
        wanted = [b for b in entry.blobs if home.get(b.id) == entry.pack and b.id not in copied]
        if not wanted:
            continue
        try:
            data = repo.store.get(pack_key(entry.pack))
        except KeyError:
            continue
        for blob in wanted:
            stored = data[blob.offset : blob.offset + blob.length]
            try:
                codec.decode(stored, blob.id, blob.size)
            except (CorruptDataError, IntegrityError) as exc:
                log.warning("not repacking chunk %s of pack %s: %s", blob.id, entry.pack, exc)
                continue
            sink.add(blob.id, stored, blob.size)
            copied.add(blob.id)
    sink.flush(final=True)
    return copied, set(sink.packs_written)


def delete_packs(
    repo: PackedRepository,
    report: PackReport,
    records: list[Collection],
    users: set[str],
    pending: set[str],
    renew: Callable[[], None],
    blocked: set[str],
) -> bool:
    """Phase 2 for the packs of ``records`` (all due); ``pending``: packs of every record
    still pending, due or not (none of them counts as a place a chunk stays); ``blocked``:
    packs a record not yet due also names (they wait for it). Packs are
    deleted first (that frees space on a full disk), then the index is rewritten without
    them. Returns whether it was: until then the records must stay, since their ``dead``
    lists are what keeps a writer from taking a chunk of a deleted pack as stored."""
    index = repo.pack_index
    index.refresh()
    sizes = {info.key.rsplit("/", 1)[-1]: info.size for info in repo.store.list_info(PACK_PREFIX)}
    packs = index.packs()
    doomed: list[str] = []
    gone: set[str] = set()
    for record in records:
        for pack_id in record.packs:
            entry = packs.get(pack_id)
            needed = entry is not None and any(
                blob.id in users
                and not any(
                    loc.pack not in pending and loc.pack in sizes
                    for loc in index.locations(blob.id)
                )
                for blob in entry.blobs
            )
            if pack_id in blocked:
                continue
            if needed:
                report.packs_kept += 1
            elif pack_id in sizes:
                doomed.append(pack_id)
            else:
                gone.add(pack_id)  # deleted by an earlier run whose index rewrite failed
    dead = {prefix for record in records for prefix in record.dead}
    for pack_id in doomed:
        entry = packs.get(pack_id)
        report.deleted += sum(1 for b in entry.blobs if b.id[:DEAD_PREFIX] in dead) if entry else 0
        report.deleted_bytes += sizes[pack_id]
        report.packs_deleted += 1
        if not report.dry_run:
            renew()
            repo.store.delete(pack_key(pack_id))
    if report.dry_run:
        return False
    try:
        consolidate_index(repo, drop=set(doomed) | gone, force=bool(doomed or gone))
    except DiskFullError as exc:
        log.warning("the pack index still lists deleted packs (%s); the next prune fixes it", exc)
        return False
    return True


def consolidate_index(repo: PackedRepository, *, drop: set[str], force: bool = False) -> None:
    """Replace the index files with one listing every known pack but ``drop`` (when there is
    something to drop, packs only their headers describe, or too many files): written before
    the old ones go."""
    index = repo.pack_index
    index.refresh()
    files = index.files()
    # Index files that cannot be read: the packs they listed are read from their headers,
    # and the new file lists them again, so these can go.
    unreadable = list(index.damaged_files)
    if not force and len(files) <= MAX_INDEX_FILES and not index.uncovered() and not unreadable:
        return
    remaining = [entry for pid, entry in sorted(index.packs().items()) if pid not in drop]
    written = ""
    if remaining:
        written, stored = encode_index(remaining, repo.keys)
        if written not in files:
            repo.store.put(pack_index_key(written), stored)
    for index_id in [*files, *unreadable]:
        if index_id != written:
            repo.store.delete(pack_index_key(index_id))
    index.refresh()


def revalidate_packed(
    repo: PackedRepository, chunk_ids: Iterable[str], collected_packs: frozenset[str]
) -> None:
    """Make sure each chunk is in a pack that stays, or loose (see the module docstring)."""
    index = repo.pack_index
    index.refresh()
    store = repo.store
    exists: dict[str, bool] = {}

    def pack_exists(pack_id: str) -> bool:
        if pack_id not in exists:
            exists[pack_id] = store.exists(pack_key(pack_id))
        return exists[pack_id]

    sink = BlobWriter(repo)
    for cid in chunk_ids:
        locations = index.locations(cid)
        if any(loc.pack not in collected_packs and pack_exists(loc.pack) for loc in locations):
            continue
        if store.exists(chunk_key(cid)):
            continue
        try:
            store.move(fossil_key(cid), chunk_key(cid))
            continue
        except KeyError:
            pass
        for loc in locations:
            try:
                blob = store.get_range(pack_key(loc.pack), loc.offset, loc.length)
            except KeyError:
                continue
            if len(blob) == loc.length:
                sink.add(cid, blob, loc.size)
                break
        else:
            raise StorageError(
                f"chunk {cid} was reclaimed while this backup was suspended past its "
                "lease; nothing was committed, run the backup again"
            )
    sink.flush(final=True)
