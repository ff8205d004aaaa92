"""``check`` of a format-2 repository's packs and pack index files.

Each pack the index lists must exist; with ``read_data`` each is read once, whole: its name
must be the hash of its bytes, its header must list what the index says, and each blob a
backup uses is decoded and verified there (so the chunk pass need not read it again).
"""

from __future__ import annotations

from typing import Protocol

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
from src.infra.backup.repository.pack_index import PackedRepository

# chunk id -> (a reference to read it with, the backups using it)
Users = dict[str, tuple[ChunkRef, list[str]]]


CheckedRepository = PackedRepository


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
    for pack_id, entry in packs.items():
        if pack_id not in listed:
            if any(blob.id in users for blob in entry.blobs):
                _damaged(report, pack_id, "listed in the pack index, but missing", entry, users)
            else:  # a prune deleted it and could not rewrite the index yet: harmless
                report.stale_index_entries += 1
            continue
        for blob in entry.blobs:
            present.setdefault(blob.id, blob.length)
        if read_data:
            verified |= _read_pack(repo, report, pack_id, entry, listed[pack_id], users)
    return verified


def _read_pack(
    repo: CheckedRepository,
    report: PackFindings,
    pack_id: str,
    entry: PackEntry,
    size: int,
    users: Users,
) -> set[str]:
    key = pack_key(pack_id)
    try:
        data = repo.store.get(key)
    except KeyError:
        _damaged(report, pack_id, "listed in the pack index, but missing", entry, users)
        return set()
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
        _damaged(report, pack_id, str(exc), entry, users)
    verified: set[str] = set()
    codec = repo.codec
    for blob in entry.blobs:
        if blob.id not in users or blob.id in verified:
            continue
        try:
            codec.decode(bytes(view[blob.offset : blob.offset + blob.length]), blob.id, blob.size)
        except (CorruptDataError, IntegrityError):
            report.corrupt_chunks.setdefault(blob.id, []).extend(sorted(set(users[blob.id][1])))
            continue
        verified.add(blob.id)
        report.bytes_checked += blob.size
    return verified


def _damaged(report: PackFindings, pack_id: str, why: str, entry: PackEntry, users: Users) -> None:
    report.damaged_packs[pack_id] = why
    affected = {backup for blob in entry.blobs if blob.id in users for backup in users[blob.id][1]}
    report.damaged_pack_users[pack_id] = sorted(affected)
