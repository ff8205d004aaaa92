"""Writing a backup: entries are chunked (snapshot_writer.py), new chunks stored durably, then
the manifest is committed exclusively (the commit point). A backup exists if and only if its
manifest exists, so a crash at any instant leaves no backup or a complete one.

:class:`SnapshotWriter` is what an entry source sees of the backup being written. The writer's
half of the garbage-collection protocol (collected chunks are never reused unseen and are in
``chunks/`` before the commit; all chunks are revalidated after an expired lease) is in
:mod:`src.infra.backup.repository.gc`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec

from src.infra.backup.errors import (
    BackupNotFoundError,
    CorruptDataError,
    FormatVersionError,
    IntegrityError,
    InvalidInputError,
    ObjectExistsError,
    StorageError,
)
from src.infra.backup.format.ids import (
    id_sort_key,
    is_valid_backup_id,
    new_backup_id,
    next_id,
    validate_backup_type,
)
from src.infra.backup.format.index import (
    summarize,
)
from src.infra.backup.format.layout import (
    chunk_key,
    snapshot_key,
)
from src.infra.backup.format.manifest import (
    UNSIGNED,
    Entry,
    GcState,
    Manifest,
    RunStats,
    Stats,
    encode_checked,
    manifest_format,
    seal_manifest,
)
from src.infra.backup.repository.blob_writer import BlobWriter
from src.infra.backup.repository.catalog import renew_snapshots_token
from src.infra.backup.repository.gc import (
    Collected,
    collected_chunks,
    read_gc_state,
    revalidate,
)
from src.infra.backup.repository.locks import BACKUP_LEASE_KIND, HOSTNAME, Lease
from src.infra.backup.repository.pack_gc import revalidate_packed
from src.infra.backup.repository.reader import ProgressCallback, RepositoryReader
from src.infra.backup.repository.snapshot_writer import (
    DataInput,
    EntrySource,
    SnapshotWriter,
    WriteSession,
)
from src.infra.backup.storage.requests import PUT, RequestTally, measure, ordered

log = logging.getLogger(__name__)

BACKUP_LEASE_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class _RunClock:
    """When a backup started and the store requests it has made (the manifest's ``run``)."""

    started: float
    requests: RequestTally

    def stats_with_commit(self) -> RunStats:
        """The run so far, counting the manifest write about to be made."""
        counts = self.requests.snapshot()
        counts[PUT] = counts.get(PUT, 0) + 1
        return RunStats(round(time.monotonic() - self.started, 6), ordered(counts))


class RepositoryWriter(RepositoryReader):
    """Writes new backups (one write path for new backups and imports)."""

    # The collection records' state (gc.py) the records were last listed under, and what
    # they took away then; the state the last committed backup was written under.
    _gc_listing: tuple[GcState, Collected] | None = None
    _last_committed_gc: GcState | None = None

    def stored_size(self, cid: str, collected_packs: frozenset[str] = frozenset()) -> int | None:
        """The stored size of chunk ``cid`` if it is known to be stored (in a pack no pending
        collection names, or loose), found without a round trip (``None`` on a network store:
        writing it again costs less than asking)."""
        if not self.store.cheap_exists:
            return None
        if self.packed:
            for location in self.pack_index.locations(cid):
                if location.pack not in collected_packs:
                    return location.length
        try:
            return self.store.size(chunk_key(cid))
        except KeyError:
            return None

    def collected_chunks(self, gc_state: GcState | None = None) -> Collected:
        """What pending garbage collections take away (chunks moved to ``fossils/``, packs
        and the chunks that go with them): a backup must never reuse such a chunk unseen.
        Read after the backup's lease is taken.

        ``gc_state``: the records' state read after the lease. If it is closed and the one
        the records were last listed under, they are the same and are not listed again;
        otherwise they are listed, and remembered under it if it is closed."""
        with self._lock:
            remembered = self._gc_listing
        if gc_state is not None and remembered is not None and remembered[0] == gc_state:
            collected = remembered[1]
        else:
            collected = collected_chunks(self.store, self._collections, self._lock)
            if gc_state is not None and not gc_state.open:
                with self._lock:
                    self._gc_listing = (gc_state, collected)
        return collected.with_whole_packs(self.pack_index)

    def _gc_state(self) -> GcState | None:
        """Format 2: the collection records' state (one small read); ``None`` for format 1,
        whose prunes (versions before 0.3 among them) write none."""
        return read_gc_state(self.store) if self.packed else None

    def revalidate(self, chunk_ids: Iterable[str], collected_packs: frozenset[str]) -> None:
        """Make sure every chunk of ``chunk_ids`` stays stored (a backup outlived its lease,
        or found chunks of a pending collection): see gc.py and pack_gc.py."""
        if self.packed:
            revalidate_packed(self, chunk_ids, collected_packs)
        else:
            revalidate(self.store, chunk_ids)

    def create_snapshot(
        self,
        backup_type: str,
        entries: Iterable[DataInput | EntrySource],
        *,
        tags: dict[str, str] | None = None,
        note: str | None = None,
        base_dir: str | None = None,
        progress: ProgressCallback | None = None,
        commit_as: tuple[str, datetime] | None = None,
        warnings: Sequence[str] = (),
        taken_at: datetime | None = None,
    ) -> Manifest:
        """Store the entries as a new backup and return its committed manifest.

        ``taken_at`` (aware) is the backup's time and the time in its id; by default the time
        it commits. A background backup passes the moment its state was captured.

        ``warnings`` (found before storing, e.g. while listing sources) are recorded in the
        manifest with those the entry sources report while they are stored.

        ``commit_as`` (an import) fixes the backup id and time: the manifest is then written
        exclusively once, never with a suffix (:class:`ObjectExistsError` if the id exists).

        The backup holds a lease while it runs (taken before it learns of any existing chunk),
        which tells garbage collection it may still commit; see gc.py.
        """
        validate_backup_type(backup_type)
        started = time.monotonic()
        with measure() as requests:
            lease = Lease(self.store, BACKUP_LEASE_KIND, BACKUP_LEASE_TTL).acquire()
            try:
                return self._create_snapshot(
                    backup_type,
                    entries,
                    lease,
                    tags=tags,
                    note=note,
                    base_dir=base_dir,
                    progress=progress,
                    commit_as=commit_as,
                    warnings=warnings,
                    taken_at=taken_at,
                    clock=_RunClock(started, requests) if commit_as is None else None,
                )
            finally:
                lease.release()

    def create_snapshot_as(
        self,
        backup_id: str,
        time_utc: datetime,
        backup_type: str,
        entries: Iterable[DataInput | EntrySource],
        *,
        tags: dict[str, str] | None = None,
        note: str | None = None,
        base_dir: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Manifest:
        """Like :meth:`create_snapshot`, but commit under exactly ``backup_id`` and
        ``time_utc`` (an import keeps both). The manifest is written exclusively once, never
        with a suffix: if the id is taken, :class:`ObjectExistsError` ("backup <id> already
        exists") and nothing is committed."""
        if not is_valid_backup_id(backup_id):
            raise InvalidInputError(f"invalid backup id {backup_id!r}")
        if time_utc.tzinfo is None or time_utc.utcoffset() is None:
            raise InvalidInputError("time_utc must be timezone-aware")
        return self.create_snapshot(
            backup_type,
            entries,
            tags=tags,
            note=note,
            base_dir=base_dir,
            progress=progress,
            commit_as=(backup_id, time_utc.astimezone(timezone.utc)),
        )

    def _create_snapshot(
        self,
        backup_type: str,
        entries: Iterable[DataInput | EntrySource],
        lease: Lease,
        *,
        tags: dict[str, str] | None,
        note: str | None,
        base_dir: str | None,
        progress: ProgressCallback | None,
        commit_as: tuple[str, datetime] | None = None,
        warnings: Sequence[str] = (),
        taken_at: datetime | None = None,
        clock: _RunClock | None = None,
    ) -> Manifest:
        if self.packed and self.store.cheap_exists:
            # Packs a prune deleted since the last backup must not be taken as stored.
            self.pack_index.refresh()
        gc_state = self._gc_state()
        parent = self._parent_manifest(gc_state)
        known = self._known_chunks(parent)
        # Chunks of a pending collection may be deleted soon: never reuse them unseen.
        collected = self.collected_chunks(gc_state)
        if collected:
            known = {cid: sizes for cid, sizes in known.items() if cid not in collected}
        session = WriteSession(
            known=known, blobs=BlobWriter(self), lease=lease, collected=collected
        )
        writer = SnapshotWriter(self, session, parent)
        writer.warnings.extend(warnings)
        stored_entries: list[Entry] = []
        for item in entries:
            lease.renew_if_due()
            stored = writer.store_data(item) if isinstance(item, DataInput) else item.store(writer)
            if stored is not None:
                stored_entries.append(stored)
                if progress:
                    progress(stored.size)
        writer.flush()
        if not lease.still_valid():
            # Frozen past the lease: collection may have moved chunks we reuse. Check them.
            self.revalidate(session.referenced, collected.packs)
        elif collected:
            # A pending collection may still be moving chunks this backup found in chunks/
            # (the pruner does not wait for a backup that started after its record): bring
            # those back before committing, or fail if one is gone already.
            self.revalidate(
                [cid for cid in session.referenced if cid in collected], collected.packs
            )
        stats = writer.stats(stored_entries)
        return self._commit(
            backup_type,
            stored_entries,
            stats,
            tags or {},
            note,
            parent,
            base_dir,
            commit_as,
            warnings=writer.warnings,
            taken_at=taken_at,
            gc_state=gc_state,
            clock=clock,
        )

    def _parent_manifest(self, gc_state: GcState | None) -> Manifest | None:
        """The backup whose chunks are known without asking the store: the last one this
        process committed while it still exists, else the newest by its id's time. (Any parent
        is correct; a recent one just deduplicates best.)

        Whether the last one still exists is not asked when the collection records' state
        (``gc_state``) is closed and the same as when it was committed: its chunks were all
        stored then, and none can have been collected since without a prune changing that
        state first (a deleted manifest alone removes no chunk)."""
        with self._lock:
            last, committed_under = self._last_committed, self._last_committed_gc
        unchanged = gc_state is not None and not gc_state.open and committed_under == gc_state
        if last is not None and unchanged:
            return last[1]
        if last is not None:
            try:
                if self.store.stat(snapshot_key(last[1].backup_id)).version == last[0]:
                    return last[1]
            except KeyError:
                pass  # deleted meanwhile
        for backup_id in sorted(self.snapshot_ids(), key=id_sort_key, reverse=True)[:3]:
            try:
                return self.read_manifest(backup_id)
            except (CorruptDataError, FormatVersionError, BackupNotFoundError):
                continue
        return None

    def _known_chunks(self, parent: Manifest | None) -> dict[str, tuple[int, int]]:
        known: dict[str, tuple[int, int]] = {}
        if parent is None:
            return known
        for entry in parent.entries:
            for lref in entry.lists:
                known[lref.id] = (lref.size, lref.stored)
            try:
                refs = self.entry_refs(entry)
            except (IntegrityError, StorageError):
                continue  # a damaged parent only costs dedup, never correctness
            for ref in refs:
                known[ref.id] = (ref.size, ref.stored)
        return known

    def _commit(
        self,
        backup_type: str,
        entries: list[Entry],
        stats: Stats,
        tags: dict[str, str],
        note: str | None,
        parent: Manifest | None,
        base_dir: str | None,
        fixed: tuple[str, datetime] | None = None,
        *,
        warnings: list[str] | None = None,
        taken_at: datetime | None = None,
        gc_state: GcState | None = None,
        clock: _RunClock | None = None,
    ) -> Manifest:
        """Write the manifest exclusively under a fresh id (or the fixed id and time of an
        import): the backup's commit point."""
        self.announce_type(backup_type)
        now = fixed[1] if fixed else (taken_at or datetime.now(timezone.utc))
        base_id = new_backup_id(backup_type, f"{now.astimezone():%Y%m%d_%H%M%S}")
        for backup_id in self._candidate_ids(base_id, fixed):
            manifest = Manifest(
                format=manifest_format(entries, warnings or []),
                backup_id=backup_id,
                backup_type=backup_type,
                time_utc=now,
                host=HOSTNAME,
                pid=os.getpid(),
                tags=tags,
                note=note,
                parent=parent.backup_id if parent else None,
                compression=self.compression.label,
                base_dir=base_dir,
                entries=entries,
                stats=stats,
                warnings=warnings or [],
                run=clock.stats_with_commit() if clock is not None else None,
                checksum=UNSIGNED,
            )
            raw = encode_checked(manifest)
            stored = seal_manifest(raw, self.keys, backup_id) if self.keys else raw
            try:
                version = self.store.put_versioned(snapshot_key(backup_id), stored, exclusive=True)
            except ObjectExistsError:
                if fixed:
                    raise ObjectExistsError(f"backup {backup_id} already exists") from None
                continue
            if not fixed:  # the next backup within this second starts after this id
                self._next_free = (base_id, next_id(backup_id))
            manifest = msgspec.json.decode(raw, type=Manifest)
            return self._remember_committed(manifest, version, gc_state)
        raise AssertionError("unreachable: the candidate ids never end")

    def announce_type(self, backup_type: str) -> None:
        """Before this process commits its first backup of ``backup_type`` to a format-2
        repository: renew the snapshots token, so that listings past a basis (catalog.py)
        learn of a type they may not know."""
        if not self.packed:
            return
        with self._lock:
            if backup_type in self._announced_types:
                return
        renew_snapshots_token(self.store)
        with self._lock:
            self._announced_types.add(backup_type)

    def _candidate_ids(self, base_id: str, fixed: tuple[str, datetime] | None) -> Iterator[str]:
        """The ids to try in turn: the fixed one of an import (once), else ``base_id``
        (``<type>_<local time>``), then ``_2``, ``_3`` ... (starting after the last id this
        process took within the same second)."""
        if fixed:
            yield fixed[0]
            return
        last_base, candidate = self._next_free
        if last_base != base_id:
            candidate = base_id
        while True:
            yield candidate
            candidate = next_id(candidate)

    def _remember_committed(
        self, manifest: Manifest, version: str, gc_state: GcState | None
    ) -> Manifest:
        """Cache a just-committed manifest stored as ``version`` (the parent of this
        process's next backup), written under the collection records' ``gc_state``; with no
        version known, it is not cached (it is committed either way)."""
        if not version:
            return manifest
        with self._lock:
            self._manifests[manifest.backup_id] = (version, manifest)
            self._last_committed = (version, manifest)
            self._last_committed_gc = gc_state
        self._remember_summary(version, summarize(manifest))
        return manifest
