"""An eventually consistent :class:`Store` wrapper: listings (and, optionally, reads) lag
writes and deletes, as on an object store whose listing index trails its data (kopia's
``eventually_consistent.go``: "simulates cloud storage frontend with its own in-memory state").

Every write, delete or move is applied to the inner store at once and remembered as a pending
change together with what the key held before. Until the change becomes visible, listings show
the key as it was before it (a new object is missing, a deleted or replaced one still listed
with its old size and version), and with ``stale_reads=True`` so do ``get``/``stat``/``exists``.

A change becomes visible after ``lag`` further listings (the default), or, when ``window`` is
given, once ``clock()`` has advanced ``window`` seconds past it: tests drive an injected clock
instead of sleeping. :meth:`EventualStore.settle` makes everything visible at once.

Exclusive writes are decided by the inner store (the backend's conditional write is strongly
consistent even where listings are not), and temporary objects are the inner store's.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.requests import RequestCounter


@dataclass(frozen=True)
class PendingChange:
    """A write or delete of ``key`` not yet visible: the object before it (``None``: there
    was none), its bytes when stale reads are on, and when the change shows."""

    key: str
    before: ObjectInfo | None
    before_data: bytes | None
    visible_after_list: int  # visible to the listings numbered above this
    visible_at: float  # or, with a window, once the clock reaches this


class EventualStore(Store):
    """Wraps ``inner``; listings miss the last changes for ``lag`` listings (or, with
    ``window``, for ``window`` seconds of ``clock``); ``stale_reads`` makes reads lag too."""

    def __init__(
        self,
        inner: Store,
        *,
        lag: int = 1,
        window: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        stale_reads: bool = False,
    ) -> None:
        if lag < 0 or (window is not None and window < 0):
            raise ValueError("lag and window cannot be negative")
        self.inner = inner
        self.lag = lag
        self.window = window
        self.stale_reads = stale_reads
        self.cheap_exists = inner.cheap_exists
        self._clock = clock
        self._listings = 0
        self._pending: builtins.list[PendingChange] = []  # oldest first
        # One writer at a time: the "before" of a change and the change itself must not
        # interleave with another writer of the key.
        self._lock = threading.RLock()

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def request_counter(self) -> RequestCounter:
        """The inner store's: a wrapper makes no requests of its own."""
        return self.inner.request_counter

    # -- the lag -----------------------------------------------------------------------------

    @property
    def pending(self) -> builtins.list[PendingChange]:
        """The changes not yet visible, oldest first."""
        with self._lock:
            self._expire()
            return builtins.list(self._pending)

    def settle(self) -> None:
        """Make every change visible now (the store has caught up)."""
        with self._lock:
            self._pending.clear()

    def _expire(self) -> None:
        """Drop the changes that have become visible (they become visible in order)."""
        if self.window is not None:
            now = self._clock()
            visible = sum(1 for change in self._pending if change.visible_at <= now)
        else:
            visible = sum(1 for c in self._pending if c.visible_after_list < self._listings)
        del self._pending[:visible]

    def _hidden(self) -> dict[str, ObjectInfo | None]:
        """For each key with a pending change, what is shown instead (``None``: absent): the
        state before its oldest pending change."""
        shown: dict[str, ObjectInfo | None] = {}
        for change in self._pending:
            shown.setdefault(change.key, change.before)
        return shown

    def _stale(self, key: str) -> PendingChange | None:
        """The oldest pending change of ``key`` when reads lag, else ``None``."""
        if not self.stale_reads:
            return None
        with self._lock:
            self._expire()
            return next((c for c in self._pending if c.key == key), None)

    def _write(self, keys: Iterable[str], apply: Callable[[], None]) -> None:
        """Run ``apply`` (the write on the inner store) and remember it as pending for
        ``keys``; nothing is remembered if it fails."""
        with self._lock:
            before = [(key, *self._state(key)) for key in keys]
            apply()
            visible_at = self._clock() + (self.window or 0.0)
            for key, info, data in before:
                self._pending.append(
                    PendingChange(key, info, data, self._listings + self.lag, visible_at)
                )

    def _state(self, key: str) -> tuple[ObjectInfo | None, bytes | None]:
        """What ``key`` really holds now (its bytes only when reads lag). The truth, not what
        is shown: once the older changes of the key become visible, this is what shows."""
        try:
            info = self.inner.stat(key)
        except KeyError:
            return None, None
        return info, (self.inner.get(key) if self.stale_reads else None)

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        stale = self._stale(key)
        if stale is None:
            return self.inner.get(key)
        if stale.before_data is None:
            raise KeyError(key)
        return stale.before_data

    def exists(self, key: str) -> bool:
        stale = self._stale(key)
        return self.inner.exists(key) if stale is None else stale.before is not None

    def stat(self, key: str) -> ObjectInfo:
        stale = self._stale(key)
        if stale is None:
            return self.inner.stat(key)
        if stale.before is None:
            raise KeyError(key)
        return stale.before

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            self._listings += 1
            self._expire()
            hidden = self._hidden()
        found = {info.key: info for info in self.inner.list_info(prefix)}
        folder = prefix.strip("/")
        below = f"{folder}/" if folder else ""
        for key, before in hidden.items():
            if not key.startswith(below):
                continue
            if before is None:
                found.pop(key, None)
            else:
                found[key] = before
        return iter(builtins.list(found.values()))

    def list_temporary(self) -> Iterator[ObjectInfo]:
        return self.inner.list_temporary()

    # -- writes ------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        self._write([key], lambda: self.inner.put(key, data, exclusive=exclusive, durable=durable))

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        batch = builtins.list(items)
        self._write([key for key, _ in batch], lambda: self.inner.put_many(batch))

    def move(self, source: str, destination: str) -> None:
        self._write([source, destination], lambda: self.inner.move(source, destination))

    def delete(self, key: str, *, durable: bool = True) -> None:
        self._write([key], lambda: self.inner.delete(key, durable=durable))

    def delete_temporary(self, key: str) -> None:
        self.inner.delete_temporary(key)

    def close(self) -> None:
        self.inner.close()
