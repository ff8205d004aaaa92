"""Writing a backup: entries are chunked, new chunks stored durably (``put_many``), then the
manifest is committed exclusively (the commit point). A backup exists if and only if its
manifest exists, so a crash at any instant leaves no backup or a complete one.

:class:`SnapshotWriter` is what an entry source sees of the backup being written. The writer's
half of the garbage-collection protocol (collected chunks are never reused unseen and are in
``chunks/`` before the commit; all chunks are revalidated after an expired lease) is in
:mod:`src.infra.backup.repository.gc`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import BinaryIO, Protocol

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
    ChunkRef,
    Entry,
    EntryKind,
    ListRef,
    Manifest,
    Stats,
    encode_checked,
    encode_chunk_list,
    manifest_format,
    seal_manifest,
)
from src.infra.backup.format.values import ENCODING_NAME, encode_value
from src.infra.backup.repository.blob_writer import BlobWriter
from src.infra.backup.repository.gc import Collected, collected_chunks, revalidate
from src.infra.backup.repository.locks import BACKUP_LEASE_KIND, HOSTNAME, Lease
from src.infra.backup.repository.pack_gc import revalidate_packed
from src.infra.backup.repository.reader import CHUNKS_PER_LIST, ProgressCallback, RepositoryReader

log = logging.getLogger(__name__)

BACKUP_LEASE_TTL = timedelta(minutes=10)

_FLUSH_BYTES = 16 * 1024 * 1024  # pending new chunks held in memory before a put_many


@dataclass(frozen=True)
class DataInput:
    """A data entry to store: its name and its encoded bytes."""

    name: str
    payload: bytes | memoryview
    encoding: str

    @classmethod
    def from_value(cls, name: str, value: object, *, root: str | None = None) -> DataInput:
        """Encode ``value`` with the value codec (``root`` names it in errors)."""
        return cls(name, encode_value(value, root=root or name), ENCODING_NAME)


class EntrySource(Protocol):
    """Something that stores itself as one entry of a backup: the archiver's files,
    links, directories, databases and command outputs. The repository only chunks and
    stores what a source hands to the :class:`SnapshotWriter`; it never reads the file
    system itself."""

    @property
    def name(self) -> str:
        """The entry's name in the backup."""
        ...

    def store(self, writer: SnapshotWriter) -> Entry | None:
        """Store the entry through ``writer`` and describe it; ``None`` leaves it out (the
        source has told ``writer.warn`` why)."""
        ...


@dataclass
class WriteSession:
    """Chunks written (or found) during one snapshot: id -> (size, stored size)."""

    known: dict[str, tuple[int, int]]
    blobs: BlobWriter
    lease: Lease | None = None
    referenced: dict[str, int] = field(default_factory=dict)
    # Chunks of pending collections: never taken as stored without looking (see gc.py).
    collected: Collected = field(default_factory=Collected)
    new_chunks: int = 0
    added_bytes: int = 0


