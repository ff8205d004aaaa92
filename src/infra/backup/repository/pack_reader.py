"""Coalesced reads of packed blobs (repository format 2): many blobs, few requests.

A restore wants many blobs, and a pack holds them mostly in the order they were written, which
is mostly the order a restore wants them. Reading each with its own ranged GET costs a round
trip per 30 KB; here the wanted blobs are grouped, in the order they are wanted, into **spans**:
one ranged read of a pack covering several blobs that lie close together (gaps of at most
:data:`SPAN_GAP` bytes are read and thrown away), at most :data:`SPAN_LIMIT` bytes long. Spans
are read in parallel by the store (``get_range_many``) and each blob is handed on in the order
it was wanted, as a slice of its span.

Memory stays bounded: a span only takes blobs wanted within :data:`SPAN_REACH` bytes (of the
wanted stream) after its first one, so a span is released once the consumer has moved that far,
and the store reads a bounded window ahead. :func:`coalesced_blobs` serves one consumer in
order; ``blob_stream.py`` serves the many workers of a tree restore (and of a verify).
:func:`whole_packs` reads whole packs (``check --read-data``) in parallel parts of the same
size.

Nothing here trusts the bytes: blobs are decoded and verified by the reader as before. A blob
whose pack is gone, or ended before it (a cut pack), is handed on as ``None``: the reader then
reads it on its own, from any place that has it, and names the damage if none does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass

from src.infra.backup.errors import StorageError
from src.infra.backup.format.layout import pack_key
from src.infra.backup.repository.pack_index import Location
from src.infra.backup.storage.base import Store

# Blobs this close together in a pack are read with one request, the gap thrown away: on
# loopback a request costs about what 0.5 MB of transfer does, on a real link more.
SPAN_GAP = 256 * 1024
# No coalesced read is longer (a blob that is longer alone is read alone).
SPAN_LIMIT = 2 * 1024 * 1024
# A span takes only blobs wanted within this many bytes (of the wanted stream) after its first:
# it is then released once the consumer has read that far.
SPAN_REACH = 16 * 1024 * 1024

Blob = bytes | memoryview


@dataclass(eq=False)
class Span:
    """One coalesced ranged read: ``[start, end)`` of ``pack``, serving ``members`` wanted
    blobs, the first of them at ``first`` bytes into the wanted stream."""

    pack: str
    start: int
    end: int
    first: int
    members: int = 0
    closed: bool = False
    # Filled when fetched: the bytes (``None``: the pack was not there).
    fetched: bool = False
    data: bytes | None = None
    # Used by blob_stream.py: being read or read (no more blobs may join then), its bytes
    # counted against the budget, the read's failure.
    submitted: bool = False
    held: bool = False
    error: BaseException | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def request(self) -> tuple[str, int, int]:
        """The ``(key, start, length)`` of the ranged read."""
        return pack_key(self.pack), self.start, self.end - self.start

    def blob(self, location: Location) -> Blob | None:
        """The stored blob at ``location`` out of the fetched bytes; ``None`` if the pack is
        gone or ended before it (the reader then looks everywhere, and names the damage)."""
        data = self.data
        begin = location.offset - self.start
        if data is None or begin + location.length > len(data):
            return None
        return memoryview(data)[begin : begin + location.length]


class SpanPlanner:
    """Groups located blobs, in the order they are wanted, into :class:`Span` s, and hands
    out the spans that can no longer grow in the order of their first blob."""

    def __init__(
        self, *, gap: int = SPAN_GAP, limit: int = SPAN_LIMIT, reach: int = SPAN_REACH
    ) -> None:
        self.gap, self.limit, self.reach = gap, limit, reach
        self._open: dict[str, list[Span]] = {}  # pack -> spans that may still grow
        self._queue: deque[Span] = deque()  # not yet handed out, by first blob
        self._offset = 0  # bytes of the wanted stream planned so far

    def add(self, location: Location) -> Span:
        """The span that reads the blob at ``location`` (joined to one, or a new one)."""
        offset = self._offset
        self._offset += location.length
        begin, end = location.offset, location.offset + location.length
        for span in list(self._open.get(location.pack, ())):
            if span.submitted:  # read early (blob_stream.py): nothing joins it any more
                self._close(span)
                continue
            if offset - span.first > self.reach:
                continue  # handed out soon: the consumer may have let it go by then
            if span.start <= begin and end <= span.end:  # read already (a repeated chunk)
                span.members += 1
                return span
            if 0 <= begin - span.end <= self.gap and end - span.start <= self.limit:
                span.end = end
                span.members += 1
                if end - span.start >= self.limit - self.gap:
                    self._close(span)
                return span
        span = Span(location.pack, begin, end, offset, members=1)
        self._queue.append(span)
        if location.length >= self.limit - self.gap:
            span.closed = True
        else:
            self._open.setdefault(location.pack, []).append(span)
        return span

    def ready(self) -> Iterator[Span]:
        """The spans at the head of the queue that can no longer grow."""
        queue = self._queue
        while queue and (queue[0].closed or self._offset - queue[0].first > self.reach):
            yield self._hand_out(queue.popleft())

    def finish(self) -> Iterator[Span]:
        """Every span not handed out yet (nothing more will be added)."""
        while self._queue:
            yield self._hand_out(self._queue.popleft())

    def _hand_out(self, span: Span) -> Span:
        if not span.closed:
            self._close(span)
        return span

    def _close(self, span: Span) -> None:
        """No more blobs join ``span``."""
        span.closed = True
        candidates = self._open.get(span.pack, [])
        if span in candidates:
            candidates.remove(span)
            if not candidates:
                del self._open[span.pack]


def coalesced_blobs(store: Store, located: Iterable[Location | None]) -> Iterator[Blob | None]:
    """The stored blobs at ``located`` in order, read in coalesced spans that the store
    fetches in parallel; ``None`` where there is no location or the pack is gone or cut
    short. One consumer, in order: planning and fetching advance as it reads."""
    planner = SpanPlanner()
    items = iter(located)
    planned: deque[tuple[Location | None, Span | None]] = deque()
    emitted: deque[Span] = deque()

    def requests() -> Iterator[tuple[str, int, int]]:
        for location in items:
            span = None if location is None else planner.add(location)
            planned.append((location, span))
            for ready in planner.ready():
                emitted.append(ready)
                yield ready.request
        for ready in planner.finish():
            emitted.append(ready)
            yield ready.request

    results = store.get_range_many(requests())
    exhausted = False
    while True:
        while not exhausted and (not planned or _unfetched(planned[0][1])):
            try:
                data = next(results)
            except StopIteration:
                exhausted = True
                break
            head = emitted.popleft()
            head.data, head.fetched = data, True
        if not planned:
            return
        location, span = planned.popleft()
        if span is None or location is None:
            yield None
            continue
        yield span.blob(location)


def _unfetched(span: Span | None) -> bool:
    return span is not None and not span.fetched


def whole_packs(
    store: Store, packs: Iterable[tuple[str, int]]
) -> Generator[bytes | None, None, None]:
    """The bytes of each ``(pack id, size)`` in order (``None``: the pack is gone). A network
    store reads each in ranged parts of at most :data:`SPAN_LIMIT` that it fetches in parallel,
    a bounded window ahead of the consumer; a local one reads each whole, when it is taken."""
    todo = list(packs)
    if store.cheap_exists:
        for pack_id, _ in todo:
            try:
                yield store.get(pack_key(pack_id))
            except KeyError:
                yield None
        return
    parts = store.get_range_many(
        (pack_key(pack_id), start, min(SPAN_LIMIT, size - start))
        for pack_id, size in todo
        for start in range(0, size, SPAN_LIMIT)
    )
    try:
        for _, size in todo:
            pieces = [next(parts) for _ in range(-(-size // SPAN_LIMIT))]
            present = [piece for piece in pieces if piece is not None]
            whole = b"".join(present) if len(present) == len(pieces) else None
            del pieces, present  # the parts are not held while the pack is checked
            yield whole
            del whole
    finally:
        close = getattr(parts, "close", None)
        if close is not None:
            close()  # reads still in flight are cancelled


class BlobsAhead:
    """Blobs fetched ahead (``RepositoryReader.fetch_blobs``), taken one at a time; once the
    fetching fails (a storage error kills the iterator), this one and the rest come as ``None``:
    the reader then reads each alone, and names the problem where there is one, as it would
    have without the read-ahead. :meth:`close` it."""

    def __init__(self, blobs: Iterator[Blob | None]) -> None:
        self._blobs: Iterator[Blob | None] | None = blobs

    def take(self) -> Blob | None:
        """The next blob (``None``: read it alone)."""
        if self._blobs is None:
            return None
        try:
            return next(self._blobs)
        except (StorageError, StopIteration):
            self.close()
            return None

    def close(self) -> None:
        blobs, self._blobs = self._blobs, None
        close = getattr(blobs, "close", None)
        if close is not None:
            close()  # reads still in flight are cancelled

    def __enter__(self) -> BlobsAhead:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
