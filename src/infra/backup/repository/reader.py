"""Reading a repository: listing backups (through the snapshot index), reading manifests,
chunk lists and chunks, verifying backups. Every byte read is verified (checksums, AEAD).

:class:`RepositoryReader` holds the state every part of the repository shares (the store,
``repo.json``, the keys, the caches). It knows nothing of writing, the user's files or policy.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

from src.infra.backup.errors import (
    BackupNotFoundError,
    CorruptDataError,
    FormatVersionError,
    IntegrityError,
    StorageError,
)
from src.infra.backup.format.blobs import BlobCodec, Compression
from src.infra.backup.format.chunking import Chunker, ChunkerParams
from src.infra.backup.format.crypto import (
    RepositoryKeys,
)
from src.infra.backup.format.ids import (
    id_sort_key,
    is_valid_backup_id,
)
from src.infra.backup.format.index import Summary, summarize
from src.infra.backup.format.layout import (
    REPO_KEY,
    SNAPSHOT_PREFIX,
    chunk_key,
    fossil_key,
    pack_key,
    snapshot_key,
)
from src.infra.backup.format.manifest import (
    ChunkRef,
    Collection,
    Entry,
    ListRef,
    Manifest,
    RepoConfig,
    decode_checked,
    decode_chunk_list,
    open_manifest,
)
from src.infra.backup.format.values import ENCODING_NAME, decode_value
from src.infra.backup.repository.blob_stream import (
    BlobStream,
    Verified,
    each_entry,
    fresh_entry_refs,
    verify_entry,
)
from src.infra.backup.repository.catalog import SummaryCatalog, list_snapshot_store
from src.infra.backup.repository.gc import read_chunk_blob
from src.infra.backup.repository.pack_index import Location, PackIndex
from src.infra.backup.repository.pack_reader import Blob, coalesced_blobs
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

CHUNKS_PER_LIST = 32

# Entries of at least this many chunks are decoded by DECODE_THREADS threads, this far ahead.
PARALLEL_DECODE_MIN = 16
DECODE_THREADS = 2
DECODE_WINDOW = 16

#: Called with a number of bytes done. A callback with a ``set_total(int)`` method is also
#: told the total when it is known (:func:`announce_total`): the CLI's progress bar.
ProgressCallback = Callable[[int], None]


def announce_total(progress: object, total: int) -> None:
    """Tell ``progress`` (any callback) how many bytes the work has, if it takes that
    (``set_total``)."""
    set_total = getattr(progress, "set_total", None)
    if callable(set_total):
        set_total(total)


_HEX_ID = re.compile(r"[0-9a-f]{64}")


def decode_data_payload(backup_id: str, entry: Entry, payload: bytes) -> object:
    """The value a data entry's verified ``payload`` holds; :class:`CorruptDataError` for an
    encoding this version does not read, or bytes that do not decode."""
    if entry.encoding != ENCODING_NAME:
        where = f"backup {backup_id}, " if backup_id else ""
        raise CorruptDataError(
            f"{where}entry {entry.name!r}: unknown value encoding "
            f"{entry.encoding!r} (this version reads {ENCODING_NAME})"
        )
    return decode_value(payload)


@dataclass
class VerifyReport:
    """The outcome of verifying one backup."""

    backup_id: str
    ok: bool
    checked_chunks: int = 0
    checked_bytes: int = 0
    problems: list[str] = field(default_factory=list)


class RepositoryReader:
    """Reads and verifies the backups of a repository on a :class:`Store`; safe to share
    between threads. :class:`Repository` adds writing, receiving and opening."""

    def __init__(
        self,
        store: Store,
        config: RepoConfig,
        compression: Compression,
        keys: RepositoryKeys | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.compression = compression
        self.keys = keys
        self.chunker = Chunker(_chunker_params(config))
        self._local = threading.local()
        self._lock = threading.Lock()
        # backup id -> (version of the stored object, parsed manifest / why it is damaged)
        self._manifests: dict[str, tuple[str, Manifest]] = {}
        self._chunk_lists: dict[str, list[ChunkRef]] = {}
        # (base id, the next id to try) of the last backup this process committed
        self._next_free: tuple[str, str] = ("", "")
        self._last_committed: tuple[str, Manifest] | None = None
        self._collections: dict[str, tuple[str, Collection]] = {}
        self._announced_types: set[str] = set()  # see RepositoryWriter.announce_type
        self.catalog = SummaryCatalog(store, keys)
        # Listing the newest keys past a basis needs StartAfter and the snapshots token.
        self.catalog.tails = config.format >= 2 and not store.cheap_exists
        self.pack_index = PackIndex(store, keys)

    @property
    def packed(self) -> bool:
        """Whether new chunks go into packs (repository format 2) rather than one object
        each (format 1). Readers of either look in packs first, then at loose chunks."""
        return self.config.format >= 2

    @property
    def encrypted(self) -> bool:
        """Whether chunks and manifests are encrypted."""
        return self.keys is not None

    @property
    def codec(self) -> BlobCodec:
        """This thread's blob codec (compression and encryption of chunks)."""
        codec: BlobCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = BlobCodec(self.compression, self.keys)
            self._local.codec = codec
        return codec

    def snapshot_ids(self) -> list[str]:
        """Ids of all committed backups (unordered; a directory listing, no manifest reads)."""
        ids = []
        for key in self.store.list(SNAPSHOT_PREFIX):
            name = key[len(SNAPSHOT_PREFIX) :]
            if name.endswith(".json") and "/" not in name:
                ids.append(name[: -len(".json")])
        return ids

    def read_manifest(self, backup_id: str, *, version: str | None = None) -> Manifest:
        """The verified manifest of ``backup_id``.

        Parsed manifests are cached by the stored object's version (``version`` as listed, else
        one stat), so a deleted and re-created id or a damaged file is never served stale.
        """
        if not is_valid_backup_id(backup_id):
            raise BackupNotFoundError(f"backup not found: {backup_id!r} is not a valid backup id")
        if version is None:
            try:
                version = self.store.stat(snapshot_key(backup_id)).version
            except KeyError:
                raise BackupNotFoundError(f"backup not found: {backup_id}") from None
        cached = self._manifests.get(backup_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        manifest = self._fetch_manifest(backup_id, version)
        with self._lock:
            self._manifests[backup_id] = (version, manifest)
        self._remember_summary(version, summarize(manifest))
        return manifest

    def _fetch_manifest(self, backup_id: str, version: str) -> Manifest:
        """Read and verify a manifest from the store; remembers its summary."""
        try:
            stored = self.store.get(snapshot_key(backup_id))
        except KeyError:
            raise BackupNotFoundError(f"backup not found: {backup_id}") from None
        raw = open_manifest(stored, self.keys, backup_id)
        manifest = decode_checked(raw, Manifest, f"manifest of backup {backup_id}")
        if manifest.backup_id != backup_id:
            raise CorruptDataError(
                f"manifest of backup {backup_id}: it names itself {manifest.backup_id!r}"
            )
        return manifest

    def _remember_summary(self, version: str, summary: Summary) -> None:
        self.catalog.remember(version, summary)

    def _listed_manifests(self) -> dict[str, str]:
        """Backup id -> version of its manifest, as the store lists them now. Forgets what is
        cached of backups that are gone or were replaced."""
        listing = list_snapshot_store(self.store, validate=True)
        self.catalog.retain(listing)
        listed = listing.versions or {}
        with self._lock:
            for gone in [i for i, m in self._manifests.items() if listed.get(i) != m[0]]:
                del self._manifests[gone]
        return listed

    def summary_is_current(self, backup_id: str) -> bool:
        """Whether the summary this process holds for ``backup_id`` still describes the
        stored manifest (one stat)."""
        return self.catalog.is_current(backup_id)

    def list_snapshots(self) -> list[Manifest]:
        """Manifests of all readable backups, newest first. Damaged ones are skipped (logged)."""
        listed = self._listed_manifests()
        manifests = []
        for backup_id, version in listed.items():
            if self.catalog.is_damaged(backup_id):
                continue
            try:
                manifests.append(self.read_manifest(backup_id, version=version))
            except BackupNotFoundError:
                continue  # deleted while we listed
            except (CorruptDataError, FormatVersionError) as exc:
                self.catalog.note_damaged(backup_id, version, str(exc))
        manifests.sort(key=lambda m: (m.time_utc, id_sort_key(m.backup_id)), reverse=True)
        return manifests

    def list_summaries(self, *, validate: bool = True) -> list[Summary]:
        """Summaries of all readable backups, newest first (damaged ones skipped, logged).

        Reads only the manifests that neither this process nor the snapshot index knows; when
        it had to read many, it rewrites the index so the next fresh process need not.
        ``validate=False`` lists names and listing tokens only (no stat per manifest; see
        ``repository/catalog.py``): a summary may then describe a backup since deleted and
        re-created under the same id, so check :meth:`summary_is_current` before acting on
        one.
        """
        return self.catalog.summaries(self._fetch_summary, validate=validate)

    def _fetch_summary(self, backup_id: str, version: str) -> Summary:
        manifest = self._fetch_manifest(backup_id, version)
        with self._lock:
            self._manifests[backup_id] = (version, manifest)
        return summarize(manifest)

    def damaged_snapshots(self) -> dict[str, str]:
        """Backups whose manifest could not be read at the last listing, with the reason."""
        return self.catalog.damaged()

    def entry_refs(self, entry: Entry, *, fresh: bool = False) -> list[ChunkRef]:
        """All chunk references of an entry, resolving chunk-list blobs (read again from the
        store with ``fresh``, as verification must, else possibly from the cache)."""
        refs = list(entry.chunks)  # inline chunks come first, then those of the lists
        for ref in entry.lists:
            refs.extend(self._read_chunk_list(ref, fresh=fresh))
        return refs

    def iter_entry_refs(self, entries: Iterable[Entry]) -> Iterator[list[ChunkRef] | Exception]:
        """:meth:`entry_refs` of each entry, in order, with the chunk lists not cached yet
        fetched ahead (coalesced, in parallel) instead of one round trip each. An entry whose
        chunk list is damaged or missing yields its error instead (the others go on)."""
        todo = list(entries)
        with self._lock:
            cached = set(self._chunk_lists)  # and each other list is fetched once

        def first(cid: str) -> bool:
            if cid in cached:
                return False
            cached.add(cid)
            return True

        fetch = [[first(r.id) for r in entry.lists] for entry in todo]
        wanted = [
            lref.id
            for entry, flags in zip(todo, fetch, strict=True)
            for lref, flag in zip(entry.lists, flags, strict=True)
            if flag
        ]
        blobs = self.fetch_blobs(wanted)
        for entry, fetched in zip(todo, fetch, strict=True):
            # Every blob fetched for this entry is taken, even after an error: they are in order.
            stored = [next(blobs) if flag else None for flag in fetched]
            try:
                refs = list(entry.chunks)
                for lref, flag, blob in zip(entry.lists, fetched, stored, strict=True):
                    if flag:
                        refs.extend(self._decode_chunk_list(lref, blob))
                    else:
                        refs.extend(self._read_chunk_list(lref))
            except (IntegrityError, StorageError) as exc:
                yield exc
                continue
            yield refs

    def _decode_chunk_list(self, ref: ListRef, blob: Blob | None) -> list[ChunkRef]:
        if not _is_hex_id(ref.id):
            raise CorruptDataError(f"invalid chunk id {ref.id!r} in a manifest")
        plain = self.decode_blob(ChunkRef(ref.id, ref.size, ref.stored), blob)
        refs = decode_chunk_list(plain, f"chunk list {ref.id}")
        if len(refs) != ref.count:
            raise CorruptDataError(f"chunk list {ref.id}: {len(refs)} chunks, not {ref.count}")
        with self._lock:
            self._chunk_lists[ref.id] = refs
        return refs

    def remember_chunk_list(self, cid: str, refs: list[ChunkRef]) -> None:
        """Cache the chunk references a chunk-list blob just written holds."""
        with self._lock:
            self._chunk_lists[cid] = refs

    def chunk_present(self, cid: str, packs_seen: set[str] | None = None) -> bool:
        """Whether a chunk is stored: in a pack that exists (``packs_seen``: packs already
        found to exist, to ask once per pack), or loose in ``chunks/`` or ``fossils/``."""
        if self.packed:
            self.pack_index.ensure_loaded()
            for location in self.pack_index.locations(cid):
                if packs_seen is not None and location.pack in packs_seen:
                    return True
                if self.store.exists(pack_key(location.pack)):
                    if packs_seen is not None:
                        packs_seen.add(location.pack)
                    return True
        return self.store.exists(chunk_key(cid)) or self.store.exists(fossil_key(cid))

    def read_blob(self, cid: str) -> bytes:
        """The stored blob of chunk ``cid``: from a pack (format 2), else loose (``chunks/``,
        or ``fossils/`` where a collection moved it); with the pack index read again once if
        neither has it (garbage collection may have repacked it meanwhile)."""
        if self.packed:
            self.pack_index.ensure_loaded()
            blob = self._read_packed(cid)
            if blob is not None:
                return blob
        try:
            return read_chunk_blob(self.store, cid)
        except IntegrityError:
            # Repacked since the index was read, or (format 1) packed by a `migrate` since
            # this process opened the repository and its loose copy collected.
            self.pack_index.refresh()
            blob = self._read_packed(cid)
            if blob is None:
                raise
            return blob

    def _read_packed(self, cid: str) -> bytes | None:
        for location in self.pack_index.locations(cid):
            try:
                blob = self.store.get_range(
                    pack_key(location.pack), location.offset, location.length
                )
            except KeyError:
                continue  # the pack is gone (repacked): try another location
            return _whole(blob, location, cid)
        return None

    def fetch_blobs(self, cids: Iterable[str]) -> Iterator[Blob | None]:
        """The stored blobs of ``cids`` in order, fetched ahead where the store can (packed
        blobs in coalesced ranged reads: ``pack_reader.py``); ``None`` where the first place
        looked had nothing (then :meth:`read_blob` looks everywhere)."""
        if not self.packed:
            return self.store.get_many(chunk_key(cid) for cid in cids)
        self.pack_index.ensure_loaded()
        return coalesced_blobs(self.store, (self.pack_index.locate(cid) for cid in cids))

    def locate(self, cid: str) -> Location | None:
        """One place in a pack where chunk ``cid`` is (``None``: not packed, as far as the
        pack index knows)."""
        self.pack_index.ensure_loaded()
        return self.pack_index.locate(cid)

    def stream_entries(self, entries: Sequence[Entry]) -> BlobStream:
        """The verified chunks of ``entries``, fetched ahead in coalesced reads for several
        consumers (a tree restore from a network store; :class:`BlobStream`). Close it."""
        self.pack_index.ensure_loaded()
        return BlobStream(self, entries)

    def _read_chunk_list(self, ref: ListRef, *, fresh: bool = False) -> list[ChunkRef]:
        cached = None if fresh else self._chunk_lists.get(ref.id)
        if cached is None:
            cached = self._decode_chunk_list(ref, None)
        return cached

    def read_chunk(self, ref: ChunkRef) -> bytes:
        """The verified plaintext of one chunk."""
        if not _is_hex_id(ref.id):
            raise CorruptDataError(f"invalid chunk id {ref.id!r} in a manifest")
        return self.codec.decode(self.read_blob(ref.id), ref.id, ref.size)

    def iter_entry(self, entry: Entry) -> Iterator[bytes]:
        """The verified chunks of an entry, in order. A large entry's chunks are fetched,
        decompressed and checked by :data:`DECODE_THREADS` threads (zstd, BLAKE3 and file
        reads release the GIL), at most :data:`DECODE_WINDOW` ahead of the consumer."""
        if entry.lists and not self.store.cheap_exists:  # its chunk lists fetched at once
            found = next(self.iter_entry_refs([entry]))
            if isinstance(found, Exception):
                raise found
            refs = found
        else:
            refs = self.entry_refs(entry)
        for ref in refs:
            if not _is_hex_id(ref.id):
                raise CorruptDataError(f"invalid chunk id {ref.id!r} in a manifest")
        if len(refs) < PARALLEL_DECODE_MIN:
            blobs = self.fetch_blobs(ref.id for ref in refs)
            for ref, blob in zip(refs, blobs, strict=True):
                yield self.decode_blob(ref, blob)
            return
        # A local store reads in the workers too; a network store fetches ahead on its own.
        fetched: Iterable[Blob | None] = (
            itertools.repeat(None)
            if self.store.cheap_exists
            else self.fetch_blobs(ref.id for ref in refs)
        )
        with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="peak-backup-decode") as pool:
            pending: deque[Future[bytes]] = deque()
            for ref, blob in zip(refs, fetched, strict=False):  # fetched may be endless
                pending.append(pool.submit(self.decode_blob, ref, blob))
                if len(pending) >= DECODE_WINDOW:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def decode_blob(self, ref: ChunkRef, blob: Blob | None) -> bytes:
        """The verified plaintext of ``ref`` from its stored ``blob`` (``None``: read it,
        from any pack that has it, ``chunks/`` or, if a collection moved it, ``fossils/``)."""
        if blob is None:
            blob = self.read_blob(ref.id)
        # BlobCodec.decode reads any bytes-like object: a slice of a coalesced read is not
        # copied first.
        return self.codec.decode(cast(bytes, blob), ref.id, ref.size)

    def read_value(self, manifest: Manifest, entry: Entry) -> object:
        """The value of data entry ``entry`` of ``manifest``, every chunk verified."""
        return decode_data_payload(manifest.backup_id, entry, self.read_entry(entry))

    def read_entry(self, entry: Entry) -> bytes:
        """The verified content of an entry."""
        data = b"".join(self.iter_entry(entry))
        if len(data) != entry.size:
            raise CorruptDataError(f"entry {entry.name!r}: {len(data)} bytes, not {entry.size}")
        return data

    def file_matches_entry(self, path: Path, entry: Entry) -> bool:
        """Whether the file at ``path`` holds exactly the entry's content: each chunk's byte
        range is read and hashed and compared with the manifest's chunk id (so it holds for
        any way the entry was cut: content-defined, page-aligned, a command's stream)."""
        refs = self.entry_refs(entry)
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size != entry.size:
                    return False
                codec = self.codec
                for ref in refs:
                    piece = handle.read(ref.size)
                    if len(piece) != ref.size or codec.chunk_id(piece) != ref.id:
                        return False
                return handle.read(1) == b""
        except OSError:
            return False

    def verify_snapshot(
        self,
        backup_id: str,
        *,
        read_data: bool = True,
        check_data: Callable[[Entry, bytes], None] | None = None,
        progress: ProgressCallback | None = None,
    ) -> VerifyReport:
        """Check a backup: its manifest, and every chunk (read and hashed, or only present).

        With ``read_data``, ``check_data(entry, content)`` is also called for each data entry
        (to decode it, say) from the same read, so verification reads every chunk once. From a
        network store the chunks and chunk lists come in coalesced, parallel reads within a
        bounded budget (``blob_stream.each_entry``), entries checked on two threads (data
        entries one at a time); a local store reads chunk by chunk (its reads cost little).
        ``progress`` is called with the size of each entry checked.
        """
        report = VerifyReport(backup_id, ok=True)
        if self.packed:
            self.pack_index.refresh()  # damage or a prune since this process last looked
        try:
            manifest = self.read_manifest(backup_id)
        except (BackupNotFoundError, CorruptDataError, FormatVersionError, StorageError) as exc:
            report.ok = False
            report.problems.append(str(exc))
            return report
        entries, packs_seen = manifest.entries, set[str]()
        present = partial(self.chunk_present, packs_seen=packs_seen)
        if read_data and not self.store.cheap_exists:
            whole = threading.Lock()  # a data entry's content is held whole: one at a time

            def work(stream: BlobStream, i: int) -> Verified:
                refs, chunks = (lambda _: stream.refs(i)), (lambda _: stream.chunks(i))
                with whole if check_data and entries[i].kind == "data" else nullcontext():
                    return verify_entry(entries[i], refs, chunks, present, check_data)

            outcomes = each_entry(self, entries, work, refs=partial(fresh_entry_refs, self))
        else:
            fresh = partial(self.entry_refs, fresh=True)  # chunk by chunk, each read when taken
            read = (
                (lambda found: map(self.decode_blob, found, itertools.repeat(None)))
                if read_data
                else None
            )
            outcomes = (verify_entry(e, fresh, read, present, check_data) for e in entries)
        with closing(outcomes):
            for entry, (chunks, size, problem) in zip(entries, outcomes, strict=True):
                report.checked_chunks += chunks
                report.checked_bytes += size
                if progress is not None:
                    progress(size)
                if problem is not None:
                    report.ok = False
                    report.problems.append(f"entry {entry.name!r}: {problem}")
        return report