class SnapshotWriter:
    """The backup being written: chunks and stores data, builds entries (large ones through
    chunk-list blobs), flushes new chunks to the store, collects warnings. An
    :class:`EntrySource` stores itself through it; data entries go through it too."""

    def __init__(
        self, repository: RepositoryWriter, session: WriteSession, parent: Manifest | None
    ) -> None:
        self._repository = repository
        self._session = session
        self._parent = {e.name: e for e in parent.entries if e.kind == "file"} if parent else {}
        self._parent_data = (
            {e.name: e for e in parent.entries if e.kind == "data"} if parent else {}
        )
        self.warnings: list[str] = []

    def previous(self, name: str) -> Entry | None:
        """The file entry of this name in the parent backup, if any."""
        return self._parent.get(name)

    def reuse(self, previous: Entry) -> list[ChunkRef] | None:
        """The chunks of ``previous`` if every one of them is known to be stored (then the
        file need not be read again), else ``None``."""
        try:
            refs = self._repository.entry_refs(previous)
        except (IntegrityError, StorageError):
            return None
        session = self._session
        if not all(ref.id in session.known for ref in refs):
            return None
        session.referenced.update((ref.id, ref.stored) for ref in refs)
        return refs

    def store_stream(self, stream: BinaryIO, size_hint: int) -> list[ChunkRef]:
        """Chunk ``stream`` to its end (content-defined cuts), store the new chunks and
        return the references; ``size_hint`` (the expected size) only picks the cutting."""
        return self.store_chunks(self._repository.chunker.split_stream(stream, size_hint))

    def store_chunks(self, chunks: Iterable[bytes | memoryview]) -> list[ChunkRef]:
        """Store chunks cut by the caller (e.g. page-aligned ones, ``chunking.split_fixed``)
        and return their references, flushing to the store as they accumulate."""
        refs = [self.store_chunk(chunk) for chunk in chunks]
        return refs

    def store_chunk(self, plain: bytes | memoryview, cid: str | None = None) -> ChunkRef:
        """Store one chunk (unless it is known to be stored) and return its reference;
        ``cid``: its id, if the caller computed it already."""
        repository, session = self._repository, self._session
        codec = repository.codec
        cid = cid or codec.chunk_id(plain)
        seen = session.known.get(cid)
        if seen is not None:
            session.referenced[cid] = seen[1]
            return ChunkRef(cid, seen[0], seen[1])
        stored = (
            repository.stored_size(cid, session.collected.packs)
            if cid not in session.collected
            else None
        )
        if stored is None:
            blob = codec.encode(plain, cid)
            stored = len(blob)
            session.blobs.add(cid, blob, len(plain))
            session.new_chunks += 1
            session.added_bytes += stored
        session.known[cid] = (len(plain), stored)
        session.referenced[cid] = stored
        if session.blobs.pending_bytes >= _FLUSH_BYTES:
            self.flush(final=False)
        return ChunkRef(cid, len(plain), stored)

    def store_data(self, item: DataInput) -> Entry:
        """Store a data entry (content-defined chunks of its encoded bytes). The chunks it
        shares, from the start, with the parent backup's entry of the same name are found by
        hashing at the parent's boundaries, not cut again (an append to a long history then
        costs one hash pass, not a chunking pass)."""
        payload = memoryview(item.payload)
        refs, start = self._shared_prefix(item.name, payload)
        chunker = self._repository.chunker
        chunks = chunker.split_from(payload, start) if start else chunker.split(payload)
        refs.extend(self.store_chunk(view) for view in chunks)
        return self.entry(item.name, "data", len(payload), refs, encoding=item.encoding)

    def _shared_prefix(self, name: str, payload: memoryview) -> tuple[list[ChunkRef], int]:
        """The references of the parent entry's chunks that ``payload`` starts with (past the
        head chunk, which is stored anew), and where they end (0: none)."""
        previous = self._parent_data.get(name)
        chunker = self._repository.chunker
        if previous is None or not chunker.cuts_alike(len(payload), previous.size):
            return [], 0
        try:
            old = self._repository.entry_refs(previous)
        except (IntegrityError, StorageError):
            return [], 0
        head = chunker.params.head_size
        if head and (not old or old[0].size != head):
            return [], 0
        shared: list[tuple[int, int, str]] = []  # (start, end, chunk id)
        offset = head
        codec = self._repository.codec
        for ref in old[1 if head else 0 : -1]:  # never the last: cut by the end of the data
            end = offset + ref.size
            if end > len(payload):
                break
            cid = codec.chunk_id(payload[offset:end])
            if cid != ref.id:
                break
            shared.append((offset, end, cid))
            offset = end
        if not shared:
            return [], 0
        refs = [self.store_chunk(payload[:head])] if head else []
        refs.extend(self.store_chunk(payload[start:end], cid) for start, end, cid in shared)
        return refs, offset

    def entry(
        self, name: str, kind: EntryKind, size: int, refs: list[ChunkRef], **meta: object
    ) -> Entry:
        """The manifest entry for stored ``refs``; large chunk lists go to chunk-list blobs of
        fixed-size groups."""
        if len(refs) <= CHUNKS_PER_LIST:
            return Entry(name=name, kind=kind, size=size, chunks=refs, **meta)  # type: ignore[arg-type]
        # The head chunk (see chunking.py) changes with every append: kept in the manifest, it
        # does not drag the first chunk list along with it.
        inline = refs[:1] if self._repository.chunker.params.head_size else []
        rest = refs[len(inline) :]
        lists = []
        for start in range(0, len(rest), CHUNKS_PER_LIST):
            group = rest[start : start + CHUNKS_PER_LIST]
            ref = self.store_chunk(encode_chunk_list(group))
            self._repository.remember_chunk_list(ref.id, group)
            lists.append(ListRef(ref.id, len(group), ref.size, ref.stored))
        return Entry(name=name, kind=kind, size=size, chunks=inline, lists=lists, **meta)  # type: ignore[arg-type]

    def warn(self, message: str) -> None:
        """Record a warning (it names the file) in the backup's manifest, and log it."""
        log.warning("%s", message)
        self.warnings.append(message)

    def flush(self, *, final: bool = True) -> None:
        """Write the chunks held in memory to the store, durably (see blob_writer.py; before
        the last flush, a format-2 repository keeps back what does not fill a pack)."""
        session = self._session
        if session.lease is not None:
            session.lease.renew_if_due()
        session.blobs.flush(final=final)

    def stats(self, entries: list[Entry]) -> Stats:
        """The statistics of a backup of ``entries`` written in this session."""
        session = self._session
        return Stats(
            logical_bytes=sum(e.size for e in entries),
            stored_bytes=sum(session.referenced.values()),
            added_bytes=session.added_bytes,
            new_chunks=session.new_chunks,
            total_chunks=sum(len(e.chunks) + sum(lr.count for lr in e.lists) for e in entries),
        )


