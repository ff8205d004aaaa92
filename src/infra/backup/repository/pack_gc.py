"""Garbage collection of packs (repository format 2), inside the protocol of gc.py.

Packs are never moved; a collection record names them instead:

1. **Collect** (phase 1). Packs older than the grace period that hold no chunk a backup
   uses are collected whole. Packs whose live share of bytes is below
   :data:`REPACK_BELOW`, and small packs (below :data:`SMALL_PACK`, when there are several),
   are repacked: their live chunks are copied into new packs (with an index file) first,
   then the old packs are collected. The record (``packs``, and ``dead``: the chunks that go
   with them, found in no other pack) is written before anything is deleted; a backup that
   starts later never takes a ``dead`` chunk as stored.
2. **Delete** (phase 2, under the same conditions as fossils: grace period over, no backup
   lease from before the record). The references are read again: a collected pack holding a
   chunk some backup now uses, with no copy in a pack that stays, is kept. Then one new index
   file listing every remaining pack replaces the index files read, and only then are the
   packs deleted: a crash in between leaves packs no index lists, which the next prune
   deletes (after the grace period), never an index entry without its pack.

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

from src.infra.backup.errors import CorruptDataError, IntegrityError, StorageError
from src.infra.backup.format.blobs import BlobCodec
from src.infra.backup.format.crypto import RepositoryKeys
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
from src.infra.backup.repository.pack_index import PackIndex
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

# A pack whose live chunks fill less than this share of it is repacked.
REPACK_BELOW = 0.8
# Packs smaller than this (the last pack of each small backup) are merged once there are
# at least MERGE_SMALL_FROM of them.
SMALL_PACK = PACK_SIZE // 2
MERGE_SMALL_FROM = 8
# Packs per collection record (a record lists their dead chunks too).
PACKS_PER_RECORD = 16
# Index files beyond this many are merged into one by a prune even when no pack goes.
MAX_INDEX_FILES = 16


class PackedRepository(Protocol):
    """What pack garbage collection needs of a repository."""

    @property
    def store(self) -> Store: ...

    @property
    def keys(self) -> RepositoryKeys | None: ...

    @property
    def packed(self) -> bool: ...

    @property
    def pack_index(self) -> PackIndex: ...

    @property
    def codec(self) -> BlobCodec: ...


class PackReport(Protocol):
    """Where pack collection records what it did (``gc.PruneReport``)."""

    dry_run: bool
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
) -> None:
    """Phase 1 (see the module docstring); ``pending``: packs earlier records collected."""
    live = set(users)
    index = repo.pack_index
    index.refresh()
    listed = {info.key.rsplit("/", 1)[-1]: info for info in repo.store.list_info(PACK_PREFIX)}
    packs = {pid: entry for pid, entry in index.packs().items() if pid in listed}
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
        if not kept:
            whole.append(pack_id)
        elif kept < REPACK_BELOW * info.size:
            repack.append(pack_id)
        elif info.size < SMALL_PACK:
            small.append(pack_id)
    if len(small) >= MERGE_SMALL_FROM:
        repack.extend(small)
    unindexed = [
        pid
        for pid, info in listed.items()
        if pid not in index.packs() and pid not in pending and info.mtime <= cutoff
    ]
    collected = whole + repack + unindexed
    if not collected:
        return
    report.packs_collected += len(collected)
    report.packs_repacked += len(repack)
    report.fossilized_bytes += sum(listed[pid].size for pid in collected)
    if report.dry_run:
        return
    copied = _repack(repo, [packs[pid] for pid in repack], home, renew)
    gone = set(collected) | pending
    dead = sorted(
        {
            b.id
            for pid in whole + repack
            for b in packs[pid].blobs
            if b.id not in copied
            and not any(
                loc.pack in listed and loc.pack not in gone for loc in index.locations(b.id)
            )
        }
    )
    stamp = f"{now:%Y%m%dT%H%M%S%fZ}"
    for number, start in enumerate(range(0, len(collected), PACKS_PER_RECORD)):
        group = collected[start : start + PACKS_PER_RECORD]
        members = {b.id for pid in group if pid in packs for b in packs[pid].blobs}
        # Timed when written, like every record: backups that started before it block phase 2.
        record = Collection(
            time=utcnow(), packs=group, dead=[cid for cid in dead if cid in members]
        )
        repo.store.put(collection_key(f"{stamp}P", number), msgspec.json.encode(record))


def _homes(packs: dict[str, PackEntry], live: set[str]) -> dict[str, str]:
    """For each live chunk, the one pack that keeps it: of its packs, the one holding the
    most live chunks (ties: the smaller pack id), so duplicates empty the other packs."""
    weight = {pid: sum(1 for b in entry.blobs if b.id in live) for pid, entry in packs.items()}
    home: dict[str, str] = {}
    for pid, entry in sorted(packs.items()):
        for blob in entry.blobs:
            if blob.id not in live:
                continue
            current = home.get(blob.id)
            if current is None or weight[pid] > weight[current]:
                home[blob.id] = pid
    return home


def _repack(
    repo: PackedRepository,
    entries: list[PackEntry],
    home: dict[str, str],
    renew: Callable[[], None],
) -> set[str]:
    """Copy the live chunks of ``entries`` into new packs (and an index file); returns the
    chunks copied. Each blob is verified before it is copied, so damage never spreads; a
    damaged one stays where it is (``check`` reports it) and its pack is kept whole."""
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
    return copied


def delete_packs(
    repo: PackedRepository,
    report: PackReport,
    records: list[Collection],
    users: set[str],
    pending: set[str],
    renew: Callable[[], None],
) -> None:
    """Phase 2 for the packs of ``records`` (all due); ``pending``: packs of every record
    still pending, due or not (none of them counts as a place a chunk stays)."""
    index = repo.pack_index
    index.refresh()
    sizes = {info.key.rsplit("/", 1)[-1]: info.size for info in repo.store.list_info(PACK_PREFIX)}
    packs = index.packs()
    doomed: list[str] = []
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
            if needed:
                report.packs_kept += 1
            elif pack_id in sizes:
                doomed.append(pack_id)
    if report.dry_run:
        report.packs_deleted += len(doomed)
        report.deleted_bytes += sum(sizes[pid] for pid in doomed)
        return
    consolidate_index(repo, drop=set(doomed), force=bool(doomed))
    for pack_id in doomed:
        renew()
        repo.store.delete(pack_key(pack_id))
        report.packs_deleted += 1
        report.deleted_bytes += sizes[pack_id]


def consolidate_index(repo: PackedRepository, *, drop: set[str], force: bool = False) -> None:
    """Replace the index files with one listing every pack they list but ``drop`` (when
    there is something to drop, or too many files): written before the old ones go."""
    index = repo.pack_index
    index.refresh()
    files = index.files()
    if not force and len(files) <= MAX_INDEX_FILES:
        return
    remaining = [entry for pid, entry in sorted(index.packs().items()) if pid not in drop]
    written = ""
    if remaining:
        written, stored = encode_index(remaining, repo.keys)
        if written not in files:
            repo.store.put(pack_index_key(written), stored)
    for index_id in files:
        if index_id != written:
            repo.store.delete(pack_index_key(index_id))
    index.refresh()


def revalidate_packed(
    repo: PackedRepository, chunk_ids: Iterable[str], collected_packs: set[str]
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
