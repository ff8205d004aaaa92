"""Where each packed chunk is: the union of the repository's pack index files, in memory.

Index files are immutable (named by their hash), so each is read once per process; a refresh
lists ``index/packs/`` and reads only the files it has not seen, and forgets those that are
gone. A chunk may be listed in more than one pack (a network writer uploads a chunk again
rather than ask whether it exists; garbage collection copies live chunks out of packs it
repacks): every location is kept, and readers try the others when one pack is gone.
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

from src.infra.backup.errors import CorruptDataError
from src.infra.backup.format.crypto import RepositoryKeys
from src.infra.backup.format.layout import PACK_INDEX_PREFIX, pack_index_key
from src.infra.backup.format.packs import PackEntry, decode_index
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)


class Location(NamedTuple):
    """A packed blob: its pack, where it starts, its stored length, its plaintext size."""

    pack: str
    offset: int
    length: int
    size: int


class PackIndex:
    """The repository's pack index files as one map; thread-safe."""

    def __init__(self, store: Store, keys: RepositoryKeys | None) -> None:
        self.store = store
        self.keys = keys
        self._lock = threading.Lock()
        self._files: dict[str, list[PackEntry]] = {}  # index id -> the packs it lists
        self._where: dict[str, Location] = {}
        self._more: dict[str, list[Location]] = {}  # further locations of a chunk
        self._loaded = False
        self.damaged: dict[str, str] = {}  # index id -> why it could not be read

    # -- loading -----------------------------------------------------------------------------

    def ensure_loaded(self) -> None:
        """Read the index files once (later calls do nothing; see :meth:`refresh`)."""
        if not self._loaded:
            self.refresh()

    def refresh(self) -> None:
        """List the index files, read the new ones and forget the removed ones."""
        listed = {key.rsplit("/", 1)[-1] for key in self.store.list(PACK_INDEX_PREFIX)}
        with self._lock:
            known = set(self._files)
        fresh: dict[str, list[PackEntry]] = {}
        damaged: dict[str, str] = {}
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
            changed = bool(fresh) or bool(known - listed)
            for index_id in known - listed:
                del self._files[index_id]
            self._files.update(fresh)
            self.damaged = {k: v for k, v in {**self.damaged, **damaged}.items() if k in listed}
            if changed or not self._loaded:
                self._rebuild()
            self._loaded = True

    def _rebuild(self) -> None:
        where: dict[str, Location] = {}
        more: dict[str, list[Location]] = {}
        for index_id in sorted(self._files):
            for entry in self._files[index_id]:
                pack = entry.pack
                for blob in entry.blobs:
                    location = Location(pack, blob.offset, blob.length, blob.size)
                    first = where.setdefault(blob.id, location)
                    if first is not location and first != location:
                        others = more.setdefault(blob.id, [])
                        if location not in others:
                            others.append(location)
        self._where, self._more = where, more

    def add(self, index_id: str, packs: list[PackEntry]) -> None:
        """Record an index file this process just wrote (no need to read it back)."""
        with self._lock:
            if index_id in self._files:
                return
            self._files[index_id] = packs
            for entry in packs:
                for blob in entry.blobs:
                    location = Location(entry.pack, blob.offset, blob.length, blob.size)
                    first = self._where.setdefault(blob.id, location)
                    if first != location:
                        others = self._more.setdefault(blob.id, [])
                        if location not in others:
                            others.append(location)

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

    def packs(self) -> dict[str, PackEntry]:
        """Pack id -> its blobs, over all index files (the first listing of a pack wins)."""
        self.ensure_loaded()
        with self._lock:
            found: dict[str, PackEntry] = {}
            for index_id in sorted(self._files):
                for entry in self._files[index_id]:
                    found.setdefault(entry.pack, entry)
            return found
