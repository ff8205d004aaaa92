"""The requests a store makes, counted per operation under S3's names, so that the figures of
every backend compare (and cost out at S3's prices).

An operation is one of :data:`OPS`:

``GET``
    a read of an object, whole or a range (a ranged read is one GET).
``PUT``
    a write of an object; a multipart upload counts its parts plus the create and the
    complete requests (all three are PUT-priced on S3).
``HEAD``
    ``exists``, ``stat``, ``size``.
``LIST``
    one per page of a listing: a listing of ``n`` keys is ``max(1, ceil(n / 1000))`` pages, as
    S3's ListObjectsV2 returns at most 1,000 keys a page.
``DELETE``
    a delete (also of a missing object: the request is made all the same). The S3 client
    sends it as a DeleteObjects of one key (a POST); S3 does not charge for deletes.
``COPY``
    the copy half of a move (S3 has no rename: a move is a COPY and a DELETE). A local or
    in-memory move, one rename, counts the same COPY + DELETE, so the figures compare.

Counts are of the requests the store asks its client for: retries inside the S3 client are
not seen. A request counts when it is made, whatever its answer (a 404 or 412 is charged
too).

Every count goes to three places at once, under one lock (a few dictionary increments; the
requests themselves take micro- to milliseconds):

- the store's own :class:`RequestCounter` (``store.requests()``);
- the process-wide totals of the store's location (:func:`process_requests`: what the
  Prometheus counter ``peak_backup_store_requests_total{op, store}`` reports), shared by every
  store object on that location;
- the open :func:`measure` scopes of the current context (a backup measures its own: the
  manifest's ``run``). A store that makes requests on worker threads runs them in a copy of
  the caller's context (:func:`in_caller_context`), so they are the caller's.

Wrappers (the fault-injecting and eventually consistent test stores, a benchmark's byte
counter) count nothing themselves: their ``request_counter`` is the inner store's.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Final, ParamSpec, TypeVar

GET: Final = "GET"
PUT: Final = "PUT"
HEAD: Final = "HEAD"
LIST: Final = "LIST"
DELETE: Final = "DELETE"
COPY: Final = "COPY"
#: Every operation, in a fixed order (for reports).
OPS: Final = (GET, PUT, HEAD, LIST, DELETE, COPY)
#: Keys per page of an S3 listing (ListObjectsV2's maximum and default).
LIST_PAGE: Final = 1000

_P = ParamSpec("_P")
_R = TypeVar("_R")

_lock = threading.Lock()  # every count and every read of one
# Counts are plain dictionaries (op -> n): half the cost of a Counter per increment.
_process: dict[str, dict[str, int]] = {}  # location -> counts, over every store on it
_tallies: contextvars.ContextVar[tuple[dict[str, int], ...]] = contextvars.ContextVar(
    "peak_backup_request_tallies"
)


def list_pages(keys: int) -> int:
    """The LIST requests of a listing that found ``keys`` keys (at least one)."""
    return max(1, -(-keys // LIST_PAGE))


def _current_tallies() -> tuple[dict[str, int], ...]:
    """The tallies of the :func:`measure` scopes open in this context."""
    return _tallies.get(())


class RequestCounter:
    """The requests of one store, by operation. Thread-safe; :meth:`add` is a few dictionary
    increments under a process-wide lock."""

    __slots__ = ("_counts", "_total", "location")

    def __init__(self, location: str) -> None:
        self.location = location
        self._counts: dict[str, int] = {}
        self._total: dict[str, int] | None = None  # the location's process-wide counts

    def add(self, op: str, count: int = 1) -> None:
        """Count ``count`` requests of ``op`` (one of :data:`OPS`)."""
        tallies = _current_tallies()
        with _lock:
            counts = self._counts
            counts[op] = counts.get(op, 0) + count
            total = self._total
            if total is None:  # bound on the first count: idle stores add no location
                total = self._total = _process.setdefault(self.location, {})
            total[op] = total.get(op, 0) + count
            for tally in tallies:
                tally[op] = tally.get(op, 0) + count

    def snapshot(self) -> dict[str, int]:
        """The counts so far, by operation (operations never made are absent)."""
        with _lock:
            return dict(self._counts)

    def total(self) -> int:
        """All requests so far."""
        with _lock:
            return sum(self._counts.values())

    def __repr__(self) -> str:
        return f"RequestCounter({self.location!r}, {self.snapshot()})"


#: Used by stores that never counted anything (see ``Store.request_counter``).
_creation_lock = threading.Lock()


def counter_of(owner: object, location: Callable[[], str]) -> RequestCounter:
    """The counter kept in ``owner._request_counter``, created on first use (with the
    location ``location()`` then)."""
    counter: RequestCounter | None = getattr(owner, "_request_counter", None)
    if counter is None:
        with _creation_lock:
            counter = getattr(owner, "_request_counter", None)
            if counter is None:
                counter = RequestCounter(location())
                owner._request_counter = counter  # type: ignore[attr-defined]
    return counter


def process_requests() -> dict[str, dict[str, int]]:
    """The requests this process made so far, per store location and operation."""
    with _lock:
        return {location: dict(counts) for location, counts in _process.items() if counts}


def total_requests(counts: Mapping[str, int]) -> int:
    """All requests of a by-operation mapping."""
    return sum(counts.values())


def ordered(counts: Mapping[str, int]) -> dict[str, int]:
    """``counts`` without zeros, in the order of :data:`OPS` (unknown operations last)."""
    known = {op: counts[op] for op in OPS if counts.get(op)}
    return known | {op: n for op, n in sorted(counts.items()) if op not in known and n}


class RequestTally:
    """The requests made inside one :func:`measure` block (live: read it any time)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def snapshot(self) -> dict[str, int]:
        with _lock:
            return dict(self._counts)

    def total(self) -> int:
        with _lock:
            return sum(self._counts.values())


@contextlib.contextmanager
def measure() -> Iterator[RequestTally]:
    """Count the requests made in this block, by every store, in this context (and in the
    store workers it hands requests to): ``with measure() as seen: ...; seen.snapshot()``."""
    tally = RequestTally()
    token = _tallies.set((*_current_tallies(), tally._counts))
    try:
        yield tally
    finally:
        _tallies.reset(token)


def in_caller_context(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn`` to run on a worker thread with the requests it makes counted as the calling
    context's (one call: a context cannot be entered by two threads at once)."""
    context = contextvars.copy_context()  # shares the scopes' tallies (the same dicts)

    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return context.run(fn, *args, **kwargs)

    return run
