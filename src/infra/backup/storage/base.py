"""The store interface every backend implements.

A store maps ``/``-separated keys (``chunks/ab/ab12...``, ``snapshots/<id>.json``) to immutable
byte objects. It knows nothing of chunks or snapshots. Writes are durable when they return.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator


class Store(ABC):
    """Abstract object store. Keys are relative, ``/``-separated, validated by the backend."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise ``KeyError`` if it does not exist."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        """Store ``data`` durably under ``key``.

        With ``exclusive=True`` the write fails with :class:`ObjectExistsError` when the key
        already exists (the commit point of a backup); otherwise an existing object is replaced
        atomically.
        """

    @abstractmethod
    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Store many new objects durably; cheaper than one :meth:`put` each.

        Objects are write-once and content-addressed, so an existing key is left as it is.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether the object exists."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Return the object's size in bytes; raise ``KeyError`` if it does not exist."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Yield the keys below ``prefix`` (a folder, ending in ``/``), in no particular order.

        Temporary objects of unfinished writes are never listed.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object durably; a missing object is not an error."""

    @property
    @abstractmethod
    def location(self) -> str:
        """A human-readable location (a path or URL) for messages."""