def _whole(blob: bytes, location: Location, cid: str) -> bytes:
    if len(blob) != location.length:
        raise CorruptDataError(f"pack {location.pack}: cut short at chunk {cid}")
    return blob


def _is_hex_id(cid: str) -> bool:
    return len(cid) == 64 and _HEX_ID.fullmatch(cid) is not None


def _chunker_params(config: RepoConfig) -> ChunkerParams:
    chunker = config.chunker
    try:
        params = ChunkerParams(
            avg_size=int(chunker["avg_size"]),
            min_size=int(chunker["min_size"]),
            max_size=int(chunker["max_size"]),
            single_chunk_below=int(chunker["single_chunk_below"]),
            algorithm=str(chunker["algorithm"]),
            head_size=int(chunker.get("head_size", 0)),
            fine_avg_size=int(chunker.get("fine_avg_size", 0)),
            fine_below=int(chunker.get("fine_below", 0)),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptDataError(f"{REPO_KEY}: invalid chunker parameters ({exc})") from exc
    # pyfastcdc's own limits; anything else would make it raise, or misbehave.
    if (
        params.algorithm != "fastcdc2020"
        or not 256 <= params.avg_size <= 4 * 1024 * 1024
        or not 64 <= params.min_size <= min(params.avg_size, 1024 * 1024)
        or not max(params.avg_size, 1024) <= params.max_size <= 16 * 1024 * 1024
        or not 0 <= params.single_chunk_below <= 16 * 1024 * 1024
        or not 0 <= params.head_size <= min(params.single_chunk_below, 1024 * 1024)
        or not (params.fine_avg_size == 0 or 256 <= params.fine_avg_size <= params.avg_size)
        or not 0 <= params.fine_below <= 1024 * 1024 * 1024
    ):
        raise CorruptDataError(f"{REPO_KEY}: invalid chunker parameters {chunker}")
    return params
