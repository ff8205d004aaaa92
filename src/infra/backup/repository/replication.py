"""Replicas: copies of a repository elsewhere (typically S3), kept up to date by ``sync``.

A replica shares the source's ``repo.json`` (its repository id, chunker and encryption header),
so blobs and manifests are copied byte for byte: chunk ids (keyed in encrypted repositories)
and sealed manifests stay valid, and nothing is decrypted or re-compressed. ``sync`` copies the
backups the destination lacks, oldest first, each with only the blobs the destination lacks,
verifying every blob before it is written; each backup's manifest is written last, so an
interrupted sync leaves no partial backup, and the next run copies only what is still missing.
Between two format-2 repositories, packs the copied backups mostly need are copied whole
(checked: ``pack_transfer.py``), the other blobs read in coalesced ranged reads and packed
anew; uploads run in parallel. Backups deleted from the source stay in the replica: it keeps
its own retention.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from src.infra.backup.errors import (
    BackupError,
    BackupNotFoundError,
    IntegrityError,
    InvalidInputError,
    ObjectExistsError,
    RepositoryNotFoundError,
)
from src.infra.backup.format.index import Summary
from src.infra.backup.format.layout import REPO_KEY, snapshot_key
from src.infra.backup.format.manifest import Manifest, RepoConfig, decode_checked, open_manifest
from src.infra.backup.repository.gc import close_gc_state
from src.infra.backup.repository.locks import Lease
from src.infra.backup.repository.pack_transfer import TransferPlan
from src.infra.backup.repository.reader import announce_total
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)

SyncProgress = Callable[[str, int, int], None]  # (backup id, blobs copied, bytes copied)


@dataclass
class Lag:
    """What a destination still lacks of the source."""

    backups: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    oldest_utc: str | None = None


@dataclass
class SyncReport:
    """The outcome of one :func:`sync` run."""

    source: str
    destination: str
    copied: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    # A different backup had the same id there: stored under a new id (source id -> new id)
    # when renaming was asked for, else left out and listed as a conflict.
    renamed: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)  # deleted from the source meanwhile
    blobs_copied: int = 0
    bytes_copied: int = 0
    packs_copied: int = 0  # source packs copied whole (their blobs are among those counted)
    verified: int = 0
    seconds: float = 0.0
    lag: Lag = field(default_factory=Lag)


def open_replica(source: Repository, store: Store, *, create: bool) -> Repository:
    """The replica of ``source`` in ``store``; with ``create``, a new one is initialized with
    the source's ``repo.json``. :class:`InvalidInputError` if ``store`` holds a different
    repository, :class:`RepositoryNotFoundError` if it holds none and ``create`` is false."""
    try:
        raw = store.get(REPO_KEY)
    except KeyError:
        if not create:
            raise RepositoryNotFoundError(f"no replica at {store.location}") from None
        raw = source.store.get(REPO_KEY)
        if source.packed:  # as a new repository does (see Repository.open)
            close_gc_state(store)
        try:
            store.put(REPO_KEY, raw, exclusive=True)
        except ObjectExistsError:
            raw = store.get(REPO_KEY)  # created concurrently
    config = decode_checked(raw, RepoConfig, f"{store.location}/{REPO_KEY}")
    if config.repository_id != source.config.repository_id:
        raise InvalidInputError(
            f"{store.location} holds another repository (id {config.repository_id}), not a "
            f"replica of {source.store.location} (id {source.config.repository_id})"
        )
    return Repository(store, config, source.compression, source.keys)


def lag(
    source: Repository, destination: Repository, *, backup_ids: Iterable[str] | None = None
) -> Lag:
    """The backups of ``source`` (or of ``backup_ids``) missing in ``destination``, and the
    blobs and bytes that copying them would transfer (each shared blob counted once)."""
    wanted = set(backup_ids) if backup_ids is not None else None
    missing = _missing(source.list_summaries(), set(destination.snapshot_ids()), wanted)
    result = Lag(backups=[s.backup_id for s in missing])
    if missing:
        result.oldest_utc = missing[0].time_utc.isoformat()
        manifests = []
        for summary in missing:
            try:
                manifests.append(source.read_manifest(summary.backup_id))
            except BackupNotFoundError:
                continue
        result.blobs, result.bytes = _pending(source, manifests, destination.chunk_ids())
    return result


def _pending(
    source: Repository, manifests: Iterable[Manifest], present: set[str]
) -> tuple[int, int]:
    """The blobs of ``manifests`` not in ``present``, and their stored bytes (each shared
    blob counted once)."""
    seen: set[str] = set()
    blobs = size = 0
    for manifest in manifests:
        for cid, (_, stored) in source.blob_sizes(manifest).items():
            if cid not in present and cid not in seen:
                seen.add(cid)
                blobs += 1
                size += stored
    return blobs, size


def sync(
    source: Repository,
    destination: Repository,
    *,
    backup_ids: Iterable[str] | None = None,
    verify: bool = False,
    progress: SyncProgress | None = None,
    present: set[str] | None = None,
    rename: bool = False,
) -> SyncReport:
    """Copy to ``destination`` the backups of ``source`` it lacks (or only ``backup_ids``),
    oldest first; ``verify`` then reads every copied backup back from the destination.
    ``progress(backup_id, blobs, bytes)`` follows each copied backup (told the total bytes
    first if it has ``set_total``). ``present``: blob ids known to be in the destination (a
    long-running replicator keeps them between runs; listed when ``None``), updated with
    what is copied. ``rename``: a
    different backup under the same id in the destination does not block the copy, which is
    committed under the next free id (fallback backups coming home do this)."""
    started = time.monotonic()
    report = SyncReport(source.store.location, destination.store.location)
    wanted = set(backup_ids) if backup_ids is not None else None
    # With rename, ids the destination has are compared too (same id, other backup?).
    there = set() if rename else set(destination.snapshot_ids())
    todo = _missing(source.list_summaries(), there, wanted)
    if todo:
        lease = destination.replication_lease()
        try:
            # Listed under the lease: garbage collection cannot delete these unseen now.
            known = destination.chunk_ids() if present is None else present
            manifests = _manifests(source, todo)
            if progress is not None:  # the bytes to copy, for an ETA (chunk lists are cached)
                parsed = (manifest for _, manifest in manifests.values())
                announce_total(progress, _pending(source, parsed, known)[1])
            plan = source.transfer_plan(destination, manifests, known, lease)
            _copy_all(
                source, destination, todo, known, lease, report, verify, progress, rename, plan
            )
        finally:
            lease.release()
    report.lag = lag(source, destination, backup_ids=wanted)
    report.seconds = time.monotonic() - started
    return report


def _copy_all(
    source: Repository,
    destination: Repository,
    todo: list[Summary],
    present: set[str],
    lease: Lease,
    report: SyncReport,
    verify: bool,
    progress: SyncProgress | None,
    rename: bool,
    plan: TransferPlan,
) -> None:
    order = [summary.backup_id for summary in todo]
    for index, backup_id in enumerate(order):
        # Whole packs of the next backups in one go (small backups share one upload).
        group = plan.group(order, index)
        if group:
            report.packs_copied += destination.receive_packs(source, plan, group, lease)
        try:
            received = destination.receive_snapshot(
                source, backup_id, present, lease, rename=rename, plan=plan
            )
        except ObjectExistsError as exc:
            log.warning("not synced: %s", exc)
            report.conflicts.append(backup_id)
            continue
        except BackupNotFoundError:
            report.vanished.append(backup_id)
            continue
        if received.outcome == "present":
            report.already_there.append(backup_id)
            continue
        if received.outcome == "renamed":
            report.renamed[backup_id] = received.backup_id
            log.warning(
                "backup %s was synced as %s: %s held a different backup under its id",
                backup_id,
                received.backup_id,
                destination.store.location,
            )
        blobs, size = received.blobs, received.bytes
        report.copied.append(backup_id)
        report.blobs_copied += blobs
        report.bytes_copied += size
        report.packs_copied += received.packs
        log.info(
            "synced %s: %d blobs, %d bytes",
            backup_id,
            blobs,
            size,
            extra={"backup_id": backup_id, "blobs": blobs, "bytes": size},
        )
        if progress:
            progress(backup_id, blobs, size)
        if verify:
            outcome = destination.verify_snapshot(received.backup_id, read_data=True)
            if not outcome.ok:
                raise IntegrityError(
                    f"backup {backup_id} does not verify in {destination.store.location} "
                    f"after the copy: {'; '.join(outcome.problems[:3])}"
                )
            report.verified += 1


def _manifests(source: Repository, todo: list[Summary]) -> dict[str, tuple[bytes, Manifest]]:
    """The stored and parsed manifests of ``todo`` that read, fetched in parallel (the
    others fail in turn as they are copied)."""
    found: dict[str, tuple[bytes, Manifest]] = {}
    keys = [snapshot_key(summary.backup_id) for summary in todo]
    for summary, stored in zip(todo, source.store.get_many(keys), strict=True):
        backup_id = summary.backup_id
        if stored is None:
            continue
        try:
            raw = open_manifest(stored, source.keys, backup_id)
            found[backup_id] = (stored, decode_checked(raw, Manifest, f"manifest {backup_id}"))
        except BackupError:
            continue
    return found


def _missing(summaries: list[Summary], there: set[str], wanted: set[str] | None) -> list[Summary]:
    """Summaries (oldest first) of the backups not in ``there`` (and in ``wanted``)."""
    return [
        s
        for s in reversed(summaries)
        if s.backup_id not in there and (wanted is None or s.backup_id in wanted)
    ]


class Replicator:
    """Copies new backups to a replica in a background thread: the off-site outbox.

    :meth:`notify` after each local commit; the worker syncs whatever the replica lacks
    (``select`` may narrow that, e.g. to what the replica's retention keeps), retrying failures
    with capped exponential backoff, so backups made while the replica was unreachable follow
    once it is back. Nothing is kept only in memory: what is pending is always "the backups
    the replica lacks", so a process that dies with work pending leaves it to the next one.
    """

    def __init__(
        self,
        open_source: Callable[[], Repository],
        open_destination: Callable[[Repository], Repository],
        *,
        select: Callable[[Repository, Repository], Iterable[str] | None] | None = None,
        after_sync: Callable[[Repository, Repository, SyncReport], None] | None = None,
        rename: bool = False,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        name: str = "peak-backup-replicator",
    ) -> None:
        self._open_source = open_source
        self._open_destination = open_destination
        self._select = select
        self._after_sync = after_sync
        self._rename = rename
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._name = name
        self._cond = threading.Condition()
        self._requested = self._done = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._destination: Repository | None = None
        self.last_error: str | None = None
        self.last_report: SyncReport | None = None

    def notify(self) -> None:
        """Ask for a sync (starts the worker on first use)."""
        with self._cond:
            self._requested += 1
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until everything asked for so far is synced; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._requested
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return self._done >= target
                self._cond.wait(remaining)
            return True

    @property
    def pending(self) -> bool:
        """Whether a sync was asked for and has not completed yet."""
        with self._cond:
            return self._done < self._requested

    def stop(self, timeout: float = 5.0) -> None:
        """End the worker after its current step."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            with self._cond:
                while self._done >= self._requested and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                target = self._requested
            try:
                self._sync_once()
            except Exception as exc:  # noqa: BLE001 - retried; a replicator never dies
                self.last_error = str(exc)
                self._destination = None  # reopen
                log.warning("off-site sync failed (retrying in %.0f s): %s", delay, exc)
                with self._cond:  # a new backup (or a flush) retries at once
                    asked = self._requested
                    self._cond.wait_for(
                        lambda asked=asked: self._stopping or self._requested > asked,  # type: ignore[misc]
                        timeout=delay,
                    )
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            self.last_error = None
            with self._cond:
                self._done = max(self._done, target)
                self._cond.notify_all()

    def _sync_once(self) -> None:
        source = self._open_source()
        if self._destination is None:
            self._destination = self._open_destination(source)
        destination = self._destination
        backup_ids = self._select(source, destination) if self._select else None
        # The replica's chunks are listed again each run: garbage collection there (ours or
        # another host's) may have removed some since; only a lease-protected listing is safe.
        report = sync(source, destination, backup_ids=backup_ids, rename=self._rename)
        self.last_report = report
        if self._after_sync is not None:
            self._after_sync(source, destination, report)