class RepositoryWriter(RepositoryReader):
    """Writes new backups (one write path for new backups and imports)."""

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

    def collected_chunks(self) -> Collected:
        """What pending garbage collections take away (chunks moved to ``fossils/``, packs
        and the chunks that go with them): a backup must never reuse such a chunk unseen.
        Read after the backup's lease is taken."""
        collected = collected_chunks(self.store, self._collections, self._lock)
        return collected.with_whole_packs(self.pack_index)

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
    ) -> Manifest:
        if self.packed and self.store.cheap_exists:
            # Packs a prune deleted since the last backup must not be taken as stored.
            self.pack_index.refresh()
        parent = self._parent_manifest()
        known = self._known_chunks(parent)
        # Chunks of a pending collection may be deleted soon: never reuse them unseen.
        collected = self.collected_chunks()
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
        )

    def _parent_manifest(self) -> Manifest | None:
        """The backup whose chunks are known without asking the store: the last one this
        process committed while it still exists, else the newest by its id's time. (Any parent
        is correct; a recent one just deduplicates best.)"""
        last = self._last_committed
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
    ) -> Manifest:
        """Write the manifest exclusively under a fresh id (or the fixed id and time of an
        import): the backup's commit point."""
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
            return self._remember_committed(msgspec.json.decode(raw, type=Manifest), version)
        raise AssertionError("unreachable: the candidate ids never end")

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

    def _remember_committed(self, manifest: Manifest, version: str) -> Manifest:
        """Cache a just-committed manifest stored as ``version`` (the parent of this
        process's next backup); with no version known, it is not cached (it is committed
        either way)."""
        if not version:
            return manifest
        with self._lock:
            self._manifests[manifest.backup_id] = (version, manifest)
            self._last_committed = (version, manifest)
        self._remember_summary(version, summarize(manifest))
        return manifest
