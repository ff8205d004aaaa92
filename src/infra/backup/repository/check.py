"""``check``: examine the whole repository and say what is damaged and what it affects.

Damage is a missing or corrupt chunk (or chunk list), a manifest that cannot be read, or (in a
format-2 repository) a pack that is missing, cut short or altered, or a pack index file that
cannot be read. Orphaned chunks (referenced by no backup: left by a failed backup or by
deletions, reclaimed by ``prune``), packs no index lists and temp leftovers of crashed writes
are reported but are not damage.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from src.infra.backup.errors import (
    CorruptDataError,
    IntegrityError,
    InvalidInputError,
    StorageError,
)
from src.infra.backup.format.layout import CHUNK_PREFIX, FOSSIL_PREFIX
from src.infra.backup.format.manifest import ChunkRef
from src.infra.backup.repository.blob_stream import fresh_entry_refs
from src.infra.backup.repository.pack_check import check_packs
from src.infra.backup.repository.pack_index import Location
from src.infra.backup.repository.pack_reader import BlobsAhead
from src.infra.backup.repository.reader import ProgressCallback, announce_total
from src.infra.backup.repository.repository import Repository


@dataclass
class CheckReport:
    """The findings of :func:`check_repository`."""

    backups: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    damaged_manifests: dict[str, str] = field(default_factory=dict)
    missing_chunks: dict[str, list[str]] = field(default_factory=dict)
    corrupt_chunks: dict[str, list[str]] = field(default_factory=dict)
    orphaned_chunks: int = 0
    orphaned_bytes: int = 0
    fossils: int = 0
    temp_leftovers: list[str] = field(default_factory=list)
    packs: int = 0
    # pack id (or pack index key) -> what is wrong with it, and the backups using its chunks
    damaged_packs: dict[str, str] = field(default_factory=dict)
    damaged_pack_users: dict[str, list[str]] = field(default_factory=dict)
    unindexed_packs: int = 0
    stale_index_entries: int = 0

    @property
    def clean(self) -> bool:
        """No damage (orphans, unindexed packs and temp leftovers are not damage)."""
        return not (
            self.damaged_manifests
            or self.missing_chunks
            or self.corrupt_chunks
            or self.damaged_packs
        )

    @property
    def affected_backups(self) -> list[str]:
        """Backups that cannot be fully restored."""
        affected = set(self.damaged_manifests)
        for users in (
            *self.missing_chunks.values(),
            *self.corrupt_chunks.values(),
            *self.damaged_pack_users.values(),
        ):
            affected.update(users)
        return sorted(affected)

    def to_json(self) -> dict[str, object]:
        """The ``--json`` form."""
        return {
            "clean": self.clean,
            "backups": self.backups,
            "chunks_checked": self.chunks_checked,
            "bytes_checked": self.bytes_checked,
            "damaged_manifests": self.damaged_manifests,
            "missing_chunks": self.missing_chunks,
            "corrupt_chunks": self.corrupt_chunks,
            "affected_backups": self.affected_backups,
            "orphaned_chunks": self.orphaned_chunks,
            "orphaned_bytes": self.orphaned_bytes,
            "fossils": self.fossils,
            "temp_leftovers": self.temp_leftovers,
            "packs": self.packs,
            "damaged_packs": {
                name: {"problem": why, "backups": self.damaged_pack_users.get(name, [])}
                for name, why in self.damaged_packs.items()
            },
            "unindexed_packs": self.unindexed_packs,
            "stale_index_entries": self.stale_index_entries,
        }


ChunkSelector = Callable[[str], bool]
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_subset(spec: str, total_bytes: int, day: int | None = None) -> ChunkSelector:
    """Which chunks ``--read-data-subset`` reads: deterministic, so that successive days
    read different slices and every chunk is read within a cycle.

    ``n/m`` is slice n of m (by chunk id). ``p%`` and a size (``50M``, ``1G``) pick the slice
    count m from the percentage or from the repository size, and slice ``day % m``, where
    ``day`` is the number of days since 1970 (UTC): ten daily runs of ``10%`` read it all.
    """
    text = spec.strip().upper()
    day = day if day is not None else int(time.time() // 86400)
    try:
        if "/" in text:
            n_text, m_text = text.split("/", 1)
            n, m = int(n_text), int(m_text)
            if not 1 <= n <= m:
                raise ValueError
            index, slices = n - 1, m
        elif text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            slices = max(1, round(100 / percent))
            index = day % slices
        else:
            match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)I?B?", text)
            if not match:
                raise ValueError
            size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
            if size <= 0:
                raise ValueError
            slices = max(1, math.ceil(total_bytes / size))
            index = day % slices
    except ValueError:
        raise InvalidInputError(
            f"invalid --read-data-subset {spec!r}: use n/m (e.g. 1/10), a percentage (10%) "
            "or a size (50M)"
        ) from None
    return lambda cid: int(cid[:8], 16) % slices == index


def check_repository(
    repo: Repository,
    *,
    read_data: bool = True,
    subset: ChunkSelector | None = None,
    progress: ProgressCallback | None = None,
) -> CheckReport:
    """Check every manifest and chunk list, and every chunk: read and hashed with
    ``read_data`` (only those ``subset`` selects, if given), else only checked present.
    ``progress``: told the stored bytes (the total of a full read) and called with the
    stored size of each pack or chunk read."""
    if read_data and subset is None:
        announce_total(progress, repo.stored_bytes())
    report = CheckReport()
    manifests = repo.list_snapshots()
    report.backups = len(manifests)
    report.damaged_manifests = repo.damaged_snapshots()
    # chunk id -> (a ref to read it with, the backups using it)
    users: dict[str, tuple[ChunkRef, list[str]]] = {}
    entries = [(manifest.backup_id, entry) for manifest in manifests for entry in manifest.entries]
    # Every chunk list read again (each once, in coalesced parallel reads), as verifying must.
    found = fresh_entry_refs(repo, [entry for _, entry in entries])
    for (backup_id, entry), refs in zip(entries, found, strict=True):
        for lref in entry.lists:
            ref = ChunkRef(lref.id, lref.size, lref.stored)
            users.setdefault(lref.id, (ref, []))[1].append(backup_id)
        if isinstance(refs, CorruptDataError):
            _record(report.corrupt_chunks, _list_id(refs), backup_id)
        elif isinstance(refs, IntegrityError):
            _record(report.missing_chunks, _list_id(refs), backup_id)
        elif isinstance(refs, Exception):
            raise refs
        else:
            for ref in refs:
                users.setdefault(ref.id, (ref, []))[1].append(backup_id)
    present = {
        info.key.rsplit("/", 1)[-1]: info.size for info in repo.store.list_info(CHUNK_PREFIX)
    }
    verified: set[str] = set()
    if repo.packed:
        verified = check_packs(
            repo, report, present, users, read_data=read_data and subset is None, progress=progress
        )
    fossils = {info.key.rsplit("/", 1)[-1] for info in repo.store.list_info(FOSSIL_PREFIX)}
    report.fossils = len(fossils)
    unread: list[tuple[ChunkRef, list[str]]] = []
    for cid, (ref, backups) in users.items():
        if cid not in present and cid not in fossils:
            report.missing_chunks.setdefault(cid, []).extend(sorted(set(backups)))
            continue
        report.chunks_checked += 1
        if not read_data or (subset is not None and not subset(cid)):
            continue
        if cid in verified or cid in report.corrupt_chunks:
            continue  # read with its pack
        unread.append((ref, backups))
    if subset is not None:
        announce_total(progress, sum(ref.stored for ref, _ in unread))
    _read_chunks(repo, report, unread, progress)
    for cid, size in present.items():
        if cid not in users:
            report.orphaned_chunks += 1
            report.orphaned_bytes += size
    report.temp_leftovers = sorted(info.key for info in repo.store.list_temporary())
    return report


def _read_chunks(
    repo: Repository,
    report: CheckReport,
    unread: list[tuple[ChunkRef, list[str]]],
    progress: ProgressCallback | None = None,
) -> None:
    """Read and verify each chunk of ``unread`` (with the backups using it), as ``read_chunk``
    does, fetched ahead where the store can: packed ones in coalesced ranged reads, in pack
    order; loose ones in parallel from a network store. Recorded in the order given."""
    wanted = [ref for ref, _ in unread]
    if repo.packed:  # in pack order, so that neighbours share a read
        where = {ref.id: repo.locate(ref.id) for ref in wanted if _HEX_ID.fullmatch(ref.id)}
        wanted.sort(key=lambda ref: _place(where.get(ref.id)))
    found: dict[str, int | Exception] = {}  # chunk id -> its size, or what is wrong
    with BlobsAhead(repo.fetch_blobs(r.id for r in wanted if _HEX_ID.fullmatch(r.id))) as ahead:
        for ref in wanted:
            try:
                if _HEX_ID.fullmatch(ref.id):
                    found[ref.id] = len(repo.decode_blob(ref, ahead.take()))
                else:
                    found[ref.id] = len(repo.read_chunk(ref))  # it names the problem
            except (IntegrityError, StorageError) as exc:
                found[ref.id] = exc
            if progress is not None:
                progress(ref.stored)
    for ref, backups in unread:
        outcome = found[ref.id]
        if isinstance(outcome, int):
            report.bytes_checked += outcome
        elif isinstance(outcome, CorruptDataError):
            report.corrupt_chunks.setdefault(ref.id, []).extend(sorted(set(backups)))
        else:
            report.missing_chunks.setdefault(ref.id, []).extend(sorted(set(backups)))


def _place(location: Location | None) -> tuple[int, str, int]:
    """The sort key of a chunk's place: packed ones by pack and offset, then loose ones."""
    return (1, "", 0) if location is None else (0, location.pack, location.offset)


_HEX_ID = re.compile(r"[0-9a-f]{64}")


def _list_id(exc: Exception) -> str:
    """The chunk-list id an error message names (``chunk list <id>: ...``), else the text."""
    text = str(exc)
    for word in text.replace(":", " ").split():
        if len(word) == 64 and all(c in "0123456789abcdef" for c in word):
            return word
    return text


def _record(where: dict[str, list[str]], cid: str, backup_id: str) -> None:
    where.setdefault(cid, []).append(backup_id)


__all__ = ["CheckReport", "check_repository"]
