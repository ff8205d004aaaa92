"""Where each packed chunk is: the repository's pack index files and the headers of the packs
no index file lists yet, as one map, in memory.

Writers write packs only; ``prune`` writes index files, one listing every pack (see
pack_gc.py). So a refresh lists ``index/packs/`` and ``packs/``, reads each index file it has
not seen, and reads the header of each pack no index file lists (a ranged read of its tail;
both are immutable, so each is read once per process). A chunk may be listed in more than one
pack (a network writer uploads a chunk again rather than ask whether it exists; garbage
collection copies live chunks out of packs it repacks): every location is kept, and readers
try the others when one pack is gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from src.infra.backup.errors import CorruptDataError
from src.infra.backup.format.blobs import BlobCodec
from src.infra.backup.format.crypto import RepositoryKeys
from src.infra.backup.format.layout import (
    PACK_INDEX_PREFIX,
    PACK_PREFIX,
    pack_index_key,
    pack_key,
)
from src.infra.backup.format.packs import (
    PackEntry,
    decode_index,
    decode_pack_header,
    header_span,
)
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

# Bytes read from the end of a pack to find its header (one ranged read for most packs).
HEADER_READ = 64 * 1024
PARALLEL_HEADERS = 4


def _range_or_none(store: Store, key: str, start: int, length: int) -> bytes | None:
    try:
        return store.get_range(key, start, length)
    except KeyError:
        return None


class PackedRepository(Protocol):
    """What the pack machinery (writing, reading, checking, collecting and copying packs)
    needs of a repository (``RepositoryReader`` has it)."""

    @property
    def store(self) -> Store: ...

    @property
    def keys(self) -> RepositoryKeys | None: ...

    @property
    def codec(self) -> BlobCodec: ...

    @property
    def packed(self) -> bool: ...

    @property
    def pack_index(self) -> PackIndex: ...


class Location(NamedTuple):
    """A packed blob: its pack, where it starts, its stored length, its plaintext size."""

    pack: str
    offset: int
    length: int
    size: int


class PackIndex:
    """The repository's pack index files and uncovered pack headers as one map; thread-safe."""

    def __init__(self, store: Store, keys: RepositoryKeys | None) -> None:
        self.store = store
        self.keys = keys
        self._lock = threading.Lock()
        self._files: dict[str, list[PackEntry]] = {}  # index id -> the packs it lists
        self._headers: dict[str, PackEntry] = {}  # pack id -> its blobs, from its header
        self._where: dict[str, Location] = {}
        self._more: dict[str, list[Location]] = {}  # further locations of a chunk
        self._loaded = False
        # index id / pack id -> why that index file / pack header could not be read
        self.damaged_files: dict[str, str] = {}
        self.damaged_headers: dict[str, str] = {}

    # -- loading -----------------------------------------------------------------------------

    def ensure_loaded(self) -> None:
        """Load once (later calls do nothing; see :meth:`refresh`)."""
        if not self._loaded:
            self.refresh()

    def refresh(self) -> None:
        """List index files and packs; read the new index files and the headers of packs no
        index file lists; forget what is gone."""
        listed = {key.rsplit("/", 1)[-1] for key in self.store.list(PACK_INDEX_PREFIX)}
        packs = self._list_packs()
        with self._lock:
            known = set(self._files)
        fresh: dict[str, list[PackEntry]] = {}
        damaged: dict[str, str] = {}
        bad_headers: dict[str, str] = {}
        for index_id in listed - known:
            key = pack_index_key(index_id)
            try:
                fresh[index_id] = decode_index(self.store.get(key), index_id, self.keys, key)
            except KeyError:
                continue  # replaced by garbage collection meanwhile
            except CorruptDataError as exc:
                log.warning("skipping pack index %s: %s", key, exc)
                damaged[index_id] = str(exc)
        with self._lock:
            files = {k: v for k, v in self._files.items() if k in listed}
            files.update(fresh)
            covered = {entry.pack for entries in files.values() for entry in entries}
            headers = {pid: e for pid, e in self._headers.items() if pid in packs}
        wanted = [pid for pid in packs if pid not in covered and pid not in headers]
        headers.update(self._read_headers(wanted, self._sizes(wanted, packs), bad_headers))
        with self._lock:
            # The map is rebuilt only when what it is made of changed: a local backup
            # refreshes at its start, and most find nothing new.
            changed = (
                not self._loaded or files.keys() != self._files.keys()
            ) or headers.keys() != self._headers.keys()
            self._files, self._headers = files, headers
            old = {k: v for k, v in self.damaged_files.items() if k in listed}
            self.damaged_files = {**old, **damaged}
            # A header is read again at every refresh until it reads (it may be replaced).
            self.damaged_headers = bad_headers
            if changed:
                self._rebuild()
            self._loaded = True

    def _list_packs(self) -> dict[str, int | None]:
        """Pack id -> size (``None``: not asked for). A local store lists names only (no stat
        per pack); a network listing carries the sizes anyway."""
        if self.store.cheap_exists:
            return {key.rsplit("/", 1)[-1]: None for key in self.store.list(PACK_PREFIX)}
        return {
            info.key.rsplit("/", 1)[-1]: info.size for info in self.store.list_info(PACK_PREFIX)
        }

    def _sizes(self, pack_ids: list[str], listed: dict[str, int | None]) -> dict[str, int]:
        """The sizes of ``pack_ids`` (whose headers are to be read): from the listing, else
        one stat each (a pack deleted meanwhile is left out)."""
        sizes: dict[str, int] = {}
        for pack_id in pack_ids:
            size = listed[pack_id]
            if size is None:
                try:
                    size = self.store.size(pack_key(pack_id))
                except KeyError:
                    continue
            sizes[pack_id] = size
        return sizes

    def _read_headers(
        self, pack_ids: list[str], sizes: dict[str, int], damaged: dict[str, str]
    ) -> dict[str, PackEntry]:
        """The blobs of each pack, from its header (a ranged read of its last bytes, and a
        second one if the header is longer)."""
        pack_ids = [pid for pid in pack_ids if pid in sizes]
        ranges = [
            (pack_key(pid), max(0, sizes[pid] - HEADER_READ), min(sizes[pid], HEADER_READ))
            for pid in pack_ids
        ]
        # A few are read one by one: a network store's parallel reads start threads.
        tails: Iterable[bytes | None] = (
            self.store.get_range_many(ranges)
            if len(ranges) > PARALLEL_HEADERS
            else (_range_or_none(self.store, *item) for item in ranges)
        )
        found: dict[str, PackEntry] = {}
        for pack_id, tail in zip(pack_ids, tails, strict=True):
            key = pack_key(pack_id)
            if tail is None:
                continue  # deleted meanwhile
            try:
                size = sizes[pack_id]
                offset, length = header_span(tail, size, key)
                start = size - len(tail)
                if offset >= start:
                    header = tail[offset - start : offset - start + length]
                else:
                    header = self.store.get_range(key, offset, length)
                blobs = decode_pack_header(header, offset, self.keys, key)
            except KeyError:
                continue
            except CorruptDataError as exc:
                log.warning("cannot read the header of pack %s: %s", key, exc)
                damaged[pack_id] = str(exc)
                continue
            found[pack_id] = PackEntry(pack_id, blobs)
        return found

    def _entries(self) -> list[PackEntry]:
        """Every pack entry known: index files first (sorted by id), then headers."""
        entries = [entry for index_id in sorted(self._files) for entry in self._files[index_id]]
        entries.extend(self._headers[pid] for pid in sorted(self._headers))
        return entries

    def _rebuild(self) -> None:
        where: dict[str, Location] = {}
        more: dict[str, list[Location]] = {}
        for entry in self._entries():
            self._place(entry, where, more)
        self._where, self._more = where, more

    @staticmethod
    def _place(
        entry: PackEntry, where: dict[str, Location], more: dict[str, list[Location]]
    ) -> None:
        pack = entry.pack
        for blob in entry.blobs:
            location = Location(pack, blob.offset, blob.length, blob.size)
            first = where.setdefault(blob.id, location)
            if first != location:
                others = more.setdefault(blob.id, [])
                if location not in others:
                    others.append(location)

    def add_packs(self, entries: list[PackEntry]) -> None:
        """Record packs this process just wrote (no need to read their headers back)."""
        with self._lock:
            for entry in entries:
                if entry.pack in self._headers:
                    continue
                self._headers[entry.pack] = entry
                self._place(entry, self._where, self._more)

    def add(self, index_id: str, packs: list[PackEntry]) -> None:
        """Record an index file this process just wrote (no need to read it back)."""
        with self._lock:
            if index_id in self._files:
                return
            self._files[index_id] = packs
            for entry in packs:
                self._place(entry, self._where, self._more)

    # -- lookups -----------------------------------------------------------------------------

    def locate(self, cid: str) -> Location | None:
        """One location of chunk ``cid`` (``None``: not packed, as far as known)."""
        if not self._loaded:
            self.refresh()
        return self._where.get(cid)

    def locations(self, cid: str) -> list[Location]:
        """Every known location of chunk ``cid``."""
        if not self._loaded:
            self.refresh()
        first = self._where.get(cid)
        if first is None:
            return []
        return [first, *self._more.get(cid, ())]

    def __contains__(self, cid: str) -> bool:
        return self.locate(cid) is not None

    def files(self) -> dict[str, list[PackEntry]]:
        """Index id -> the packs it lists (a copy)."""
        self.ensure_loaded()
        with self._lock:
            return dict(self._files)

    def uncovered(self) -> list[str]:
        """Packs no index file lists (known from their headers)."""
        self.ensure_loaded()
        with self._lock:
            covered = {entry.pack for entries in self._files.values() for entry in entries}
            return [pid for pid in self._headers if pid not in covered]

    def packs(self) -> dict[str, PackEntry]:
        """Pack id -> its blobs (index files first, then headers; the first listing wins)."""
        self.ensure_loaded()
        with self._lock:
            found: dict[str, PackEntry] = {}
            for entry in self._entries():
                found.setdefault(entry.pack, entry)
            return found
