"""Snapshots over a store: write chunks, commit manifests, read, verify, delete.

The commit protocol: every new chunk is written durably first (one ``put_many`` call: fsync per
file, one fsync per directory); then the manifest is written exclusively. A backup exists if and
only if its manifest exists, so a crash at any instant leaves no backup or a complete one. The
repository knows nothing of trading, retention or the CLI.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO, Protocol

import msgspec

from src.infra.backup.errors import (
    BackupNotFoundError,
    CorruptDataError,
    FormatVersionError,
    IntegrityError,
    InvalidInputError,
    ObjectExistsError,
    PassphraseRequiredError,
    RepositoryNotFoundError,
    StorageError,
)
from src.infra.backup.format.blobs import BlobCodec, Compression
from src.infra.backup.format.chunking import NEW_REPOSITORY_CHUNKER, Chunker, ChunkerParams
from src.infra.backup.format.crypto import (
    AEAD_ALGORITHMS,
    EncryptionHeader,
    RepositoryKeys,
    create_encryption,
    rewrap,
    unlock,
)
from src.infra.backup.format.ids import (
    id_sort_key,
    is_valid_backup_id,
    next_id,
    validate_backup_type,
)
from src.infra.backup.format.index import (
    IndexedSummary,
    Summary,
    decode_index,
    encode_index,
    summarize,
)
from src.infra.backup.format.layout import (
    CHUNK_PREFIX,
    COLLECTION_PREFIX,
    INDEX_KEY,
    REPO_KEY,
    SNAPSHOT_PREFIX,
    chunk_id_of,
    chunk_key,
    fossil_key,
    snapshot_key,
)
from src.infra.backup.format.manifest import (
    JSON_ERRORS,
    REPO_FORMAT_VERSION,
    UNSIGNED,
    ChunkRef,
    Collection,
    Entry,
    EntryKind,
    ListRef,
    Manifest,
    RepoConfig,
    Stats,
    decode_checked,
    decode_chunk_list,
    encode_checked,
    encode_chunk_list,
    manifest_format,
    open_manifest,
    seal_manifest,
)
from src.infra.backup.format.values import ENCODING_NAME, decode_value, encode_value
from src.infra.backup.repository.locks import HOSTNAME, Lease
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

BACKUP_LEASE_KIND = "backup"
BACKUP_LEASE_TTL = timedelta(minutes=10)
_HEX_ID = re.compile(r"[0-9a-f]{64}")
CHUNKS_PER_LIST = 32
# Listing: read the snapshot index when more manifests than this are unknown; rewrite it
# after a listing had to read at least this many manifests.
INDEX_MIN_UNKNOWN = 16
INDEX_REWRITE_UNKNOWN = 64
_FLUSH_BYTES = 16 * 1024 * 1024  # pending new chunks held in memory before a put_many
ProgressCallback = Callable[[int], None]
_SortKey = tuple[datetime, tuple[str, int, str]]
PassphraseSource = Callable[[], str]


@dataclass(frozen=True)
class DataInput:
    """A data entry to store: its name and its encoded bytes."""

    name: str
    payload: bytes
    encoding: str

    @classmethod
    def from_value(cls, name: str, value: object, *, root: str | None = None) -> DataInput:
        """Encode ``value`` with the value codec (``root`` names it in errors)."""
        return cls(name, encode_value(value, root=root or name), ENCODING_NAME)


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
class VerifyReport:
    """The outcome of verifying one backup."""

    backup_id: str
    ok: bool
    checked_chunks: int = 0
    checked_bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Received:
    """What :meth:`Repository.receive_snapshot` did: ``outcome`` is ``"copied"``,
    ``"present"`` (already here, identical) or ``"renamed"`` (stored as ``backup_id``)."""

    backup_id: str
    outcome: str
    blobs: int = 0
    bytes: int = 0


@dataclass
class _Pending:
    """Chunks written (or found) during one snapshot: id -> (size, stored size)."""

    known: dict[str, tuple[int, int]]
    lease: Lease | None = None
    referenced: dict[str, int] = field(default_factory=dict)
    blobs: list[tuple[str, bytes]] = field(default_factory=list)
    pending_bytes: int = 0
    new_chunks: int = 0
    added_bytes: int = 0


class SnapshotWriter:
    """What an :class:`EntrySource` sees of the backup being written: chunk and store a
    stream, reuse the previous backup's entry, build the entry, report a warning."""

    def __init__(self, repository: Repository, pending: _Pending, parent: Manifest | None) -> None:
        self._repository = repository
        self._pending = pending
        self._parent = {e.name: e for e in parent.entries if e.kind == "file"} if parent else {}
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
        pending = self._pending
        if not all(ref.id in pending.known for ref in refs):
            return None
        pending.referenced.update((ref.id, ref.stored) for ref in refs)
        return refs

    def store_stream(self, stream: BinaryIO, size_hint: int) -> list[ChunkRef]:
        """Chunk ``stream`` to its end (content-defined cuts), store the new chunks and
        return the references; ``size_hint`` (the expected size) only picks the cutting."""
        return self.store_chunks(self._repository.chunker.split_stream(stream, size_hint))

    def store_chunks(self, chunks: Iterable[bytes | memoryview]) -> list[ChunkRef]:
        """Store chunks cut by the caller (e.g. page-aligned ones, ``chunking.split_fixed``)
        and return their references, flushing to the store as they accumulate."""
        repository, pending = self._repository, self._pending
        refs = []
        for chunk in chunks:
            refs.append(repository._store_chunk(chunk, pending))
            if pending.pending_bytes >= _FLUSH_BYTES:
                repository._flush(pending)
        return refs

    def entry(
        self, name: str, kind: EntryKind, size: int, refs: list[ChunkRef], **meta: object
    ) -> Entry:
        """The manifest entry for stored ``refs`` (large ones through chunk-list blobs)."""
        return self._repository._entry(name, kind, size, refs, self._pending, **meta)

    def warn(self, message: str) -> None:
        """Record a warning (it names the file) in the backup's manifest, and log it."""
        log.warning("%s", message)
        self.warnings.append(message)


