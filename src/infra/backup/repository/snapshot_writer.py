"""What an entry source sees of the backup being written (:class:`SnapshotWriter`): it chunks
and stores data, builds entries (large ones through chunk-list blobs), flushes new chunks to
the store and collects warnings. :class:`RepositoryWriter` (writer.py) opens one per backup and
commits what it built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from src.infra.backup.errors import IntegrityError, StorageError
from src.infra.backup.format.blobs import BlobCodec
from src.infra.backup.format.chunking import Chunker
from src.infra.backup.format.manifest import (
    ChunkRef,
    Entry,
    EntryKind,
    ListRef,
    Manifest,
    Stats,
    encode_chunk_list,
)
from src.infra.backup.format.values import ENCODING_NAME, encode_value
from src.infra.backup.repository.blob_writer import BlobWriter
from src.infra.backup.repository.gc import Collected
from src.infra.backup.repository.locks import Lease
from src.infra.backup.repository.reader import CHUNKS_PER_LIST

log = logging.getLogger(__name__)

_FLUSH_BYTES = 16 * 1024 * 1024  # pending new chunks held in memory before a put_many


class SnapshotTarget(Protocol):
    """What a :class:`SnapshotWriter` needs of the repository it writes to."""

    chunker: Chunker

    @property
    def codec(self) -> BlobCodec: ...

    def entry_refs(self, entry: Entry, *, fresh: bool = False) -> list[ChunkRef]: ...

    def stored_size(self, cid: str, collected_packs: frozenset[str] = ...) -> int | None: ...

    def remember_chunk_list(self, cid: str, refs: list[ChunkRef]) -> None: ...


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
        self, repository: SnapshotTarget, session: WriteSession, parent: Manifest | None
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
