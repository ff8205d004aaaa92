"""The chunks of many entries for several consumers: a tree restore's read-ahead from a network
store, in coalesced ranged reads (spans, ``pack_reader.py``).

A planner thread resolves the entries' chunk references, in the order the consumers will take
the entries (chunk lists fetched at once), and plans spans over all of them; spans are read by
:data:`FETCH_THREADS` threads, in order, while the bytes read and not yet taken stay under a
budget (:data:`STREAM_BUDGET`). Each consumer takes one entry at a time and decodes its chunks
itself (decompressing and hashing release the GIL, so consumers decode in parallel).

Nobody waits on the budget: a consumer that needs a span not read yet has it read at once,
ahead of the queue (so the budget can be passed by at most one span per consumer), and one
that needs an entry not planned yet makes the planner go on to it (planning holds no data).
So a consumer taking a large file never keeps the others from theirs, and memory stays bounded
whatever the order the consumers go at.

A verify from a network store (``RepositoryReader.verify_snapshot``) reads through the same
stream: :func:`each_entry` checks the entries on :data:`CONSUMERS` threads, in order, with
their chunk lists read afresh (:func:`fresh_entry_refs`, which ``check`` uses too), each entry
by the rules of :func:`verify_entry` (those of a verify chunk by chunk, the local path).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from src.infra.backup.errors import CorruptDataError, IntegrityError, StorageError
from src.infra.backup.format.manifest import ChunkRef, Entry, ListRef, decode_chunk_list
from src.infra.backup.repository.pack_index import Location
from src.infra.backup.repository.pack_reader import Blob, BlobsAhead, Span, SpanPlanner
from src.infra.backup.storage.base import Store

# Spans read and not yet taken (or being read) stay under this many bytes.
STREAM_BUDGET = 32 * 1024 * 1024
# Spans read at once (the S3 store's default concurrency).
FETCH_THREADS = 8
# Spans planned ahead of the reading: planning pauses beyond this (unless a consumer waits).
PLANNED_AHEAD = 64
# Consumers of :func:`each_entry` (decompressing and hashing release the GIL).
CONSUMERS = 2

_T = TypeVar("_T")

# The chunk references of each entry, in order (or the error of a damaged chunk list).
RefsReader = Callable[[Sequence[Entry]], Iterator[list[ChunkRef] | Exception]]
# An entry verified: (chunks checked, bytes checked, what is wrong with it).
Verified = tuple[int, int, Exception | None]


class StreamSource(Protocol):
    """What a :class:`BlobStream` needs of the repository reader."""

    @property
    def store(self) -> Store: ...

    def iter_entry_refs(self, entries: Iterable[Entry]) -> Iterator[list[ChunkRef] | Exception]: ...

    def locate(self, cid: str) -> Location | None: ...

    def decode_blob(self, ref: ChunkRef, blob: Blob | None) -> bytes: ...


@dataclass(eq=False)
class _Plan:
    """One entry: its chunk references and where each is read from."""

    refs: list[ChunkRef]
    slots: list[tuple[Location | None, Span | None]]
    taken: int = 0  # slots handed out (or let go)
    error: Exception | None = None  # its chunk lists could not be read


class BlobStream:
    """The verified chunks of ``entries`` for several consumer threads, each entry taken by
    one of them (:meth:`chunks`); see the module docstring. :meth:`close` it."""

    def __init__(
        self,
        source: StreamSource,
        entries: Sequence[Entry],
        *,
        budget: int = STREAM_BUDGET,
        threads: int = FETCH_THREADS,
        refs: RefsReader | None = None,
    ) -> None:
        self._source = source
        self._entries = entries
        self._budget = budget
        # Where the chunk references come from (``refs``: e.g. chunk lists read afresh).
        self._refs: RefsReader = refs if refs is not None else source.iter_entry_refs
        # The most bytes of spans held (being read, or read and not all taken) at once.
        self.peak_held = 0
        self._cond = threading.Condition()
        self._plans: list[_Plan | None] = [None] * len(entries)
        self._left: dict[Span, int] = {}  # per span: its blobs not yet taken
        self._queue: deque[Span] = deque()  # planned, not yet read, in order
        self._held = 0  # bytes of spans being read, or read with blobs not yet taken
        self._wanted = -1  # the furthest entry a consumer waits to be planned
        self._closed = False
        self._planned = False  # every entry planned (or the planner failed)
        self._error: BaseException | None = None
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(threads, "peak-backup-read")
        self._thread = threading.Thread(target=self._plan_all, name="peak-backup-plan", daemon=True)
        self._thread.start()

    # -- consumers ---------------------------------------------------------------------------

    def refs(self, index: int) -> list[ChunkRef]:
        """The chunk references of entry ``index`` (as :meth:`Repository.entry_refs`)."""
        return self._plan(index).refs

    def chunks(self, index: int) -> Generator[bytes, None, None]:
        """The verified chunks of entry ``index``, in order (each taken once)."""
        plan = self._plan(index)
        try:
            while plan.taken < len(plan.slots):
                ref = plan.refs[plan.taken]
                location, span = plan.slots[plan.taken]
                blob = None if span is None or location is None else self._read(span, location)
                plan.taken += 1
                if span is not None:
                    self._let_go(span)
                yield self._source.decode_blob(ref, blob)
                del blob
        finally:
            self._abandon(plan)

    def close(self) -> None:
        """Stop planning and reading, and wait for the threads (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _plan(self, index: int) -> _Plan:
        with self._cond:
            plan = self._wait(lambda: self._plans[index], index)
        if plan.error is not None:
            raise plan.error
        return plan

    def _read(self, span: Span, location: Location) -> Blob | None:
        """The stored blob at ``location`` from its span, once read (read now, ahead of the
        queue and past the budget, if it is not being read yet: a consumer never waits on
        the budget)."""
        with self._cond:
            here = not span.submitted and not self._submit(span)
        if here:  # no reading threads (interpreter shutdown): read it in this one
            self._fetch(span)
        with self._cond:
            self._wait(lambda: span if span.fetched else None)
        if span.error is not None:
            raise span.error
        return span.blob(location)

    def _wait(self, ready: Callable[[], _T | None], plan_up_to: int = -1) -> _T:
        """Under the lock: wait until ``ready()`` gives something; the planner is asked to
        plan up to entry ``plan_up_to`` at least."""
        while True:
            value = ready()
            if value is not None:
                return value
            if self._error is not None:
                raise self._error
            if self._closed or (self._planned and plan_up_to >= 0):
                raise RuntimeError("the restore's read-ahead was closed")
            if plan_up_to > self._wanted:
                self._wanted = plan_up_to
                self._cond.notify_all()
            self._cond.wait()

    def _let_go(self, span: Span) -> None:
        """One blob of ``span`` taken (or given up): drop the span's bytes after its last."""
        with self._cond:
            left = self._left[span] - 1
            if left:
                self._left[span] = left
                return
            del self._left[span]
            if span.fetched:
                self._drop(span)
                self._pump()
            # Being read: _fetch drops it. Not submitted yet: it is never read.

    def _abandon(self, plan: _Plan) -> None:
        """Let go of what a consumer did not take (it stopped early: an error, a cancel)."""
        while plan.taken < len(plan.slots):
            _, span = plan.slots[plan.taken]
            plan.taken += 1
            if span is not None:
                self._let_go(span)

    # -- reading -----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Under the lock: read the spans at the head of the queue while under the budget
        (those a consumer had read early just leave it)."""
        queue = self._queue
        while queue and (
            queue[0].submitted or (self._held < self._budget and self._pool is not None)
        ):
            span = queue.popleft()
            if not span.submitted and not self._submit(span):
                break
        self._cond.notify_all()

    def _submit(self, span: Span) -> bool:
        """Under the lock: have a reading thread read ``span`` (not at all if nobody wants
        its blobs any more); ``False`` if there are no reading threads (closed, or the
        interpreter is shutting down)."""
        if span not in self._left:
            span.submitted = span.fetched = True  # its consumers gave up before it was read
            return True
        try:
            if self._pool is None:
                return False
            self._pool.submit(self._fetch, span)
        except RuntimeError:
            self._pool = None
            return False
        span.submitted = span.held = True
        self._held += span.length
        self.peak_held = max(self.peak_held, self._held)
        return True

    def _fetch(self, span: Span) -> None:
        data: bytes | None = None
        error: BaseException | None = None
        try:
            data = self._source.store.get_range(*span.request)
        except KeyError:
            data = None  # the pack is gone: its blobs are read elsewhere
        except BaseException as exc:  # noqa: BLE001 - raised by the span's consumers
            error = exc
        with self._cond:
            span.submitted = span.fetched = True
            span.data, span.error = data, error
            if span not in self._left:  # every consumer of it gave up meanwhile
                self._drop(span)
            self._pump()

    def _drop(self, span: Span) -> None:
        """Under the lock: forget ``span``'s bytes (its blobs are all taken)."""
        span.data = None
        if span.held:
            span.held = False
            self._held -= span.length

    # -- planning ----------------------------------------------------------------------------

    def _plan_all(self) -> None:
        planner = SpanPlanner()
        source = self._source
        try:
            for index, refs in enumerate(self._refs(self._entries)):
                with self._cond:
                    while (
                        not self._closed
                        and index > self._wanted
                        and len(self._queue) >= PLANNED_AHEAD
                    ):
                        self._cond.wait()
                    if self._closed:
                        return
                if isinstance(refs, Exception):  # a damaged chunk list: its consumer raises
                    plan = _Plan([], [], error=refs)
                else:
                    slots: list[tuple[Location | None, Span | None]] = []
                    for ref in refs:
                        location = source.locate(ref.id)
                        span = None if location is None else planner.add(location)
                        slots.append((location, span))
                    plan = _Plan(refs, slots)
                self._add(index, plan, planner.ready())
            self._add(-1, None, planner.finish())
        except BaseException as exc:  # noqa: BLE001 - raised by the consumers
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            with self._cond:
                self._planned = True
                self._cond.notify_all()

    def _add(self, index: int, plan: _Plan | None, ready: Iterable[Span]) -> None:
        with self._cond:
            if plan is not None:
                for _, span in plan.slots:
                    if span is not None:
                        self._left[span] = self._left.get(span, 0) + 1
                self._plans[index] = plan
            self._queue.extend(ready)
            self._pump()


# -- many entries checked at once (verify) ---------------------------------------------------


def each_entry(
    source: StreamSource,
    entries: Sequence[Entry],
    work: Callable[[BlobStream, int], _T],
    *,
    refs: RefsReader | None = None,
    consumers: int = CONSUMERS,
) -> Generator[_T, None, None]:
    """``work(stream, index)`` for every entry of ``entries``, on ``consumers`` threads each
    taking the next entry in order, the chunks read ahead through one :class:`BlobStream`
    (coalesced, parallel, within its budget; ``refs`` as there); the results in entry order.
    What ``work`` raises is raised here, at its entry, and no further entry is started.
    Memory: the stream's budget and a few spans past it (see the module docstring), plus what
    ``work`` holds."""
    stream = BlobStream(source, entries, budget=STREAM_BUDGET, refs=refs)
    cond = threading.Condition()
    results: dict[int, tuple[bool, Any]] = {}  # index -> (done, its result or exception)
    order = iter(range(len(entries)))
    stopped = [False]

    def run() -> None:
        while True:
            with cond:
                index = None if stopped[0] else next(order, None)
            if index is None:
                return
            try:
                outcome: tuple[bool, Any] = (True, work(stream, index))
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                outcome = (False, exc)
            with cond:
                results[index] = outcome
                stopped[0] = stopped[0] or not outcome[0]
                cond.notify_all()

    threads = [threading.Thread(target=run, name="peak-backup-verify") for _ in range(consumers)]
    try:
        for thread in threads:
            thread.start()
        for index in range(len(entries)):
            with cond:
                while index not in results:
                    cond.wait()
                done, value = results.pop(index)
            if not done:
                raise value
            yield value
    finally:
        with cond:
            stopped[0] = True
        stream.close()  # a consumer still waiting on it raises, and stops
        for thread in threads:
            if thread.ident is not None:
                thread.join()


def verify_entry(
    entry: Entry,
    refs: Callable[[Entry], list[ChunkRef]],
    read: Callable[[list[ChunkRef]], Iterator[bytes]] | None,
    present: Callable[[str], bool],
    check_data: Callable[[Entry, bytes], None] | None,
) -> Verified:
    """Verify one entry (``RepositoryReader.verify_snapshot``): each chunk of ``refs(entry)``
    read and verified, in order, from ``read(refs)`` (the plaintexts), or (``read`` None) only
    checked ``present``; then its size, and ``check_data(entry, content)`` for a data entry
    read. The first problem stops the entry; chunks are counted up to it, bytes only if every
    chunk was checked."""
    count = total = counted = 0
    keep = read is not None and check_data is not None and entry.kind == "data"
    pieces: list[bytes] = []
    try:
        found = refs(entry)
        plains = None if read is None else read(found)
        try:
            for ref in found:
                if plains is None:
                    if not present(ref.id):
                        raise IntegrityError(f"chunk {ref.id} is missing from the repository")
                    total += ref.size
                elif not _HEX_ID.fullmatch(ref.id):
                    raise CorruptDataError(f"invalid chunk id {ref.id!r} in a manifest")
                else:
                    plain = next(plains)
                    total += len(plain)
                    if keep:
                        pieces.append(plain)
                count += 1
        finally:
            close = getattr(plains, "close", None)
            if close is not None:
                close()  # a stream's chunks not taken are let go
        counted = total
        if total != entry.size:
            raise CorruptDataError(f"{total} bytes instead of {entry.size}")
        if keep and check_data is not None:
            check_data(entry, b"".join(pieces))
    except (IntegrityError, StorageError) as exc:
        return count, counted, exc
    return count, total, None


class ListSource(Protocol):
    """What :func:`fresh_entry_refs` needs of the repository reader."""

    @property
    def store(self) -> Store: ...

    def fetch_blobs(self, cids: Iterable[str]) -> Iterator[Blob | None]: ...

    def decode_blob(self, ref: ChunkRef, blob: Blob | None) -> bytes: ...

    def remember_chunk_list(self, cid: str, refs: list[ChunkRef]) -> None: ...


def fresh_entry_refs(
    source: ListSource, entries: Sequence[Entry]
) -> Iterator[list[ChunkRef] | Exception]:
    """The chunk references of each entry, in order, as ``entry_refs(entry, fresh=True)``
    finds them: every chunk list read again from the store (as a verification must), but each
    list once, from a network store fetched ahead in coalesced, parallel reads rather than one
    round trip each (a local store's are read one by one: it reads no gaps between them). An
    entry whose chunk list is damaged or missing yields the first such error instead."""
    wanted = dict.fromkeys(lref for entry in entries for lref in entry.lists)
    fetched = (
        iter(())  # each read alone, when taken
        if source.store.cheap_exists
        else source.fetch_blobs(lref.id for lref in wanted if _HEX_ID.fullmatch(lref.id))
    )
    found: dict[ListRef, list[ChunkRef] | Exception] = {}
    with BlobsAhead(fetched) as blobs:
        for entry in entries:
            for lref in entry.lists:  # each list's blob taken where first wanted, in order
                if lref not in found:
                    found[lref] = _fresh_list(source, lref, blobs)
            refs = list(entry.chunks)  # inline chunks come first, then those of the lists
            failed: Exception | None = None
            for lref in entry.lists:
                listed = found[lref]
                if isinstance(listed, Exception):
                    failed = listed
                    break
                refs.extend(listed)
            yield refs if failed is None else failed


_HEX_ID = re.compile(r"[0-9a-f]{64}")


def _fresh_list(source: ListSource, lref: ListRef, blobs: BlobsAhead) -> list[ChunkRef] | Exception:
    """The references chunk list ``lref`` holds, from the next of ``blobs`` (checked like
    ``RepositoryReader.entry_refs`` checks it), or why it cannot be read."""
    try:
        if not _HEX_ID.fullmatch(lref.id):
            raise CorruptDataError(f"invalid chunk id {lref.id!r} in a manifest")
        plain = source.decode_blob(ChunkRef(lref.id, lref.size, lref.stored), blobs.take())
        refs = decode_chunk_list(plain, f"chunk list {lref.id}")
        if len(refs) != lref.count:
            raise CorruptDataError(f"chunk list {lref.id}: {len(refs)} chunks, not {lref.count}")
    except (IntegrityError, StorageError) as exc:
        return exc
    source.remember_chunk_list(lref.id, refs)
    return refs
