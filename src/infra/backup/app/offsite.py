"""Off-site replica and fallback repository: the policies around ``replication.py``.

``[backup.offsite]`` keeps a replica (typically ``s3://...``) up to date in the background:
:func:`offsite_replicator` builds the :class:`Replicator` a ``BackupManager`` notifies after each
commit. The replica applies its own retention: a backup its policy would forget is neither
copied nor kept, so local and off-site histories can differ in length (30 days here, a year
there).

``fallback_path`` takes backups while the primary store fails (disk full, S3 unreachable). It is
a replica of the primary (same ``repo.json``, prepared as soon as the primary is reachable), so
its backups are synced back byte for byte once the primary works again.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from src.infra.backup.app.config import BackupConfig
from src.infra.backup.app.config_sections import OffsiteSettings, is_s3_url
from src.infra.backup.app.maintenance import delete_forgotten
from src.infra.backup.errors import (
    BackupError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    StorageError,
)
from src.infra.backup.format.manifest import Manifest
from src.infra.backup.policy.replica import ReplicaLag, wanted_by_replica
from src.infra.backup.policy.retention import RetentionPolicy, apply_policy
from src.infra.backup.repository.gc import prune
from src.infra.backup.repository.replication import Replicator, SyncReport, open_replica
from src.infra.backup.repository.repository import Repository
from src.infra.backup.storage.base import Store

log = logging.getLogger(__name__)


def replica_lag(
    source: Repository, replica: Repository, policy: dict[str, RetentionPolicy] | None
) -> ReplicaLag:
    """What ``replica`` still lacks of ``source`` (two listings; no chunk is read)."""
    there = replica.list_summaries()
    present = {s.backup_id for s in there}
    wanted = wanted_by_replica(source.list_summaries(), there, policy, datetime.now(timezone.utc))
    pending = [s for s in reversed(wanted) if s.backup_id not in present]  # oldest first
    return ReplicaLag(
        replica.store.location,
        [s.backup_id for s in pending],
        pending[0].time_utc if pending else None,
    )


def offsite_replicator(
    config: BackupConfig, open_source: Callable[[], Repository]
) -> tuple[Replicator, OffsiteSettings]:
    """The background replicator of ``[backup.offsite]`` (``ConfigError`` if there is none)."""
    settings = config.offsite_settings
    if settings is None:
        raise BackupError("no [backup.offsite] is configured")
    policy = settings.retention
    state = {"last_prune": float("-inf")}
    if is_s3_url(settings.path):
        # Loaded now, in the thread that backs up: the replicator may first open the replica
        # while the interpreter exits (the flush), when the S3 backend's thread-pool module
        # can no longer be imported ("can't register atexit after shutdown").
        importlib.import_module("src.infra.backup.storage.s3")

    def open_destination(source: Repository) -> Repository:
        return open_replica(source, config.store_at(settings.path), create=True)

    def select(source: Repository, destination: Repository) -> list[str]:
        wanted = wanted_by_replica(
            source.list_summaries(),
            destination.list_summaries(),
            policy,
            datetime.now(timezone.utc),
        )
        return [s.backup_id for s in wanted]

    def after_sync(_source: Repository, destination: Repository, report: SyncReport) -> None:
        if policy is None:
            return
        forgotten = apply_replica_retention(destination, policy)
        grace = config.grace
        if forgotten and time.monotonic() - state["last_prune"] >= grace.total_seconds():
            state["last_prune"] = time.monotonic()
            try:
                prune(destination, grace=grace)
            except RepositoryBusyError:
                log.info("off-site prune skipped: another prune is running")

    replicator = Replicator(
        open_source,
        open_destination,
        select=select,
        after_sync=after_sync,
        name="peak-backup-offsite",
    )
    return replicator, settings


def apply_replica_retention(replica: Repository, policy: dict[str, RetentionPolicy]) -> list[str]:
    """Delete the replica's backups its own policy forgets; returns their ids. A refused
    delete raises (the replication run reports it), a concurrent one is skipped."""
    decisions = apply_policy(replica.list_summaries(), policy, datetime.now(timezone.utc))
    return delete_forgotten(replica, decisions, label="off-site retention")


def fallback_lag(fallback: Repository) -> ReplicaLag:
    """Backups waiting in the fallback repository: all of them (each is deleted there once
    it is synced back into the repository)."""
    pending = list(reversed(fallback.list_summaries()))
    return ReplicaLag(
        fallback.store.location,
        [s.backup_id for s in pending],
        pending[0].time_utc if pending else None,
    )


def move_back(fallback: Repository, report: SyncReport, grace: timedelta) -> None:
    """After a sync from the fallback into the repository: delete there what arrived (copied,
    renamed, or found identical), then collect its garbage (best effort)."""
    arrived = [*report.copied, *report.already_there]
    for backup_id in arrived:
        try:
            fallback.delete_snapshot(backup_id)
        except BackupError as exc:
            log.warning("fallback backup %s synced back but not removed: %s", backup_id, exc)
    if report.renamed:
        log.warning(
            "fallback backups stored under new ids: %s",
            ", ".join(f"{old} -> {new}" for old, new in report.renamed.items()),
        )
    if arrived:
        log.info("fallback backups synced back: %s", ", ".join(arrived))
        try:
            prune(fallback, grace=grace)
        except BackupError as exc:
            log.info("fallback prune skipped: %s", exc)


def open_fallback(
    config: BackupConfig,
    primary: Repository | None,
    *,
    passphrase: Callable[[], str] | None = None,
) -> Repository | None:
    """The fallback repository: a replica of ``primary`` (created as one when the primary is
    given), or, when the primary is unreachable, whatever is already there. ``None`` when
    there is no ``fallback_path`` or no fallback repository yet."""
    store = config.open_fallback_store()
    if store is None:
        return None
    if primary is not None:
        return open_replica(primary, store, create=True)
    try:
        return Repository.open(
            store, compression=config.compression_setting, passphrase=passphrase, create=False
        )
    except RepositoryNotFoundError:
        return None


class ReplicaCoordinator:
    """``[backup.offsite]`` and ``fallback_path`` for one ``BackupManager``: the background
    replicators, the fallback repository and what is pending in each."""

    def __init__(
        self,
        config: BackupConfig,
        *,
        repository: Callable[[], Repository],
        opened: Callable[[], Repository | None],
        passphrase: Callable[[], str],
    ) -> None:
        """``repository()`` opens (or returns) the primary repository, raising if it cannot;
        ``opened()`` is the primary if it was opened already, without trying; ``passphrase``
        gives the repositories' passphrase when one is needed."""
        self.config = config
        self._primary = repository
        self._opened_primary = opened
        self._passphrase = passphrase
        self.offsite: Replicator | None = None
        self.sync_back: Replicator | None = None
        self.fallback_pending = False

    # -- the primary and its fallback ----------------------------------------------------------

    def create_primary(self, store: Store) -> Repository:
        """A new repository; a replica of the fallback repository if one exists already
        (backups made there while the primary was unreachable can then be synced in)."""
        fallback = open_fallback(self.config, None, passphrase=self._passphrase)
        if fallback is not None:
            return open_replica(fallback, store, create=True)
        return Repository.open(
            store,
            compression=self.config.compression_setting,
            passphrase=self._passphrase,
            encryption=self.config.encryption,
            create=True,
        )

    def prepare_fallback(self, primary: Repository) -> None:
        """Make ``fallback_path`` a replica of the repository now, while it is reachable, so
        that fallback backups can later be synced back byte for byte; and notice fallback
        backups left by an earlier process."""
        try:
            fallback = open_fallback(self.config, primary, passphrase=self._passphrase)
            if fallback is not None and fallback.snapshot_ids():
                self.fallback_pending = True
        except BackupError as exc:
            log.warning("fallback_path %s is not usable: %s", self.config.fallback_path, exc)

    def fallback_repository(self, primary: Repository | None) -> Repository:
        """The fallback repository: a replica of the primary when that is reachable (or was,
        earlier in this process), else what is at ``fallback_path``, else a new repository
        (whose backups can then only come back once the primary is its replica)."""
        primary = primary or self._opened_primary()
        try:
            fallback = open_fallback(self.config, primary, passphrase=self._passphrase)
        except StorageError:  # the primary's repo.json is unreadable now: use what is there
            fallback = open_fallback(self.config, None, passphrase=self._passphrase)
        if fallback is None:
            store = self.config.open_fallback_store()
            assert store is not None
            fallback = Repository.open(
                store,
                compression=self.config.compression_setting,
                passphrase=self._passphrase,
                encryption=self.config.encryption,
                create=True,
            )
        return fallback

    def backup_to_fallback(
        self, failure: StorageError, create: Callable[[Repository], Manifest]
    ) -> Manifest | None:
        """The primary store failed: ``create`` the backup in ``fallback_path`` instead
        (``None`` when there is none, or it failed too)."""
        if self.config.fallback_path is None:
            return None
        try:
            fallback = self.fallback_repository(primary=None)
            manifest = create(fallback)
        except BackupError as exc:
            log.error("backup failed on the repository (%s) and on the fallback (%s)", failure, exc)
            return None
        self.fallback_pending = True
        log.warning(
            "the repository failed (%s); backup %s was written to the fallback %s and will be "
            "synced back when the repository works again",
            failure,
            manifest.backup_id,
            fallback.store.location,
            extra={"backup_id": manifest.backup_id, "fallback": fallback.store.location},
        )
        return manifest

    def sync_back_replicator(self) -> Replicator:
        """Moves fallback backups into the repository in the background (a backup whose id
        the repository has taken meanwhile arrives under the next free id)."""
        if self.sync_back is None:

            def done(fallback: Repository, _primary: Repository, report: SyncReport) -> None:
                move_back(fallback, report, self.config.grace)
                self.fallback_pending = bool(fallback.snapshot_ids())

            self.sync_back = Replicator(
                lambda: self.fallback_repository(primary=self._primary()),
                lambda fallback: open_replica(fallback, self._primary().store, create=False),
                after_sync=done,
                rename=True,
                name="peak-backup-sync-back",
            )
        return self.sync_back

    def flush_sync_back(self, timeout: float) -> bool:
        return self.sync_back is None or self.sync_back.flush(timeout)

    # -- off-site ------------------------------------------------------------------------------

    def after_commit(self) -> None:
        """Wake the off-site replicator, and move fallback backups back if there are any."""
        try:
            if self.config.offsite is not None:
                self.offsite_replicator().notify()
            if self.fallback_pending:
                self.sync_back_replicator().notify()
        except BackupError as exc:  # off-site trouble never fails a committed backup
            log.warning("off-site replication not started: %s", exc)

    def offsite_replicator(self) -> Replicator:
        """The background replicator of ``[backup.offsite]`` (created on first use; at
        process exit it gets ``flush_timeout`` to finish)."""
        if self.offsite is None:
            replicator, settings = offsite_replicator(self.config, self._primary)
            timeout = settings.flush_timeout.total_seconds()
            atexit.register(_flush_at_exit, replicator, timeout, settings.path)
            self.offsite = replicator
        return self.offsite

    def flush_offsite(self, timeout: float | None) -> bool:
        settings = self.config.offsite_settings
        if settings is None:
            return True
        replicator = self.offsite_replicator()
        replicator.notify()
        limit = settings.flush_timeout.total_seconds() if timeout is None else timeout
        return replicator.flush(limit)

    def offsite_lag(self) -> ReplicaLag | None:
        settings = self.config.offsite_settings
        if settings is None:
            return None
        try:
            source = self._primary()
        except RepositoryNotFoundError:
            return ReplicaLag(settings.path)
        try:
            try:
                replica = open_replica(source, self.config.store_at(settings.path), create=False)
            except RepositoryNotFoundError:
                wanted = wanted_by_replica(
                    source.list_summaries(), [], settings.retention, datetime.now(timezone.utc)
                )
                return ReplicaLag(
                    settings.path,
                    [s.backup_id for s in reversed(wanted)],
                    wanted[-1].time_utc if wanted else None,
                    error="no replica yet",
                )
            lag = replica_lag(source, replica, settings.retention)
        except BackupError as exc:
            return ReplicaLag(settings.path, error=str(exc))
        if self.offsite is not None and self.offsite.last_error:
            lag.error = self.offsite.last_error
        return lag

    def fallback_lag(self) -> ReplicaLag | None:
        try:
            primary: Repository | None = self._primary()
        except BackupError:
            primary = None
        try:
            fallback = open_fallback(self.config, primary, passphrase=self._passphrase)
        except BackupError as exc:
            return ReplicaLag(str(self.config.fallback_path), error=str(exc))
        if fallback is None:
            return None
        lag = fallback_lag(fallback)
        self.fallback_pending = bool(lag.pending)
        return lag


def _flush_at_exit(replicator: Replicator, timeout: float, where: str) -> None:
    if replicator.pending and not replicator.flush(timeout):
        log.warning(
            "exiting with backups not yet copied to %s (they follow with the next sync)", where
        )
