"""A store in memory: the whole :class:`Store` contract, nothing on disk, for fast tests of the
layers above storage (kopia's ``NewMapStorage``, restic's ``backend/mem``).

Every operation takes one lock, so the store is safe to share between threads and each
operation is atomic: an exclusive put has exactly one winner, a move is never seen half done.
Objects are kept as immutable ``bytes``; a write replaces the whole object. Writes are atomic,
so there are never temporary objects. Nothing survives the process (``durable`` is accepted
and means nothing). Requests are counted as a :class:`LocalStore` counts them (the S3 requests
they stand for, see :mod:`.requests`).
"""

from __future__ import annotations

import builtins
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from src.infra.backup.errors import ObjectExistsError, StorageError
from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.keys import validate_key
from src.infra.backup.storage.requests import (
    COPY,
    DELETE,
    GET,
    HEAD,
    LIST,
    PUT,
    RequestCounter,
    list_pages,
)

# Distinct names for the stores of one process (messages, ``location``).
_NAMES = itertools.count(1)


class MemoryStore(Store):
    """An in-memory store. ``clock`` gives the modification time of each write (POSIX
    seconds, ``time.time`` by default): a test of grace periods injects its own."""

    def __init__(self, name: str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.name = name or f"store-{next(_NAMES)}"
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._versions = itertools.count(1)  # a new version per write, never reused
        self._request_counter = RequestCounter(self.location)
        self._count = self._request_counter.add

    @property
    def location(self) -> str:
        return f"memory://{self.name}"

    def __len__(self) -> int:
        """The number of objects (a quick check for tests)."""
        with self._lock:
            return len(self._objects)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _key(key: str) -> str:
        """The canonical form of a valid key (``a/b/`` is ``a/b``, as on disk)."""
        return "/".join(validate_key(key))

    def _entry(self, key: str, data: bytes) -> tuple[bytes, ObjectInfo]:
        """A new object (the caller holds the lock: versions follow the order of writes)."""
        blob = bytes(data)  # a bytearray or memoryview must not change under the store
        version = f"{next(self._versions):x}"  # also the listing token
        info = ObjectInfo(key, len(blob), self._clock(), version, version)
        return blob, info

    # -- Store API ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        name = self._key(key)
        self._count(GET)
        with self._lock:
            entry = self._objects.get(name)
        if entry is None:
            raise KeyError(key)
        return entry[0]

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        name = self._key(key)
        self._count(PUT)
        with self._lock:
            if exclusive and name in self._objects:
                raise ObjectExistsError(f"{self.location}/{name} already exists")
            self._objects[name] = self._entry(name, data)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        # Keys are checked before anything is written: a bad key stores nothing.
        batch = [(self._key(key), data) for key, data in items]
        if batch:
            self._count(PUT, len(batch))
        with self._lock:
            for name, data in batch:
                self._objects[name] = self._entry(name, data)

    def exists(self, key: str) -> bool:
        name = self._key(key)
        self._count(HEAD)
        with self._lock:
            return name in self._objects

    def stat(self, key: str) -> ObjectInfo:
        name = self._key(key)
        self._count(HEAD)
        with self._lock:
            entry = self._objects.get(name)
        if entry is None:
            raise KeyError(key)
        return entry[1]

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = prefix.strip("/")
        if folder:
            validate_key(folder)
        below = f"{folder}/" if folder else ""
        with self._lock:  # a snapshot: later writes do not disturb the caller's iteration
            found = [info for name, (_, info) in self._objects.items() if name.startswith(below)]
        self._count(LIST, list_pages(len(found)))
        return iter(found)

    def move(self, source: str, destination: str) -> None:
        src, dst = self._key(source), self._key(destination)
        self._count(COPY)
        self._count(DELETE)
        with self._lock:
            entry = self._objects.pop(src, None)
            if entry is None:
                raise KeyError(source)
            # Like a rename: the object keeps its time and version under the new key.
            self._objects[dst] = (entry[0], entry[1]._replace(key=dst))

    def delete(self, key: str, *, durable: bool = True) -> None:
        name = self._key(key)
        self._count(DELETE)
        with self._lock:
            self._objects.pop(name, None)

    def list_temporary(self) -> Iterator[ObjectInfo]:
        return iter(())  # writes are atomic: nothing is ever left half-written

    def delete_temporary(self, key: str) -> None:
        raise StorageError(f"{key!r} is not a temporary object (memory stores have none)")

    def clear(self) -> None:
        """Remove every object (reuse one store between test cases)."""
        with self._lock:
            self._objects.clear()

    def keys(self) -> builtins.list[str]:
        """Every key, sorted (for assertions)."""
        with self._lock:
            return sorted(self._objects)
