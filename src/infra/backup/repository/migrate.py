"""``migrate``: upgrade a format-1 repository (one object per chunk) to format 2 (packs) in
place, crash-safely.

1. Under the prune lock (no collection runs meanwhile), every loose chunk a backup uses is
   read, verified and copied into packs, with index files; chunks already packed (by an
   interrupted earlier run) are skipped, so a rerun continues where a crash stopped it.
2. ``repo.json`` is rewritten with ``"format": 2`` (one atomic write): from then on new
   chunks go into packs, and every reader looks in packs first.
3. The loose copies stay until ``prune`` collects them (two phases, with the grace period, as
   any garbage): processes that still hold the repository open as format 1 keep finding
   them meanwhile.

A crash before step 2 leaves a format-1 repository with some extra packs (readers of either
format find every chunk where it was); after it, a format-2 repository. Damaged loose chunks
are reported and left where they are (``check`` keeps reporting them). Running ``migrate``
on a format-2 repository packs the loose chunks it still has (e.g. ones a format-1 process
wrote after the upgrade).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from src.infra.backup.errors import CorruptDataError, IntegrityError
from src.infra.backup.format.layout import CHUNK_PREFIX, REPO_KEY, chunk_id_of
from src.infra.backup.format.manifest import REPO_FORMAT_VERSION, encode_checked
from src.infra.backup.repository.blob_writer import BlobWriter
from src.infra.backup.repository.gc import PRUNE_LOCK_TTL, close_gc_state
from src.infra.backup.repository.locks import ExclusiveLock
from src.infra.backup.repository.repository import Repository

log = logging.getLogger(__name__)

# Chunks held in memory before the packs they fill are written.
_FLUSH_BYTES = 32 * 1024 * 1024


@dataclass
class MigrateReport:
    """What :func:`migrate_repository` did."""

    format_before: int
    format_after: int
    chunks_packed: int = 0
    bytes_packed: int = 0
    packs_written: int = 0
    already_packed: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # chunk id -> why it stayed loose


def migrate_repository(
    repo: Repository, *, lock_wait: float = 0.0, progress: Callable[[int], None] | None = None
) -> MigrateReport:
    """Upgrade ``repo`` to the current format (see the module docstring)."""
    report = MigrateReport(format_before=repo.config.format, format_after=repo.config.format)
    lock = ExclusiveLock(repo.store, "prune", PRUNE_LOCK_TTL).acquire(lock_wait)
    try:
        sizes = _used_chunk_sizes(repo)
        index = repo.pack_index
        index.refresh()
        sink = BlobWriter(repo, force_packs=True)
        for key in sorted(repo.store.list(CHUNK_PREFIX)):
            cid = chunk_id_of(key)
            if cid not in sizes:
                continue  # used by no backup: prune reclaims it
            if index.locate(cid) is not None:
                report.already_packed += 1
                continue
            lock.renew_if_due()
            try:
                blob = repo.store.get(key)
                repo.codec.decode(blob, cid, sizes[cid])
            except KeyError:
                continue  # collected meanwhile (a prune before ours)
            except (CorruptDataError, IntegrityError) as exc:
                log.warning("leaving damaged chunk %s loose: %s", cid, exc)
                report.damaged[cid] = str(exc)
                continue
            sink.add(cid, blob, sizes[cid])
            report.chunks_packed += 1
            report.bytes_packed += len(blob)
            if progress is not None:
                progress(len(blob))
            if sink.pending_bytes >= _FLUSH_BYTES:
                sink.flush(final=False)
        sink.flush(final=True)
        report.packs_written = len(sink.packs_written)
        if repo.config.format < REPO_FORMAT_VERSION:
            config = msgspec.structs.replace(repo.config, format=REPO_FORMAT_VERSION)
            close_gc_state(repo.store)  # the records are settled: we hold the prune lock
            repo.store.put(REPO_KEY, encode_checked(config))
            repo.config = config
            report.format_after = REPO_FORMAT_VERSION
    finally:
        lock.release()
    return report


def _used_chunk_sizes(repo: Repository) -> dict[str, int]:
    """Plaintext size of every chunk (and chunk list) a backup uses: a loose chunk's object
    does not record it, and verifying needs it."""
    repo.list_snapshots()
    damaged = repo.damaged_snapshots()
    if damaged:
        raise IntegrityError(
            "cannot tell which chunks are in use: damaged manifests "
            f"({', '.join(sorted(damaged))}); run `check`, then delete or repair them"
        )
    sizes: dict[str, int] = {}
    for manifest in repo.list_snapshots():
        for entry in manifest.entries:
            for lref in entry.lists:
                sizes[lref.id] = lref.size
            for ref in repo.entry_refs(entry):
                sizes[ref.id] = ref.size
    return sizes
