"""A store that hands every call to another one, for wrappers that watch a few of them.

Tests and benchmarks count what the engine asks of a store (ranged reads, bytes uploaded, keys
written); each subclasses :class:`DelegatingStore` and overrides only the calls it watches, so
a call added to :class:`Store` later is forwarded (with the inner store's fast path, e.g. an S3
``StartAfter`` listing) instead of falling back to the base class's generic version.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.requests import RequestCounter


class DelegatingStore(Store):
    """Forwards everything to ``inner``; its requests are the inner store's."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.cheap_exists = inner.cheap_exists
        self.tokens_are_versions = inner.tokens_are_versions

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def request_counter(self) -> RequestCounter:
        return self.inner.request_counter

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.inner.get_range(key, start, length)

    def get_many(self, keys: Iterable[str]) -> Iterator[bytes | None]:
        return self.inner.get_many(keys)

    def get_range_many(
        self, ranges: Iterable[tuple[str, int, int] | None]
    ) -> Iterator[bytes | None]:
        return self.inner.get_range_many(ranges)

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        self.inner.put(key, data, exclusive=exclusive, durable=durable)

    def put_versioned(self, key: str, data: bytes, *, exclusive: bool = False) -> str:
        return self.inner.put_versioned(key, data, exclusive=exclusive)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        self.inner.put_many(items)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list_info(prefix)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def list_tokens(self, prefix: str) -> Iterator[tuple[str, str]]:
        return self.inner.list_tokens(prefix)

    def list_tokens_after(self, prefix: str, start_after: str) -> Iterator[tuple[str, str]]:
        return self.inner.list_tokens_after(prefix, start_after)

    def move(self, source: str, destination: str) -> None:
        self.inner.move(source, destination)

    def delete(self, key: str, *, durable: bool = True) -> None:
        self.inner.delete(key, durable=durable)

    def list_temporary(self) -> Iterator[ObjectInfo]:
        return self.inner.list_temporary()

    def delete_temporary(self, key: str) -> None:
        self.inner.delete_temporary(key)

    def close(self) -> None:
        self.inner.close()
