"""``BackupManager``: the seed's API (create, list, load, delete) plus retention."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.infra.backup.app.alerting import attach_alerts
from src.infra.backup.app.background import BackgroundWriter, Capture
from src.infra.backup.app.backup_info import BackupInfo
from src.infra.backup.app.config import BackupConfig, load_backup_config
from src.infra.backup.app.maintenance import (
    AutoPrune,
    delete_checked,
    delete_forgotten,
    plan_after_create,
    plan_checked,
    prune_logged,
)
from src.infra.backup.app.passphrase import read_passphrase, refuse_unexpected_plaintext
from src.infra.backup.app.pins import pin_backup, pinned_ids, unpin_backup
from src.infra.backup.app.request import (
    BackupRequest,
    checked_request,
    encoded_request,
    request_entries,
)
from src.infra.backup.errors import (
    BackupError,
    BackupNotFoundError,
    RepositoryNotFoundError,
    StorageError,
)
from src.infra.backup.format.ids import (
    validate_backup_type,
)
from src.infra.backup.format.manifest import Manifest
from src.infra.backup.format.values import ENCODING_NAME
from src.infra.backup.policy.references import resolve_reference
from src.infra.backup.policy.replica import ReplicaLag
from src.infra.backup.policy.retention import (
    Decision,
)
from src.infra.backup.repository.reader import ProgressCallback
from src.infra.backup.repository.repository import Repository
from src.infra.backup.repository.snapshot_writer import DataInput

if TYPE_CHECKING:
    from src.infra.backup.app.alerting import AlertService
    from src.infra.backup.app.offsite import ReplicaCoordinator
    from src.infra.backup.app.outcome import BackupHook
    from src.infra.backup.repository.check import CheckReport
    from src.infra.backup.repository.gc import PruneReport

# Modules that only one operation needs (the archiver and file sources, hooks, replicas,
# prune, check) are imported inside it: listing and restoring start without them (see
# docs/PERFORMANCE.md, "Start-up").

log = logging.getLogger(__name__)


class BackupManager:
    """Creates, lists, loads and deletes backups in one repository.

    ``BackupManager()`` uses the ``[backup]`` table of the config file (``config.toml`` or
    ``$PEAK_TRADE_CONFIG_PATH``), else the defaults, so the CLI, a scheduler and library code
    agree on one repository.
    """

    def __init__(
        self,
        config: BackupConfig | None = None,
        *,
        passphrase: str | Callable[[], str] | None = None,
    ) -> None:
        self.config = config if config is not None else load_backup_config()
        # For encrypted repositories: a passphrase (then the repository must be encrypted),
        # or a function returning it; by default $PEAK_BACKUP_PASSWORD, then [backup]
        # password_file, then a terminal prompt.
        self._passphrase_source = passphrase
        self._repository: Repository | None = None
        self._auto_prune = AutoPrune(self.config, self.prune)
        self._background = BackgroundWriter()
        # Called after every create_backup attempt (metrics.py adds one); see status.py.
        self.hooks: list[BackupHook] = []
        self._replica_coordinator: ReplicaCoordinator | None = None
        self.alerts: AlertService | None = attach_alerts(self)  # [backup.alerts]: a hook

    @property
    def _replicas(self) -> ReplicaCoordinator:
        """The off-site replicator and the fallback repository (built on first use)."""
        if self._replica_coordinator is None:
            from src.infra.backup.app.offsite import ReplicaCoordinator

            self._replica_coordinator = ReplicaCoordinator(
                self.config,
                repository=lambda: self.repository,
                opened=lambda: self._repository,
                passphrase=self._passphrase,
            )
        return self._replica_coordinator

    @property
    def backup_dir(self) -> Path:
        """The repository directory (``backup_path``, absolute) of a local repository. The
        original implementation kept one folder per backup below it; here it holds the
        repository (see the README's compatibility notes). An S3 repository has no local
        directory: :class:`ConfigError` naming its URL."""
        return self.config.repository_path

    @property
    def repository(self) -> Repository:
        """The repository, opened on first use; :class:`RepositoryNotFoundError` if there is
        none yet (reading never creates one; :meth:`create_backup` does)."""
        return self.open_repository(create=False)

    def open_repository(self, *, create: bool) -> Repository:
        """Open the repository (once per manager), creating it if ``create`` and missing."""
        if self._repository is None:
            store = self.config.open_store()
            try:
                repository = Repository.open(
                    store,
                    compression=self.config.compression_setting,
                    passphrase=self._passphrase,
                    encryption=self.config.encryption,
                    create=create and self.config.fallback_path is None,
                )
            except RepositoryNotFoundError:
                if not create:
                    raise
                repository = self._replicas.create_primary(store)
            refuse_unexpected_plaintext(
                repository,
                store.location,
                encryption=self.config.encryption,
                passphrase_given=isinstance(self._passphrase_source, str),
            )
            self._repository = repository
            if self.config.fallback_path is not None:
                self._replicas.prepare_fallback(repository)
        return self._repository

    def _record(
        self,
        backup_type: str,
        started: float,
        *,
        manifest: Manifest | None = None,
        error: BackupError | None = None,
        in_background: bool = False,
    ) -> None:
        """Log the outcome, record it in the run history and pass it to ``self.hooks``."""
        from src.infra.backup.app.outcome import record_outcome

        record_outcome(
            backup_type,
            time.monotonic() - started,
            manifest=manifest,
            error=error,
            repository=self._repository,
            open_repository=lambda: self.open_repository(create=False),
            hooks=self.hooks,
            logger=log,
            in_background=in_background,
        )

    def _passphrase(self) -> str:
        source = self._passphrase_source
        if isinstance(source, str):
            return source
        if source is not None:
            return source()
        return read_passphrase(password_file=self.config.password_file)

    # -- create ----------------------------------------------------------------------------

    def create_backup(
        self,
        data: Mapping[str, Any] | None = None,
        backup_type: str = "manual",
        *,
        tags: Mapping[str, str] | None = None,
        note: str | None = None,
        include_files: bool | None = None,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Back up ``data`` (a mapping of names to values) and the configured file sources.

        Returns the new backup's id, ``<type>_<YYYYmmdd_HHMMSS>`` (with ``_2``, ``_3`` ... when
        that id is taken). Values are checked before anything is written; an unsupported value
        raises :class:`UnsupportedValueError` naming where it is. ``include_files`` defaults to
        backing up the configured ``sources`` when there are any. After the backup, retention
        (``retention_days``) runs; it never deletes the new backup nor the newest of a type.
        The outcome (success or :class:`BackupError`) is recorded best-effort in the run
        history (``status.py``) and passed to ``self.hooks``.

        ``[backup.hooks]``: the ``before`` commands run first (with ``PEAK_BACKUP_TYPE``); one
        that fails fails the backup with :class:`HookError` before anything is written. The
        ``after`` commands run last, after the outcome is recorded, on success and on failure
        (``PEAK_BACKUP_OUTCOME`` and friends, see ``hooks.outcome_environment``); their
        failures are only logged. Internal snapshots (``pre_restore``) do not run hooks.
        """
        return self._backup(
            backup_type,
            lambda: encoded_request(
                checked_request(
                    self.config, data, backup_type, tags, note, include_files, progress
                ),
                data,
            ),
        )

    def _backup(
        self,
        backup_type: str,
        make_request: Callable[[], BackupRequest],
        *,
        in_background: bool = False,
    ) -> str:
        """One backup attempt around ``make_request()``: hooks, the write (or the fallback),
        outcome recording, the off-site notification. Returns the id; raises its error."""
        started = time.monotonic()
        hooks = self.config.hooks
        if hooks.before or hooks.after:
            from src.infra.backup.app.hooks import WarningCounter, outcome_environment, run_hooks
        # Only after hooks need the count of logged warnings: nothing extra on a plain backup.
        warnings = WarningCounter() if hooks.after else None
        result: Manifest | Exception | None = None  # what the after hooks are told
        try:
            with warnings if warnings is not None else contextlib.nullcontext():
                if hooks.before:
                    try:
                        validate_backup_type(backup_type)  # refuse a bad call before any hook
                        run_hooks(
                            hooks.before,
                            phase="before",
                            timeout=hooks.timeout,
                            env={"PEAK_BACKUP_TYPE": backup_type},
                            cwd=self.config.source_root,
                        )
                    except BackupError as exc:
                        self._record(backup_type, started, error=exc, in_background=in_background)
                        raise
                try:
                    request = make_request()
                    manifest = self._write(request)
                except StorageError as exc:
                    rescued = self._replicas.backup_to_fallback(
                        exc, lambda fallback: self._write(request, fallback)
                    )
                    if rescued is None:
                        self._record(backup_type, started, error=exc, in_background=in_background)
                        raise
                    self._record(backup_type, started, manifest=rescued)
                    result = rescued
                    return rescued.backup_id
                except BackupError as exc:
                    self._record(backup_type, started, error=exc, in_background=in_background)
                    raise
                self._record(backup_type, started, manifest=manifest)
                result = manifest
                if self._replica_coordinator is not None or self.config.offsite is not None:
                    self._replicas.after_commit()
                return manifest.backup_id
        except Exception as exc:
            result = exc
            raise
        finally:
            if warnings is not None and result is not None:
                run_hooks(
                    hooks.after,
                    phase="after",
                    timeout=hooks.timeout,
                    env=outcome_environment(
                        backup_type=backup_type,
                        backup_id=result.backup_id if isinstance(result, Manifest) else None,
                        error=result if isinstance(result, Exception) else None,
                        warnings=warnings.total(
                            result.warnings if isinstance(result, Manifest) else ()
                        ),
                        duration_seconds=time.monotonic() - started,
                    ),
                    cwd=self.config.source_root,
                )

    # -- off-site and fallback (offsite.ReplicaCoordinator does the work) --------------------

    def flush_offsite(self, timeout: float | None = None) -> bool:
        """Wait until the off-site replica has every backup made so far (``timeout``
        seconds, default ``flush_timeout``); ``True`` when it has. Without
        ``[backup.offsite]``, ``True`` at once."""
        return self._replicas.flush_offsite(timeout)

    def flush_fallback(self, timeout: float) -> bool:
        """Wait until fallback backups asked to move back have moved (``True`` when nothing
        is pending)."""
        return self._replicas.flush_sync_back(timeout)

    def offsite_lag(self) -> ReplicaLag | None:
        """Backups the off-site replica lacks and should have (``None`` without
        ``[backup.offsite]``); an unreachable replica is reported in ``error``."""
        return self._replicas.offsite_lag()

    def fallback_lag(self) -> ReplicaLag | None:
        """Backups in ``fallback_path`` the repository lacks (``None`` without a fallback
        repository)."""
        return self._replicas.fallback_lag()

    def _write(self, request: BackupRequest, target: Repository | None = None) -> Manifest:
        """Store ``request`` with the configured file sources into the repository (or into
        ``target``, the fallback: then no retention runs)."""
        repository = target or self.open_repository(create=True)
        entries, warnings = request_entries(request, self.config, encrypted=repository.encrypted)
        manifest = repository.create_snapshot(
            request.backup_type,
            entries,
            tags=request.tags,
            note=request.note,
            base_dir=str(self.config.source_root) if request.include_files else None,
            progress=request.progress,
            warnings=warnings,
            taken_at=request.taken_at,
        )
        if target is None and (self.config.retention is not None or self.config.retention_days > 0):
            try:
                self._retain_after_create(manifest.backup_id)
            except BackupError as exc:  # the backup itself is committed and safe
                log.warning("retention after backup %s failed: %s", manifest.backup_id, exc)
        return manifest

    def _retain_after_create(self, new_id: str) -> None:
        """Retention on the path of every backup (see ``maintenance.plan_after_create``)."""
        decisions = plan_after_create(self.repository, self.config, new_id)
        if decisions:
            self.apply_retention(protect=[new_id], decisions=decisions)

    async def acreate_backup(
        self,
        data: Mapping[str, Any] | None = None,
        backup_type: str = "manual",
        *,
        tags: Mapping[str, str] | None = None,
        note: str | None = None,
        include_files: bool | None = None,
        progress: ProgressCallback | None = None,
    ) -> str:
        """:meth:`create_backup` for asyncio code: the whole backup (encoding, chunking,
        writing, retention) runs in a worker thread (``asyncio.to_thread``), so the event
        loop keeps running meanwhile.

        The values are encoded **in the worker thread**: the caller must not mutate ``data``
        (or anything inside it) until this returns; pass a copy if other tasks may change it.
        ``progress`` is called from the worker thread.
        """
        import asyncio

        return await asyncio.to_thread(
            self.create_backup,
            data,
            backup_type,
            tags=tags,
            note=note,
            include_files=include_files,
            progress=progress,
        )

    def start_backup(
        self,
        data: Mapping[str, Any] | None = None,
        backup_type: str = "manual",
        *,
        tags: Mapping[str, str] | None = None,
        note: str | None = None,
        include_files: bool | None = None,
    ) -> Future[str]:
        """Capture ``data`` now and store it in the background (see ``app/background.py``).

        Returns as soon as the state is captured: the caller may change ``data`` at once,
        also in place and deep inside, and the backup still holds it as it was at the call.
        The returned :class:`concurrent.futures.Future` gives the backup id once the backup
        is durable (``.result(timeout)``), or raises its error; the failure is also recorded
        in the run history. The backup's time, and the time in its id, is the call's; the
        id's suffix (``_2`` ...) is chosen when it commits. Bad arguments, and unsupported
        values in a small state (encoded at the call), raise at the call; in a large state
        (encoded by a forked child) from ``.result()``. Backups still pending when the process
        exits are waited for (up to 5 minutes); a process killed first loses them, and only
        them.
        """
        request = checked_request(self.config, data, backup_type, tags, note, include_files)
        taken_at = datetime.now(timezone.utc)
        capture = Capture.take(data or {})

        def make_request() -> BackupRequest:
            values = [
                DataInput(name, payload, ENCODING_NAME) for name, payload in capture.payloads()
            ]
            return replace(request, values=values, taken_at=taken_at)

        return self._background.submit(
            lambda: self._backup(backup_type, make_request, in_background=True)
        )

    async def astart_backup(
        self,
        data: Mapping[str, Any] | None = None,
        backup_type: str = "manual",
        *,
        tags: Mapping[str, str] | None = None,
        note: str | None = None,
        include_files: bool | None = None,
    ) -> Future[str]:
        """:meth:`start_backup` for asyncio code (it blocks only for the capture); await
        ``asyncio.wrap_future(handle)`` for the id."""
        return self.start_backup(
            data, backup_type, tags=tags, note=note, include_files=include_files
        )

    def close(self) -> None:
        """Stop the threads the repository's store keeps (an S3 client's); they start again
        when it is used next."""
        if self._repository is not None:
            self._repository.store.close()

    def wait_for_backups(self, timeout: float | None = None) -> bool:
        """Wait until every backup started with :meth:`start_backup` is stored or failed;
        ``False`` if ``timeout`` seconds passed first."""
        return self._background.wait(timeout)

    # -- read ------------------------------------------------------------------------------

    def list_backups(self, backup_type: str | None = None) -> list[BackupInfo]:
        """All readable backups, newest first, optionally of one type."""
        if backup_type is not None:
            validate_backup_type(backup_type)
        try:
            repository = self.repository
        except RepositoryNotFoundError:
            return []  # nothing backed up yet
        listed = repository.list_summaries(validate=False)
        if backup_type is None:
            return list(map(BackupInfo, listed))
        return [BackupInfo(s) for s in listed if s.backup_type == backup_type]

    def get_backup_info(self, backup_id: str) -> BackupInfo:
        """Metadata of one backup; :class:`BackupNotFoundError` if there is none."""
        return BackupInfo.from_manifest(self.repository.read_manifest(backup_id))

    def resolve(self, reference: str) -> str:
        """The id a reference names (``latest``, ``pre_trade~2``...: policy/references.py)."""
        return resolve_reference(reference, self.list_backups)

    def load_backup(self, backup_id: str) -> dict[str, Any]:
        """The data entries of a backup (id or reference) as values, every chunk verified (a
        backup not found while background backups are pending is looked for after them)."""
        backup_id = self.resolve(backup_id)
        repository = self.repository
        try:
            manifest = repository.read_manifest(backup_id)
        except BackupNotFoundError:
            if not self._background.pending():
                raise
            self._background.wait()
            manifest = repository.read_manifest(backup_id)
        data = {}
        for entry in manifest.entries:
            if entry.kind != "data":
                continue
            data[entry.name] = repository.read_value(manifest, entry)
        return data

    # -- pins and delete (app/pins.py) -----------------------------------------------------

    def pin(self, backup_id: str, *, note: str | None = None) -> str:
        """Pin a backup (id or reference; app/pins.py): retention keeps it; returns its id."""
        return pin_backup(self.repository, self.resolve(backup_id), note=note).backup_id

    def unpin(self, backup_id: str) -> bool:
        """Remove a backup's pin; ``False`` if it had none."""
        return unpin_backup(self.repository, self.resolve(backup_id))

    def pinned(self) -> set[str]:
        """The ids of the pinned backups (one listing of ``pins/``)."""
        try:
            return pinned_ids(self.repository)
        except RepositoryNotFoundError:
            return set()

    def delete_backup(self, backup_id: str, *, force: bool = False) -> None:
        """Delete a backup. Refuses the last good backup and a pinned one unless ``force=True``.

        Its chunks stay until garbage collection reclaims those no other backup uses.
        """
        delete_checked(self.repository, backup_id, force=force)

    def prune(
        self,
        *,
        dry_run: bool = False,
        grace: timedelta | None = None,
        lock_wait: float = 0.0,
    ) -> PruneReport:
        """Garbage-collect chunks no backup references (two phases, see ``gc.py``):
        returns what was collected, deleted and freed. ``RepositoryBusyError`` if another
        prune runs (``lock_wait`` seconds to wait for it)."""
        from src.infra.backup.repository.gc import PruneReport

        try:
            repository = self.repository
        except RepositoryNotFoundError:
            return PruneReport(dry_run=dry_run)  # nothing backed up yet: nothing to collect
        grace = grace if grace is not None else self.config.grace
        return prune_logged(repository, grace=grace, dry_run=dry_run, lock_wait=lock_wait)

    def check(
        self,
        *,
        read_data: bool = True,
        subset: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> CheckReport:
        """Check the whole repository (see ``check.py``); ``subset`` as ``verify
        --read-data-subset`` (``1/10``, ``10%``, ``50M``); ``progress``: bytes read."""
        from src.infra.backup.repository.check import check_repository, parse_subset

        repository = self.repository
        selector = None
        if subset is not None:
            total = repository.stored_bytes()
            selector = parse_subset(subset, total)
        report = check_repository(
            repository, read_data=read_data, subset=selector, progress=progress
        )
        if self.alerts is not None:  # damage alerts once; a full clean check clears it
            self.alerts.report_check(report, full=read_data and selector is None)
        return report

    def plan_retention(self, *, protect: Sequence[str] = ()) -> list[Decision]:
        """What retention would do now: one :class:`Decision` (keep or forget, and every rule
        that keeps it) per backup, newest first. Uses ``[backup.retention]`` when configured,
        else ``retention_days``; ``protect`` names backups kept whatever the policy."""
        try:
            repository = self.repository
        except RepositoryNotFoundError:
            return []
        return plan_checked(repository, self.config, protect=protect)

    def apply_retention(
        self,
        *,
        protect: Sequence[str] | None = None,
        decisions: Sequence[Decision] | None = None,
        auto_prune: bool = True,
    ) -> list[str]:
        """Delete the backups retention forgets (``decisions``, else :meth:`plan_retention`);
        returns the deleted ids. ``auto_prune``: then collect garbage in the background."""
        if decisions is None:
            decisions = self.plan_retention(protect=protect or ())
        deleted = delete_forgotten(self.repository, decisions)
        if deleted and auto_prune:
            self._auto_prune.start()
        return deleted


_default_manager: BackupManager | None = None


def get_backup_manager() -> BackupManager:
    """A process-wide ``BackupManager()`` built from the config file, created on first use."""
    global _default_manager
    if _default_manager is None:
        _default_manager = BackupManager()
    return _default_manager
