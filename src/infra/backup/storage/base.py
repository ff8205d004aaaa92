"""The store interface every backend implements.

A store maps ``/``-separated keys (``chunks/ab/ab12...``, ``snapshots/<id>.json``) to byte
objects. It knows nothing of chunks or snapshots. Writes are durable when they return (unless
``durable=False`` is asked for, for short-lived coordination objects such as leases).

A store may hold resources (a network client's thread pool); :meth:`Store.close` releases
them and a ``with`` block closes the store on exit. Closing never loses data and does not end
the store's life: an operation after ``close()`` works and acquires again what it needs (a
store handed to several users is not broken by one of them closing it), and ``close()`` may be
called any number of times. ``storage.testing.contract.StoreContract`` checks every backend
against this contract.

Every store counts the requests it makes, per operation under S3's names
(:mod:`.requests`): ``store.requests()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import NamedTuple, TypeVar

from src.infra.backup.errors import StorageError
from src.infra.backup.storage.requests import RequestCounter, counter_of


class ObjectInfo(NamedTuple):
    """A listed object: its key, size in bytes, modification time (POSIX seconds) and a
    version that changes whenever the object is replaced (to validate caches). A named tuple:
    listings create one per object, and 100,000 manifests are listed on the path of ``list``.

    ``token`` is the object's listing token (see :meth:`Store.list_tokens`) when the info comes
    from a listing, ``""`` from :meth:`Store.stat`.
    """

    key: str
    size: int
    mtime: float
    version: str = ""
    token: str = ""


_StoreT = TypeVar("_StoreT", bound="Store")


class Store(ABC):
    """Abstract object store. Keys are relative, ``/``-separated, validated by the backend."""

    #: Whether :meth:`exists` / :meth:`stat` cost next to nothing (a local ``stat``), so
    #: asking before writing an object that may exist pays; a network store answers ``False``
    #: and writers just write (content-addressed objects may be written again).
    cheap_exists: bool = True

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise ``KeyError`` if it does not exist."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        """Store ``data`` under ``key``.

        With ``exclusive=True`` the write fails with :class:`ObjectExistsError` when the key
        already exists (the commit point of a backup); otherwise an existing object is replaced
        atomically. ``durable=False`` skips the flushes that make a write survive a power loss
        (for leases, which mean nothing after a crash anyway).
        """

    def put_versioned(self, key: str, data: bytes, *, exclusive: bool = False) -> str:
        """:meth:`put` (durably) and return the new object's version, as :meth:`stat` would
        give it, or "" if it cannot be told (the write stands either way); a network store
        takes it from the write's answer (no second request)."""
        self.put(key, data, exclusive=exclusive)
        try:
            return self.stat(key).version
        except (KeyError, StorageError):  # deleted at once by another process, or a failure
            return ""

    @abstractmethod
    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Store many new objects durably; cheaper than one :meth:`put` each.

        Objects are write-once and content-addressed, so an existing key may be replaced by
        identical content.
        """

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``start`` to ``start + length`` of the object (fewer if it ends first; the
        caller checks); ``KeyError`` if it does not exist. A network store makes one ranged
        request; this default reads the whole object."""
        if start < 0 or length < 0:
            raise ValueError(f"invalid range {start}+{length} of {key}")
        return self.get(key)[start : start + length]

    def get_many(self, keys: Iterable[str]) -> Iterator[bytes | None]:
        """The objects of ``keys`` in order, ``None`` for a missing one; a network store
        fetches several at once (a bounded window ahead of the consumer)."""
        for key in keys:
            try:
                yield self.get(key)
            except KeyError:
                yield None

    def get_range_many(
        self, ranges: Iterable[tuple[str, int, int] | None]
    ) -> Iterator[bytes | None]:
        """:meth:`get_range` of each ``(key, start, length)`` in order, ``None`` for a missing
        object (and for a ``None`` item); a network store fetches several at once."""
        for item in ranges:
            if item is None:
                yield None
                continue
            try:
                yield self.get_range(*item)
            except KeyError:
                yield None

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether the object exists."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of an object; ``KeyError`` if it does not exist."""

    def size(self, key: str) -> int:
        """The object's size in bytes; ``KeyError`` if it does not exist."""
        return self.stat(key).size

    @abstractmethod
    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        """The objects below ``prefix`` (a folder, ending in ``/``), in no particular order.

        Temporary objects of unfinished writes are never listed.
        """

    def list(self, prefix: str) -> Iterator[str]:
        """The keys below ``prefix``, in no particular order."""
        return (info.key for info in self.list_info(prefix))

    def list_tokens(self, prefix: str) -> Iterator[tuple[str, str]]:
        """The keys below ``prefix`` with a listing token each, as cheaply as the backend can
        list names (a local store reads no file's metadata).

        A token changes when an object is replaced by a :meth:`put` (the old and the new object
        coexist for a moment, so they never share one). It may repeat after a delete and a new
        write of the same key (a local store's tokens are inode numbers, which file systems
        reuse), so a token only tells "probably unchanged": caches that act on it re-check the
        :attr:`ObjectInfo.version` before anything destructive. Tokens compare only with tokens
        of the same store's listings (``ObjectInfo.token``).
        """
        return ((info.key, info.token or info.version) for info in self.list_info(prefix))

    #: Whether a listing token is the object's :attr:`ObjectInfo.version` (an S3 ETag), so a
    #: cache need not ask for the version of an object it has a token of.
    tokens_are_versions: bool = False

    def list_tokens_after(self, prefix: str, start_after: str) -> Iterator[tuple[str, str]]:
        """:meth:`list_tokens` of the keys that start with ``prefix`` (any string, not only a
        folder) and sort after ``start_after`` (byte order). S3 lists only those
        (``StartAfter``), so a listing of the newest keys of a long series costs a request
        per 1,000 of them, not of the series."""
        # Listings are of folders: list the prefix's folder and keep the keys that match.
        folder = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        return (
            (key, token)
            for key, token in self.list_tokens(folder)
            if key > start_after and key.startswith(prefix)
        )

    @abstractmethod
    def move(self, source: str, destination: str) -> None:
        """Move an object to another key (replacing it), atomically where the backend can;
        ``KeyError`` if ``source`` does not exist.

        A source that vanished (deleted by a concurrent collector between a listing and the
        move) is that ``KeyError``, and the destination is left as it was: never created,
        never half-written. A backend without rename (S3: copy, then delete) may briefly show
        the object under both keys while a move runs."""

    @abstractmethod
    def delete(self, key: str, *, durable: bool = True) -> None:
        """Remove the object (durably unless ``durable=False``); a missing object is not an
        error."""

    @abstractmethod
    def list_temporary(self) -> Iterator[ObjectInfo]:
        """Leftovers of unfinished writes (e.g. after a crash), anywhere in the store; none
        for a store whose writes are atomic (S3, memory)."""

    @abstractmethod
    def delete_temporary(self, key: str) -> None:
        """Remove one leftover that :meth:`list_temporary` returned; :class:`StorageError`
        (and nothing removed) for a key that is not a temporary object."""

    @property
    @abstractmethod
    def location(self) -> str:
        """A human-readable location (a path or URL) for messages."""

    @property
    def request_counter(self) -> RequestCounter:
        """The counter of the requests this store makes (see :mod:`.requests`). A backend
        counts each request it makes into it; a wrapper that delegates to an inner store
        returns the inner store's. This default is the store's own counter, created on first
        use: it stays at zero for a store that counts nothing."""
        return counter_of(self, lambda: self.location)

    def requests(self) -> dict[str, int]:
        """The requests this store made so far, by operation (``{"PUT": 5, "GET": 1, ...}``;
        operations never made are absent)."""
        return self.request_counter.snapshot()

    def close(self) -> None:  # noqa: B027 - optional: most stores hold nothing to release
        """Release what the store holds (threads, connections); a no-op by default.

        Idempotent, and the store stays usable: a later operation acquires again what it
        needs (see the module docstring)."""

    def __enter__(self: _StoreT) -> _StoreT:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
