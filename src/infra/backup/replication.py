"""Replicas: copies of a repository elsewhere (typically S3), kept up to date by ``sync``.

A replica shares the source's ``repo.json`` (its repository id, chunker and encryption header),
so blobs and manifests are copied byte for byte: chunk ids (keyed in encrypted repositories)
and sealed manifests stay valid, and nothing is decrypted or re-compressed. ``sync`` copies the
backups the destination lacks, oldest first, each with only the blobs the destination lacks,
verifying every blob before it is written; each backup's manifest is written last, so an
interrupted sync leaves no partial backup, and the next run copies only what is still missing.
Backups deleted from the source stay in the replica: it keeps its own retention.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from src.infra.backup.errors import (
    BackupNotFoundError,
    IntegrityError,
    InvalidInputError,
    ObjectExistsError,
    RepositoryNotFoundError,
)
from src.infra.backup.manifest import RepoConfig, decode_checked
from src.infra.backup.repository import REPO_KEY, Repository
from src.infra.backup.snapshot_index import Summary
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
    vanished: list[str] = field(default_factory=list)  # deleted from the source meanwhile
    blobs_copied: int = 0
    bytes_copied: int = 0
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


def lag(source: Repository, destination: Repository) -> Lag:
    """The backups of ``source`` missing in ``destination``, and the blobs and bytes that
    copying them would transfer (each shared blob counted once)."""
    missing = _missing(source.list_summaries(), set(destination.snapshot_ids()), None)
    result = Lag(backups=[s.backup_id for s in missing])
    if missing:
        result.oldest_utc = missing[0].time_utc.isoformat()
        present = destination.chunk_ids()
        seen: set[str] = set()
        for summary in missing:
            try:
                manifest = source.read_manifest(summary.backup_id)
            except BackupNotFoundError:
                continue
            for cid, (_, stored) in source.blob_sizes(manifest).items():
                if cid not in present and cid not in seen:
                    seen.add(cid)
                    result.blobs += 1
                    result.bytes += stored
    return result


def sync(
    source: Repository,
    destination: Repository,
    *,
    backup_ids: Iterable[str] | None = None,
    verify: bool = False,
    progress: SyncProgress | None = None,
) -> SyncReport:
    """Copy to ``destination`` the backups of ``source`` it lacks (or only ``backup_ids``),
    oldest first; ``verify`` then reads every copied backup back from the destination."""
    started = time.monotonic()
    report = SyncReport(source.store.location, destination.store.location)
    wanted = set(backup_ids) if backup_ids is not None else None
    todo = _missing(source.list_summaries(), set(destination.snapshot_ids()), wanted)
    present = destination.chunk_ids() if todo else set()
    for summary in todo:
        backup_id = summary.backup_id
        try:
            blobs, size = destination.receive_snapshot(source, backup_id, present)
        except ObjectExistsError:
            report.already_there.append(backup_id)
            continue
        except BackupNotFoundError:
            report.vanished.append(backup_id)
            continue
        report.copied.append(backup_id)
        report.blobs_copied += blobs
        report.bytes_copied += size
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
            outcome = destination.verify_snapshot(backup_id, read_data=True)
            if not outcome.ok:
                raise IntegrityError(
                    f"backup {backup_id} does not verify in {destination.store.location} "
                    f"after the copy: {'; '.join(outcome.problems[:3])}"
                )
            report.verified += 1
    report.lag = lag(source, destination)
    report.seconds = time.monotonic() - started
    return report


def _missing(summaries: list[Summary], there: set[str], wanted: set[str] | None) -> list[Summary]:
    """Summaries (oldest first) of the backups not in ``there`` (and in ``wanted``)."""
    return [
        s
        for s in reversed(summaries)
        if s.backup_id not in there and (wanted is None or s.backup_id in wanted)
    ]
