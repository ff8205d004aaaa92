"""``check`` of a format-2 repository's packs and pack index files.

Each pack the index lists must exist; with ``read_data`` each is read once, whole: its name
must be the hash of its bytes, its header must list what the index says, and each blob a
backup uses is decoded and verified there (so the chunk pass need not read it again). From a
network store, packs are read ahead in ranged parts of 2 MiB fetched in parallel
(``pack_reader.whole_packs``) while two threads check those read; memory stays bounded (the
store's window of parts, and at most three packs in or waiting for their check). A local
store's packs are read and checked one by one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, cast

from src.infra.backup.errors import CorruptDataError, IntegrityError
from src.infra.backup.format.layout import PACK_PREFIX, pack_index_key, pack_key
from src.infra.backup.format.manifest import ChunkRef
from src.infra.backup.format.packs import (
    TRAILER_SIZE,
    PackEntry,
    content_id,
    decode_pack_header,
    header_span,
)
from src.infra.backup.repository.pack_index import PackedRepository, PackIndex
from src.infra.backup.repository.pack_reader import whole_packs

# chunk id -> (a reference to read it with, the backups using it)
Users = dict[str, tuple[ChunkRef, list[str]]]


CheckedRepository = PackedRepository

# Packs checked at once (hashing and decoding release the GIL).
CHECK_THREADS = 2
MISSING = "listed in the pack index, but missing"


class PackFindings(Protocol):
    """Where the pack check records what it finds (``check.CheckReport``)."""

    packs: int
    unindexed_packs: int
    stale_index_entries: int
    damaged_packs: dict[str, str]
    damaged_pack_users: dict[str, list[str]]
    corrupt_chunks: dict[str, list[str]]
    bytes_checked: int


def check_packs(
    repo: CheckedRepository,
    report: PackFindings,
    present: dict[str, int],
    users: Users,
    *,
    read_data: bool,
    progress: Callable[[int], None] | None = None,
) -> set[str]:
    """Check every pack and index file; add each chunk found in an existing pack to
    ``present`` (id -> stored size). Returns the chunks verified here (with ``read_data``)."""
    index = repo.pack_index
    index.refresh()
    listed = {info.key.rsplit("/", 1)[-1]: info.size for info in repo.store.list_info(PACK_PREFIX)}
    packs = index.packs()
    missing = [pack for pack in packs if pack not in listed]
    if missing:  # a concurrent prune may have replaced the index meanwhile: look again
        index.refresh()
        packs = index.packs()
        listed.update(
            (info.key.rsplit("/", 1)[-1], info.size) for info in repo.store.list_info(PACK_PREFIX)
        )
    report.packs = len(listed)
    report.unindexed_packs = len(index.uncovered())
    for index_id, why in index.damaged_files.items():
        report.damaged_packs[pack_index_key(index_id)] = why
    report.damaged_packs.update(index.damaged_headers)  # packs no index file lists
    verified: set[str] = set()
    readable = [(pack_id, listed[pack_id]) for pack_id in packs if pack_id in listed]
    checked = _checked_packs(repo, packs, readable, users) if read_data else iter(())
    try:
        for pack_id, entry in packs.items():
            if pack_id not in listed:
                # A prune that died between deleting packs and rewriting the index leaves such
                # entries: harmless unless a chunk a backup uses is in no existing pack (a
                # repack copies the live chunks before it deletes their packs).
                if any(
                    blob.id in users and not _in_existing_pack(index, blob.id, listed)
                    for blob in entry.blobs
                ):
                    _damaged(report, pack_id, MISSING, entry, users)
                else:
                    report.stale_index_entries += 1
                continue
            for blob in entry.blobs:
                present.setdefault(blob.id, blob.length)
            if read_data:
                verified |= _record(report, pack_id, entry, next(checked), users)
                if progress is not None:
                    progress(listed[pack_id])
    finally:
        close = getattr(checked, "close", None)
        if close is not None:
            close()
    return verified


def _in_existing_pack(index: PackIndex, cid: str, listed: dict[str, int]) -> bool:
    return any(location.pack in listed for location in index.locations(cid))


@dataclass
class _PackCheck:
    """What reading one pack found: damage to the pack itself, the blobs that do not decode
    (in pack order), the blobs verified and their plaintext bytes."""

    damage: str | None = None
    corrupt: list[str] = field(default_factory=list)
    verified: set[str] = field(default_factory=set)
    checked_bytes: int = 0


def _checked_packs(
    repo: CheckedRepository,
    packs: dict[str, PackEntry],
    readable: list[tuple[str, int]],
    users: Users,
) -> Iterator[_PackCheck]:
    """:func:`_check_pack` of each of ``readable`` (pack id, size), in order. From a network
    store the packs are read ahead in parallel ranged parts (``whole_packs``) while
    :data:`CHECK_THREADS` threads check those read (at most one more waits for its check); a
    local store's are read and checked one by one, here (threads gained nothing there)."""
    data = whole_packs(repo.store, readable)
    pool = (
        None if repo.store.cheap_exists else ThreadPoolExecutor(CHECK_THREADS, "peak-backup-check")
    )
    pending: deque[Future[_PackCheck]] = deque()
    try:
        for pack_id, _ in readable:
            content = next(data)  # the previous pack is let go first
            if pool is None:
                found = _check_pack(repo, pack_id, packs[pack_id], content, users)
                del content
                yield found
                continue
            pending.append(pool.submit(_check_pack, repo, pack_id, packs[pack_id], content, users))
            del content
            while len(pending) > CHECK_THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        data.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _check_pack(
    repo: CheckedRepository, pack_id: str, entry: PackEntry, data: bytes | None, users: Users
) -> _PackCheck:
    """Check the bytes of one pack (``None``: it is gone): its name, its header, and every blob
    in it a backup uses, decoded and verified."""
    if data is None:
        return _PackCheck(MISSING)
    found = _PackCheck()
    key = pack_key(pack_id)
    view = memoryview(data)
    try:
        if content_id(view) != pack_id:
            raise CorruptDataError("content does not match its name")
        offset, length = header_span(view[-TRAILER_SIZE:], len(data), key)
        table = decode_pack_header(view[offset : offset + length], offset, repo.keys, key)
        if {(b.id, b.offset, b.length) for b in table} != {
            (b.id, b.offset, b.length) for b in entry.blobs
        }:
            raise CorruptDataError("its header does not list what the pack index says")
    except CorruptDataError as exc:
        found.damage = str(exc)
    codec = repo.codec  # this thread's
    for blob in entry.blobs:
        if blob.id not in users or blob.id in found.verified:
            continue
        try:
            piece = view[blob.offset : blob.offset + blob.length]
            codec.decode(cast(bytes, piece), blob.id, blob.size)  # reads any bytes-like object
        except (CorruptDataError, IntegrityError):
            found.corrupt.append(blob.id)
            continue
        found.verified.add(blob.id)
        found.checked_bytes += blob.size
    return found


def _record(
    report: PackFindings, pack_id: str, entry: PackEntry, found: _PackCheck, users: Users
) -> set[str]:
    """Add what the check of one pack found to ``report``; the chunks it verified."""
    if found.damage is not None:
        _damaged(report, pack_id, found.damage, entry, users)
    for cid in found.corrupt:
        report.corrupt_chunks.setdefault(cid, []).extend(sorted(set(users[cid][1])))
    report.bytes_checked += found.checked_bytes
    return found.verified


def _damaged(report: PackFindings, pack_id: str, why: str, entry: PackEntry, users: Users) -> None:
    report.damaged_packs[pack_id] = why
    affected = {backup for blob in entry.blobs if blob.id in users for backup in users[blob.id][1]}
    report.damaged_pack_users[pack_id] = sorted(affected)
