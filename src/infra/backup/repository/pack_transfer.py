"""Whole packs copied between replicas by ``sync`` (both repositories in format 2).

A replica shares the source's keys, so a pack is valid there byte for byte. When the backups a
sync copies need most of a pack (at least :data:`WHOLE_PACK_SHARE` of its blob bytes, the share
below which the destination's garbage collection would repack it), the pack is copied whole:
read in ranged parts the store fetches in parallel, checked, and written with the destination's
``put_many`` (parallel on S3), :data:`COPY_BATCH` bytes at a time, on an upload thread while the
next packs are read and checked. Other needed blobs are read in coalesced ranged reads and
packed anew on the destination (``receiver.py``).

**Checks** (a copy never spreads damage). A pack is copied only if

- its name is the hash of its bytes (every byte as its writer wrote it, header and trailer
  included);
- its header lists exactly the blobs the source's pack index says (what the destination will
  read from it);
- every blob in it decodes and verifies against its id and size, as each blob copied alone
  is (what the hash cannot show: a blob damaged before its pack was written). Blobs no
  copied backup uses yet are checked too: the destination holds them afterwards, and later
  copies take them as present. They are at most a fifth of the pack (see above).

A pack that fails a check is not copied: its needed blobs are copied one by one instead, each
verified, so a damaged one fails the copy of its backup naming the chunk, and the others still
arrive. Packs the destination has already (its pack index, which knows every pack there) or
that a pending collection there names are never uploaded; so a rerun after an interruption
uploads nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar, cast

from src.infra.backup.errors import CorruptDataError, IntegrityError
from src.infra.backup.format.layout import PACK_PREFIX, pack_key
from src.infra.backup.format.packs import (
    PACK_SIZE,
    TRAILER_SIZE,
    PackEntry,
    content_id,
    decode_pack_header,
    header_span,
)
from src.infra.backup.repository.gc import Collected
from src.infra.backup.repository.pack_gc import REPACK_BELOW
from src.infra.backup.repository.pack_index import PackedRepository
from src.infra.backup.repository.pack_reader import SPAN_LIMIT

log = logging.getLogger(__name__)
_R = TypeVar("_R")

# A pack is copied whole when the backups copied need at least this share of its blob bytes.
WHOLE_PACK_SHARE = REPACK_BELOW
# Packs are written in batches of about this many bytes (one put_many each).
COPY_BATCH = 16 * 1024 * 1024
# Packs checked at once (hashing, decoding: both release the GIL).
CHECK_THREADS = 2
# Whole packs of consecutive backups copied in one go (see TransferPlan.group): about a
# pack's worth, so small backups share one round of requests while large ones are still
# committed one by one as they arrive.
GROUP_BYTES = PACK_SIZE
GROUP_BACKUPS = 1000


PackRepository = PackedRepository


@dataclass
class TransferPlan:
    """Which source packs one sync copies whole: decided once, for all the backups it copies.

    ``needed``: chunk id -> plaintext size of every blob the copied backups use that the
    destination lacks; ``whole``: the packs to copy whole, with their stored ``sizes``;
    ``home``: the whole pack that brings each needed chunk; ``done``: packs copied (or
    refused) so far in this run.
    """

    needed: dict[str, int] = field(default_factory=dict)
    whole: dict[str, PackEntry] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    home: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    # Chunks of the packs copied whole so far: they are at the destination now.
    arrived: set[str] = field(default_factory=set)
    # Backup id -> the packs it needs whole; and its stored manifest, read ahead.
    by_backup: dict[str, list[str]] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)

    def packs_for(self, cids: Iterable[str]) -> list[str]:
        """The packs still to copy whole for ``cids``, in the order first needed."""
        found: dict[str, None] = {}
        for cid in cids:
            pack = self.home.get(cid)
            if pack is not None and pack not in self.done:
                found[pack] = None
        return list(found)

    def group(self, order: list[str], start: int, limit: int = GROUP_BYTES) -> list[str]:
        """The packs to copy whole, at once, before backup ``order[start]`` (``order``: the
        backups to copy, in order): none if it needs none still to copy, else those it needs
        and those of the next backups, up to about ``limit`` bytes (small backups then share
        one round of requests instead of paying one each; at most :data:`GROUP_BACKUPS`)."""
        found: dict[str, None] = {}
        total = 0
        for backup_id in order[start : start + GROUP_BACKUPS]:
            packs = [p for p in self.by_backup.get(backup_id, ()) if p not in self.done]
            if not found and not packs:
                return []  # the next backup needs no pack: it goes first
            for pack in packs:
                if pack not in found and (total < limit or backup_id == order[start]):
                    found[pack] = None
                    total += self.sizes[pack]
            if total >= limit:
                break
        return list(found)

    def refuse(self, pack_id: str) -> None:
        """Copy the needed blobs of ``pack_id`` one by one instead (it failed a check)."""
        self.done.add(pack_id)
        entry = self.whole.pop(pack_id, None)
        if entry is not None:
            for blob in entry.blobs:
                if self.home.get(blob.id) == pack_id:
                    del self.home[blob.id]


def plan_transfer(
    source: PackRepository,
    destination: PackRepository,
    needed: dict[str, int],
    collected: Collected,
) -> TransferPlan:
    """The :class:`TransferPlan` for copying ``needed`` (chunk id -> plaintext size) from
    ``source`` to ``destination``; nothing whole unless both are in format 2."""
    plan = TransferPlan(needed=needed)
    if not (source.packed and destination.packed and needed):
        return plan
    there = destination.pack_index.packs()
    sizes = {info.key.rsplit("/", 1)[-1]: info.size for info in source.store.list_info(PACK_PREFIX)}
    for pack_id, entry in source.pack_index.packs().items():
        if pack_id in there or pack_id in collected.packs or pack_id not in sizes:
            continue
        total = sum(blob.length for blob in entry.blobs)
        wanted = sum(blob.length for blob in entry.blobs if blob.id in needed)
        if total and wanted >= WHOLE_PACK_SHARE * total:
            plan.whole[pack_id] = entry
            plan.sizes[pack_id] = sizes[pack_id]
            for blob in entry.blobs:
                if blob.id in needed:
                    plan.home.setdefault(blob.id, pack_id)
    return plan


def copy_packs(
    source: PackRepository,
    destination: PackRepository,
    plan: TransferPlan,
    pack_ids: list[str],
    tick: Callable[[], None] | None = None,
) -> list[str]:
    """Copy ``pack_ids`` (of ``plan.whole``) whole, each checked (see the module docstring);
    returns those copied, all durable at the destination and in its pack index when this
    returns (their chunks are added to ``plan.arrived``). A pack that failed a check or is
    gone is refused (:meth:`TransferPlan.refuse`) and left out. ``tick`` is called after
    each pack (to renew a lease)."""
    copied: list[str] = []
    if not pack_ids:
        return copied
    # A backup's one small pack is checked and written here and now: threads to overlap
    # would cost more than they save.
    small = sum(plan.sizes[pack_id] for pack_id in pack_ids) <= COPY_BATCH
    pool = None if small else ThreadPoolExecutor(CHECK_THREADS, "peak-backup-check")
    uploader = _Uploader(destination, threaded=not small)
    parts = source.store.get_range_many(_parts(plan, pack_ids))
    pending: deque[tuple[str, bytes, Future[str | None]]] = deque()
    try:
        for pack_id in pack_ids:
            count = -(-plan.sizes[pack_id] // SPAN_LIMIT)
            pieces = [piece for piece in (next(parts) for _ in range(count)) if piece]
            if len(pieces) != count:
                _refuse(plan, pack_id, "it is gone from the source")
                continue
            data = b"".join(pieces)
            del pieces
            entry = plan.whole[pack_id]
            check = _submit(pool, _check_pack, source, pack_id, entry, data, plan.needed)
            pending.append((pack_id, data, check))
            while len(pending) > CHECK_THREADS:
                _finish(plan, pending.popleft(), uploader, copied)
            if tick is not None:
                tick()
        while pending:
            _finish(plan, pending.popleft(), uploader, copied)
    finally:
        close = getattr(parts, "close", None)
        if close is not None:
            close()  # reads still in flight after a failure are cancelled
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        uploader.close()
    return copied


def _submit(pool: ThreadPoolExecutor | None, fn: Callable[..., _R], *args: object) -> Future[_R]:
    """``pool.submit``; without a pool, or at interpreter shutdown (an exit-time flush of the
    off-site replica, when no new futures are taken), the call itself."""
    if pool is not None:
        with contextlib.suppress(RuntimeError):
            return pool.submit(fn, *args)
    future: Future[_R] = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:  # noqa: BLE001 - raised by result(), as from a pool
        future.set_exception(exc)
    return future


def _parts(plan: TransferPlan, pack_ids: list[str]) -> Iterator[tuple[str, int, int]]:
    """Each pack in ranged parts of at most :data:`SPAN_LIMIT` bytes (read in parallel)."""
    for pack_id in pack_ids:
        size = plan.sizes[pack_id]
        for start in range(0, size, SPAN_LIMIT):
            yield pack_key(pack_id), start, min(SPAN_LIMIT, size - start)


def _finish(
    plan: TransferPlan,
    item: tuple[str, bytes, Future[str | None]],
    uploader: _Uploader,
    copied: list[str],
) -> None:
    pack_id, data, check = item
    problem = check.result()
    if problem is not None:
        _refuse(plan, pack_id, problem)
        return
    entry = plan.whole[pack_id]
    uploader.add(entry, data)
    plan.done.add(pack_id)
    plan.arrived.update(blob.id for blob in entry.blobs)
    copied.append(pack_id)


def _refuse(plan: TransferPlan, pack_id: str, why: str) -> None:
    log.warning("pack %s is not copied whole (%s): its blobs are copied one by one", pack_id, why)
    plan.refuse(pack_id)


def _check_pack(
    source: PackRepository, pack_id: str, entry: PackEntry, data: bytes, needed: dict[str, int]
) -> str | None:
    """Why the pack may not be copied whole, or ``None`` (see the module docstring)."""
    view = memoryview(data)
    key = pack_key(pack_id)
    try:
        if content_id(view) != pack_id:
            return "its content does not match its name"
        offset, length = header_span(view[-TRAILER_SIZE:], len(view), key)
        table = decode_pack_header(view[offset : offset + length], offset, source.keys, key)
        if sorted(table, key=_order) != sorted(entry.blobs, key=_order):
            return "its header does not list what the pack index says"
        codec = source.codec
        for blob in entry.blobs:  # the size a copied backup expects, else the index's
            piece = view[blob.offset : blob.offset + blob.length]
            size = needed.get(blob.id, blob.size)
            codec.decode(cast(bytes, piece), blob.id, size)  # reads any bytes-like object
    except (CorruptDataError, IntegrityError) as exc:
        return str(exc)
    return None


def _order(blob: object) -> tuple[object, ...]:
    return tuple(getattr(blob, name) for name in ("offset", "id", "length", "size"))


class _Uploader:
    """Writes checked packs to the destination in batches: on a thread of its own, one
    batch while the next is gathered (two in memory at most), or ``threaded=False`` in the
    caller's thread; :meth:`close` waits for the last one and raises the first failure."""

    def __init__(self, destination: PackRepository, *, threaded: bool = True) -> None:
        self._destination = destination
        self._threaded = threaded
        self._batch: list[tuple[PackEntry, bytes]] = []
        self._bytes = 0
        self._queue: queue.Queue[list[tuple[PackEntry, bytes]] | None] = queue.Queue(1)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def add(self, entry: PackEntry, data: bytes) -> None:
        self._raise()
        self._batch.append((entry, data))
        self._bytes += len(data)
        if self._bytes >= COPY_BATCH:
            self._send()

    def close(self) -> None:
        """Write what is left and wait for the uploads; the first failure is raised."""
        if self._error is None:
            self._send()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise()

    def _send(self) -> None:
        batch, self._batch, self._bytes = self._batch, [], 0
        if not batch:
            return
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="peak-backup-upload", daemon=True)
            try:
                if self._threaded:
                    thread.start()
            except RuntimeError:  # interpreter shutdown
                self._threaded = False
            if not self._threaded:  # written here and now
                self._write(batch)
                return
            self._thread = thread
        self._queue.join()  # the previous batch is written: two batches in memory at most
        self._queue.put(batch)

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is None:
                self._write(batch)
            del batch
            self._queue.task_done()

    def _write(self, batch: list[tuple[PackEntry, bytes]]) -> None:
        destination = self._destination
        try:
            destination.store.put_many((pack_key(e.pack), data) for e, data in batch)
            destination.pack_index.add_packs([entry for entry, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