class Repository:
    """A backup repository on a :class:`Store`. Safe to share between threads."""

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
        self._damaged: dict[str, tuple[str, str]] = {}
        self._chunk_lists: dict[str, list[ChunkRef]] = {}
        self._id_hint: dict[str, int] = {}
        self._last_committed: tuple[str, Manifest] | None = None
        self._collections: dict[str, tuple[str, frozenset[str]]] = {}
        # backup id -> (manifest version, summary, sort key); the last sorted listing
        self._summaries: dict[str, tuple[str, Summary, _SortKey]] = {}
        self._sorted: list[Summary] = []
        self._sorted_for: dict[str, str] | None = None
        self._index_version: str | None = None

    @property
    def encrypted(self) -> bool:
        """Whether chunks and manifests are encrypted."""
        return self.keys is not None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        store: Store,
        *,
        compression: Compression | None = None,
        create: bool = True,
        passphrase: PassphraseSource | None = None,
        encryption: str = "none",
    ) -> Repository:
        """Open the repository in ``store``, creating it (``repo.json``) if allowed.

        ``encryption`` (an AEAD name or ``"none"``) only matters when the repository is
        created. ``passphrase`` is called when the repository is (or is to be) encrypted.
        """
        compression = compression or Compression()
        created: RepositoryKeys | None = None
        try:
            raw = store.get(REPO_KEY)
        except KeyError:
            if not create:
                raise RepositoryNotFoundError(
                    f"no backup repository at {store.location} (the first backup creates it)"
                ) from None
            raw, created = cls._initialize(store, encryption, passphrase)
        config = decode_checked(raw, RepoConfig, f"{store.location}/{REPO_KEY}")
        if config.hash != "blake3-256":
            raise FormatVersionError(f"unsupported chunk hash {config.hash!r} in {REPO_KEY}")
        keys = None
        if config.encryption is not None:
            header = EncryptionHeader.from_json(config.encryption)
            if created is not None:
                keys = created
            else:
                if passphrase is None:
                    raise PassphraseRequiredError(
                        f"the repository at {store.location} is encrypted: give its passphrase"
                    )
                keys = unlock(header, passphrase(), cache_key=config.repository_id)
        return cls(store, config, compression, keys)

    @staticmethod
    def _initialize(
        store: Store, encryption: str, passphrase: PassphraseSource | None
    ) -> tuple[bytes, RepositoryKeys | None]:
        repository_id = uuid.uuid4().hex
        header_json = None
        keys = None
        if encryption != "none":
            if encryption not in AEAD_ALGORITHMS:
                raise InvalidInputError(
                    f"unknown encryption {encryption!r}: expected none or "
                    + " or ".join(AEAD_ALGORITHMS)
                )
            if passphrase is None:
                raise PassphraseRequiredError("a new encrypted repository needs a passphrase")
            header, keys = create_encryption(passphrase(), aead=encryption, cache_key=repository_id)
            header_json = header.to_json()
        config = RepoConfig(
            format=REPO_FORMAT_VERSION,
            repository_id=repository_id,
            created_utc=datetime.now(timezone.utc),
            hash="blake3-256",
            chunker=dict(NEW_REPOSITORY_CHUNKER.to_json()),  # type: ignore[arg-type]
            encryption=header_json,
        )
        raw = encode_checked(config)
        try:
            store.put(REPO_KEY, raw, exclusive=True)
        except ObjectExistsError:
            return store.get(REPO_KEY), None  # another process initialized it first
        return raw, keys

    def change_passphrase(self, old: str, new: str) -> None:
        """Re-wrap the master key under a new passphrase; no data is rewritten."""
        if self.config.encryption is None:
            raise InvalidInputError("the repository is not encrypted: it has no passphrase")
        header = EncryptionHeader.from_json(self.config.encryption)
        updated = rewrap(header, old, new, cache_key=self.config.repository_id)
        config = msgspec.structs.replace(self.config, encryption=updated.to_json())
        self.store.put(REPO_KEY, encode_checked(config))
        self.config = config

    @property
    def _codec(self) -> BlobCodec:
        codec: BlobCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = BlobCodec(self.compression, self.keys)
            self._local.codec = codec
        return codec

    # -- reading ---------------------------------------------------------------------------

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
        self._remember_summary(version, summarize(manifest))
        return manifest

    def _remember_summary(self, version: str, summary: Summary) -> None:
        key = (summary.time_utc, id_sort_key(summary.backup_id))
        with self._lock:
            self._summaries[summary.backup_id] = (version, summary, key)

    def _listed_manifests(self) -> dict[str, str]:
        """Backup id -> version of its manifest, as the store lists them now. Forgets what is
        cached of backups that are gone or were replaced."""
        listed: dict[str, str] = {}
        start = len(SNAPSHOT_PREFIX)
        for info in self.store.list_info(SNAPSHOT_PREFIX):
            name = info.key[start:]
            if name.endswith(".json") and "/" not in name:
                listed[name[:-5]] = info.version
        with self._lock:
            for gone in [i for i in self._manifests if i not in listed]:
                del self._manifests[gone]
            for gone in [i for i, s in self._summaries.items() if listed.get(i) != s[0]]:
                del self._summaries[gone]
            self._damaged = {
                i: entry for i, entry in self._damaged.items() if listed.get(i) == entry[0]
            }
        return listed

    def _listed_names(self) -> dict[str, str]:
        """Like :meth:`_listed_manifests`, but the version of an id this process knows is
        taken from its cache instead of the store (no stat per object)."""
        start = len(SNAPSHOT_PREFIX)
        summaries, damaged = self._summaries, self._damaged
        listed: dict[str, str] = {}
        for key in self.store.list(SNAPSHOT_PREFIX):
            name = key[start:]
            if not name.endswith(".json") or "/" in name:
                continue
            backup_id = name[:-5]
            known = summaries.get(backup_id) or damaged.get(backup_id)
            if known is not None:
                listed[backup_id] = known[0]
                continue
            try:
                listed[backup_id] = self.store.stat(key).version
            except KeyError:
                continue  # deleted while we listed
        with self._lock:
            for gone in [i for i in self._manifests if i not in listed]:
                del self._manifests[gone]
            for gone in [i for i in self._summaries if i not in listed]:
                del self._summaries[gone]
            self._damaged = {i: e for i, e in self._damaged.items() if i in listed}
        return listed

    def summary_is_current(self, backup_id: str) -> bool:
        """Whether the summary this process holds for ``backup_id`` still describes the
        stored manifest (one stat)."""
        known = self._summaries.get(backup_id)
        try:
            version = self.store.stat(snapshot_key(backup_id)).version
        except KeyError:
            return False
        return known is not None and known[0] == version

    def _note_damaged(self, backup_id: str, version: str, exc: Exception) -> None:
        log.warning("skipping backup %s: %s", backup_id, exc)
        with self._lock:
            self._damaged[backup_id] = (version, str(exc))

    def list_snapshots(self) -> list[Manifest]:
        """Manifests of all readable backups, newest first. Damaged ones are skipped (logged)."""
        listed = self._listed_manifests()
        manifests = []
        for backup_id, version in listed.items():
            if backup_id in self._damaged:
                continue
            try:
                manifests.append(self.read_manifest(backup_id, version=version))
            except (CorruptDataError, FormatVersionError, BackupNotFoundError) as exc:
                if not isinstance(exc, BackupNotFoundError):  # else deleted while we listed
                    self._note_damaged(backup_id, version, exc)
        manifests.sort(key=lambda m: (m.time_utc, id_sort_key(m.backup_id)), reverse=True)
        return manifests

    def list_summaries(self, *, validate: bool = True) -> list[Summary]:
        """Summaries of all readable backups, newest first (damaged ones skipped, logged).

        Reads only the manifests that neither this process nor the snapshot index knows; when
        it had to read many, it rewrites the index so the next fresh process need not.
        ``validate=False`` lists names only and trusts what this process already knows of a
        listed id (it may describe a backup since deleted and re-created under the same id:
        check :meth:`summary_is_current` before acting on one); about 3x faster locally.
        """
        listed = self._listed_manifests() if validate else self._listed_names()
        if listed == self._sorted_for:
            return list(self._sorted)
        unknown = self._unknown(listed)
        if len(unknown) > INDEX_MIN_UNKNOWN and self._load_index(listed):
            unknown = self._unknown(listed)
        for backup_id in unknown:
            try:
                self._fetch_manifest(backup_id, listed[backup_id])
            except (CorruptDataError, FormatVersionError, BackupNotFoundError) as exc:
                if not isinstance(exc, BackupNotFoundError):
                    self._note_damaged(backup_id, listed[backup_id], exc)
        if len(unknown) >= INDEX_REWRITE_UNKNOWN:
            self._write_index(listed)
        known = [s for i, s in self._summaries.items() if listed.get(i) == s[0]]
        known.sort(key=itemgetter(2), reverse=True)
        result = [s[1] for s in known]
        self._sorted, self._sorted_for = result, listed
        return list(result)

    def _unknown(self, listed: dict[str, str]) -> list[str]:
        summaries, damaged = self._summaries, self._damaged
        return [
            i
            for i, version in listed.items()
            if (i not in summaries or summaries[i][0] != version)
            and (i not in damaged or damaged[i][0] != version)
        ]

    def _load_index(self, listed: dict[str, str]) -> bool:
        """Take the summaries the snapshot index has for listed manifest versions; ``False``
        if there is no readable index newer than the one already taken."""
        try:
            version = self.store.stat(INDEX_KEY).version
            if version == self._index_version:
                return False
            entries = decode_index(self.store.get(INDEX_KEY), self.keys)
        except KeyError:
            return False
        except (CorruptDataError, FormatVersionError, StorageError) as exc:
            log.info("ignoring the snapshot index (%s); reading manifests instead", exc)
            return False
        self._index_version = version
        for item in entries:
            if listed.get(item.summary.backup_id) == item.version:
                self._remember_summary(item.version, item.summary)
        return True

    def _write_index(self, listed: dict[str, str]) -> None:
        """Best effort: a failed write only means the next fresh process reads manifests."""
        entries = [
            IndexedSummary(version, summary)
            for backup_id, (version, summary, _) in list(self._summaries.items())
            if listed.get(backup_id) == version
        ]
        try:
            self.store.put(INDEX_KEY, encode_index(entries, self.keys))
            self._index_version = self.store.stat(INDEX_KEY).version
        except (StorageError, KeyError) as exc:
            log.info("could not update the snapshot index: %s", exc)

    def damaged_snapshots(self) -> dict[str, str]:
        """Backups whose manifest could not be read at the last listing, with the reason."""
        return {backup_id: why for backup_id, (_, why) in self._damaged.items()}

    def entry_refs(self, entry: Entry, *, fresh: bool = False) -> list[ChunkRef]:
        """All chunk references of an entry, resolving chunk-list blobs (read again from the
        store with ``fresh``, as verification must, else possibly from the cache)."""
        refs = list(entry.chunks)  # inline chunks come first, then those of the lists
        for ref in entry.lists:
            refs.extend(self._read_chunk_list(ref, fresh=fresh))
        return refs

    def chunk_present(self, cid: str) -> bool:
        """Whether a chunk is stored (in ``chunks/``, or collected into ``fossils/``)."""
        return self.store.exists(chunk_key(cid)) or self.store.exists(fossil_key(cid))

    def _read_chunk_list(self, ref: ListRef, *, fresh: bool = False) -> list[ChunkRef]:
        cached = None if fresh else self._chunk_lists.get(ref.id)
        if cached is None:
            plain = self.read_chunk(ChunkRef(ref.id, ref.size, ref.stored))
            cached = decode_chunk_list(plain, f"chunk list {ref.id}")
            if len(cached) != ref.count:
                raise CorruptDataError(
                    f"chunk list {ref.id}: {len(cached)} chunks, not {ref.count}"
                )
            with self._lock:
                self._chunk_lists[ref.id] = cached
        return cached

    def read_chunk(self, ref: ChunkRef) -> bytes:
        """The verified plaintext of one chunk."""
        key = chunk_key(ref.id) if _is_hex_id(ref.id) else None
        if key is None:
            raise CorruptDataError(f"invalid chunk id {ref.id!r} in a manifest")
        return self._codec.decode(self._get_chunk_blob(ref.id), ref.id, ref.size)

    def _get_chunk_blob(self, cid: str) -> bytes:
        """A chunk's blob from ``chunks/``, or from ``fossils/`` where garbage collection may
        have moved it meanwhile (see gc.py); tried again in case it was just moved back."""
        for key in (chunk_key(cid), fossil_key(cid), chunk_key(cid)):
            try:
                return self.store.get(key)
            except KeyError:
                continue
        raise IntegrityError(f"chunk {cid} is missing from the repository")

    def iter_entry(self, entry: Entry) -> Iterator[bytes]:
        """The verified chunks of an entry, in order (fetched ahead where the store can)."""
        refs = self.entry_refs(entry)
        for ref in refs:
            if not _is_hex_id(ref.id):
                raise CorruptDataError(f"invalid chunk id {ref.id!r} in a manifest")
        blobs = self.store.get_many(chunk_key(ref.id) for ref in refs)
        for ref, blob in zip(refs, blobs, strict=True):
            if blob is None:  # collected meanwhile: look in fossils/ too
                blob = self._get_chunk_blob(ref.id)
            yield self._codec.decode(blob, ref.id, ref.size)

    def read_value(self, manifest: Manifest, entry: Entry) -> object:
        """The value of data entry ``entry`` of ``manifest``, every chunk verified."""
        return decode_data_payload(manifest.backup_id, entry, self.read_entry(entry))

    def read_entry(self, entry: Entry) -> bytes:
        """The verified content of an entry."""
        data = b"".join(self.iter_entry(entry))
        if len(data) != entry.size:
            raise CorruptDataError(f"entry {entry.name!r}: {len(data)} bytes, not {entry.size}")
        return data

    # -- verifying -------------------------------------------------------------------------

    def file_matches_entry(self, path: Path, entry: Entry) -> bool:
        """Whether the file at ``path`` holds exactly the entry's content: each chunk's byte
        range is read and hashed and compared with the manifest's chunk id (so it holds for
        any way the entry was cut: content-defined, page-aligned, a command's stream)."""
        refs = self.entry_refs(entry)
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size != entry.size:
                    return False
                codec = self._codec
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
    ) -> VerifyReport:
        """Check a backup: its manifest, and every chunk (read and hashed, or only present).

        With ``read_data``, ``check_data(entry, content)`` is also called for each data entry
        (to decode it, say) from the same read, so verification reads every chunk once.
        """
        report = VerifyReport(backup_id, ok=True)
        try:
            manifest = self.read_manifest(backup_id)
        except (BackupNotFoundError, CorruptDataError, FormatVersionError, StorageError) as exc:
            report.ok = False
            report.problems.append(str(exc))
            return report
        for entry in manifest.entries:
            try:
                refs = self.entry_refs(entry, fresh=True)
                total = 0
                keep = read_data and check_data is not None and entry.kind == "data"
                pieces: list[bytes] = []
                for ref in refs:
                    if read_data:
                        plain = self.read_chunk(ref)
                        total += len(plain)
                        if keep:
                            pieces.append(plain)
                    elif not self.chunk_present(ref.id):
                        raise IntegrityError(f"chunk {ref.id} is missing from the repository")
                    else:
                        total += ref.size
                    report.checked_chunks += 1
                report.checked_bytes += total
                if total != entry.size:
                    raise CorruptDataError(f"{total} bytes instead of {entry.size}")
                if keep and check_data is not None:
                    check_data(entry, b"".join(pieces))
            except (IntegrityError, StorageError) as exc:
                report.ok = False
                report.problems.append(f"entry {entry.name!r}: {exc}")
        return report

    # -- writing ---------------------------------------------------------------------------

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
    ) -> Manifest:
        """Store the entries as a new backup and return its committed manifest.

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
            )
        finally:
            lease.release()

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
    ) -> Manifest:
        parent = self._parent_manifest()
        known = self._known_chunks(parent)
        # Chunks of a pending collection may be deleted soon: never reuse them unseen.
        for cid in self._collected_chunks():
            known.pop(cid, None)
        pending = _Pending(known=known, lease=lease)
        writer = SnapshotWriter(self, pending, parent)
        writer.warnings.extend(warnings)
        stored_entries: list[Entry] = []
        for item in entries:
            lease.renew_if_due()
            if isinstance(item, DataInput):
                refs = [
                    self._store_chunk(view, pending) for view in self.chunker.split(item.payload)
                ]
                stored_entries.append(
                    self._entry(
                        item.name, "data", len(item.payload), refs, pending, encoding=item.encoding
                    )
                )
                if progress:
                    progress(len(item.payload))
            else:
                stored = item.store(writer)
                if stored is not None:
                    stored_entries.append(stored)
                    if progress:
                        progress(stored.size)
            if pending.pending_bytes >= _FLUSH_BYTES:
                self._flush(pending)
        self._flush(pending)
        if not lease.still_valid():
            # Frozen past the lease: collection may have moved chunks we reuse. Check them.
            self._revalidate(pending.referenced)
        stats = self._stats(stored_entries, pending)
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
        )

    def _collected_chunks(self) -> set[str]:
        """Chunks that garbage collection has moved (or is moving) to ``fossils/``.

        Read after the backup's lease is taken. Collection records are cached by version.
        """
        collected: set[str] = set()
        listed = {info.key: info.version for info in self.store.list_info(COLLECTION_PREFIX)}
        with self._lock:
            self._collections = {k: v for k, v in self._collections.items() if k in listed}
        for key, version in listed.items():
            cached = self._collections.get(key)
            if cached is None or cached[0] != version:
                try:
                    record = msgspec.json.decode(self.store.get(key), type=Collection)
                except KeyError:
                    continue  # finished meanwhile
                except JSON_ERRORS as exc:
                    raise CorruptDataError(f"{key}: damaged collection record ({exc})") from exc
                cached = (version, frozenset(record.fossils))
                with self._lock:
                    self._collections[key] = cached
            collected.update(cached[1])
        return collected

    def _revalidate(self, chunk_ids: Iterable[str]) -> None:
        """Make sure every chunk a backup refers to is in ``chunks/`` before it commits."""
        for cid in chunk_ids:
            if self.store.exists(chunk_key(cid)):
                continue
            try:
                self.store.move(fossil_key(cid), chunk_key(cid))
            except KeyError:
                raise StorageError(
                    f"chunk {cid} was reclaimed while this backup was suspended past its "
                    "lease; nothing was committed, run the backup again"
                ) from None

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

    def _store_chunk(self, plain: bytes | memoryview, pending: _Pending) -> ChunkRef:
        cid = self._codec.chunk_id(plain)
        seen = pending.known.get(cid)
        if seen is not None:
            pending.referenced[cid] = seen[1]
            return ChunkRef(cid, seen[0], seen[1])
        key = chunk_key(cid)
        try:
            if not self.store.cheap_exists:
                raise KeyError(key)  # a round trip costs more than writing it again
            stored = self.store.size(key)
        except KeyError:
            blob = self._codec.encode(plain, cid)
            stored = len(blob)
            pending.blobs.append((key, blob))
            pending.pending_bytes += stored
            pending.new_chunks += 1
            pending.added_bytes += stored
        pending.known[cid] = (len(plain), stored)
        pending.referenced[cid] = stored
        return ChunkRef(cid, len(plain), stored)

    def _entry(
        self,
        name: str,
        kind: EntryKind,
        size: int,
        refs: list[ChunkRef],
        pending: _Pending,
        **meta: object,
    ) -> Entry:
        """Build an entry; large chunk lists go to chunk-list blobs of fixed-size groups."""
        if len(refs) <= CHUNKS_PER_LIST:
            return Entry(name=name, kind=kind, size=size, chunks=refs, **meta)  # type: ignore[arg-type]
        # The head chunk (see chunking.py) changes with every append: kept in the manifest, it
        # does not drag the first chunk list along with it.
        inline = refs[:1] if self.chunker.params.head_size else []
        rest = refs[len(inline) :]
        lists = []
        for start in range(0, len(rest), CHUNKS_PER_LIST):
            group = rest[start : start + CHUNKS_PER_LIST]
            plain = encode_chunk_list(group)
            ref = self._store_chunk(plain, pending)
            with self._lock:
                self._chunk_lists[ref.id] = group
            lists.append(ListRef(ref.id, len(group), ref.size, ref.stored))
        return Entry(name=name, kind=kind, size=size, chunks=inline, lists=lists, **meta)  # type: ignore[arg-type]

    def _flush(self, pending: _Pending) -> None:
        if pending.lease is not None:
            pending.lease.renew_if_due()
        if pending.blobs:
            self.store.put_many(pending.blobs)
            pending.blobs = []
            pending.pending_bytes = 0

    @staticmethod
    def _stats(entries: list[Entry], pending: _Pending) -> Stats:
        return Stats(
            logical_bytes=sum(e.size for e in entries),
            stored_bytes=sum(pending.referenced.values()),
            added_bytes=pending.added_bytes,
            new_chunks=pending.new_chunks,
            total_chunks=sum(len(e.chunks) + sum(lr.count for lr in e.lists) for e in entries),
        )

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
    ) -> Manifest:
        """Write the manifest exclusively under a fresh id (or the fixed id and time of an
        import): the backup's commit point."""
        now = fixed[1] if fixed else datetime.now(timezone.utc)
        base = f"{backup_type}_{now.astimezone():%Y%m%d_%H%M%S}"
        suffix = self._id_hint.get(base, 1)
        while True:
            backup_id = base if suffix == 1 else f"{base}_{suffix}"
            if fixed:
                backup_id = fixed[0]
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
                self.store.put(snapshot_key(backup_id), stored, exclusive=True)
            except ObjectExistsError:
                if fixed:
                    raise ObjectExistsError(f"backup {backup_id} already exists") from None
                suffix += 1
                continue
            if not fixed:
                self._id_hint = {base: suffix + 1}
            manifest = msgspec.json.decode(raw, type=Manifest)
            try:
                version = self.store.stat(snapshot_key(backup_id)).version
            except (KeyError, StorageError):
                # Deleted at once by another process, or the store failed right after the
                # commit: the backup is committed either way; it just is not cached.
                return manifest
            with self._lock:
                self._manifests[backup_id] = (version, manifest)
                self._last_committed = (version, manifest)
            self._remember_summary(version, summarize(manifest))
            return manifest

    # -- replicating -----------------------------------------------------------------------

    def chunk_ids(self) -> set[str]:
        """Ids of every blob in ``chunks/`` (one listing)."""
        return {chunk_id_of(key) for key in self.store.list(CHUNK_PREFIX)}

    def stored_bytes(self) -> int:
        """Bytes of all chunks in the store, as stored (compressed, encrypted)."""
        return sum(info.size for info in self.store.list_info(CHUNK_PREFIX))

    def blob_sizes(self, manifest: Manifest) -> dict[str, tuple[int, int]]:
        """Every blob a backup needs (its chunks and chunk lists), in order, each once:
        id -> (plaintext size, stored size)."""
        sizes: dict[str, tuple[int, int]] = {}
        for entry in manifest.entries:
            for lref in entry.lists:
                sizes[lref.id] = (lref.size, lref.stored)
            for ref in self.entry_refs(entry):
                sizes[ref.id] = (ref.size, ref.stored)
        return sizes

    def verified_blobs(self, cids: list[str], sizes: dict[str, tuple[int, int]]) -> Iterator[bytes]:
        """The blobs of ``cids`` as stored (fetched ahead where the store can), each checked
        to decode to its plaintext size with its id first, so a copy never spreads damage."""
        fetched = self.store.get_many(chunk_key(cid) for cid in cids)
        for cid, blob in zip(cids, fetched, strict=True):
            if blob is None:
                blob = self._get_chunk_blob(cid)
            self._codec.decode(blob, cid, sizes[cid][0])
            yield blob

    def replication_lease(self) -> Lease:
        """A backup lease for a run of :meth:`receive_snapshot` calls; list ``present``
        chunks only after taking it (garbage collection then never deletes them unseen)."""
        return Lease(self.store, BACKUP_LEASE_KIND, BACKUP_LEASE_TTL).acquire()

    def receive_snapshot(
        self,
        source: Repository,
        backup_id: str,
        present: set[str],
        lease: Lease,
        *,
        rename: bool = False,
        batch_bytes: int = 16 * 1024 * 1024,
    ) -> Received:
        """Copy backup ``backup_id`` from ``source`` (a replica of this repository: same
        ``repository_id``, so the same keys and chunk ids) with only the blobs this one lacks.

        ``lease`` is a :meth:`replication_lease` held since before ``present`` (the ids known
        to be in ``chunks/``, updated here) was listed. Like a backup, chunks of pending
        collections are never assumed present, and the manifest (the source's stored bytes,
        verified) is written exclusively last, so an interrupted copy leaves no backup and a
        rerun copies only what is still missing. A backup already here with the same bytes is
        ``"present"``; a *different* backup under the same id (two repositories that took
        backups in the same second, e.g. a fallback) is :class:`ObjectExistsError`, or with
        ``rename`` the copy is committed under the next free id (``"renamed"``).
        """
        if source.config.repository_id != self.config.repository_id:
            raise InvalidInputError(
                f"{self.store.location} is not a replica of {source.store.location} "
                "(different repository ids)"
            )
        key = snapshot_key(backup_id)
        lease.renew_if_due()
        try:
            stored = source.store.get(key)
        except KeyError:
            raise BackupNotFoundError(f"backup not found: {backup_id}") from None
        manifest = decode_checked(
            open_manifest(stored, source.keys, backup_id), Manifest, f"manifest {backup_id}"
        )
        existing = self._stored_manifest(backup_id)
        if existing == stored:
            return Received(backup_id, "present")
        if existing is not None and not rename:
            raise ObjectExistsError(self._conflict(backup_id))
        collected = self._collected_chunks()
        sizes = source.blob_sizes(manifest)
        missing = [cid for cid in sizes if cid not in present or cid in collected]
        received = Received(backup_id, "copied")
        pending_bytes = 0
        batch: list[tuple[str, bytes]] = []
        for cid, blob in zip(missing, source.verified_blobs(missing, sizes), strict=True):
            batch.append((chunk_key(cid), blob))
            pending_bytes += len(blob)
            if pending_bytes >= batch_bytes:
                self.store.put_many(batch)
                lease.renew_if_due()
                batch, pending_bytes = [], 0
            received.blobs += 1
            received.bytes += len(blob)
        if batch:
            self.store.put_many(batch)
        present.update(missing)
        if not lease.still_valid():
            self._revalidate(sizes)
        target, data = backup_id, stored
        while True:
            try:
                self.store.put(snapshot_key(target), data, exclusive=True)
                break
            except ObjectExistsError:
                if self._stored_manifest(target) == data:
                    break  # copied concurrently by another sync
                if not rename:
                    raise ObjectExistsError(self._conflict(target)) from None
                target = next_id(target)
                raw = encode_checked(msgspec.structs.replace(manifest, backup_id=target))
                data = seal_manifest(raw, self.keys, target) if self.keys else raw
        if target != backup_id:
            received.backup_id, received.outcome = target, "renamed"
        return received

    def _stored_manifest(self, backup_id: str) -> bytes | None:
        try:
            return self.store.get(snapshot_key(backup_id))
        except KeyError:
            return None

    def _conflict(self, backup_id: str) -> str:
        return f"a different backup {backup_id} already exists in {self.store.location}"

    # -- deleting --------------------------------------------------------------------------

    def delete_snapshot(self, backup_id: str) -> None:
        """Remove a backup's manifest (its chunks are reclaimed by garbage collection)."""
        key = snapshot_key(backup_id)
        if not is_valid_backup_id(backup_id) or not self.store.exists(key):
            raise BackupNotFoundError(f"backup not found: {backup_id}")
        self.store.delete(key)
        with self._lock:
            self._manifests.pop(backup_id, None)
            self._summaries.pop(backup_id, None)
            self._damaged.pop(backup_id, None)


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
