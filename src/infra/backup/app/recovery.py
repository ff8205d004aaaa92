"""``RecoveryManager``: restore latest, by id, or into a directory; verify backups."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from src.infra.backup.app.backup_info import BackupInfo
from src.infra.backup.app.bot_guard import refuse_if_bot_running
from src.infra.backup.app.manager import BackupManager, get_backup_manager
from src.infra.backup.errors import (
    BackupError,
    BackupNotFoundError,
    IntegrityError,
    InvalidInputError,
    RecoveryError,
)
from src.infra.backup.files.in_place import (
    InPlaceResult,
    Overwrite,
    execute_in_place,
    plan_in_place,
)
from src.infra.backup.files.restore_stamp import STAMP_NAME, write_stamp
from src.infra.backup.files.restorer import check_layout, restore_path
from src.infra.backup.files.tree_restore import restore_tree
from src.infra.backup.format.ids import is_valid_backup_id, validate_backup_type
from src.infra.backup.format.manifest import Entry
from src.infra.backup.policy.point_in_time import parse_moment
from src.infra.backup.repository.history import record_verify
from src.infra.backup.repository.reader import (
    ProgressCallback,
    VerifyReport,
    announce_total,
    decode_data_payload,
)
from src.infra.backup.repository.repository import Repository

log = logging.getLogger(__name__)

#: ``reconcile(state, backup_time)``: see :meth:`RecoveryManager.restore_backup`.
Reconcile = Callable[[dict[str, Any], datetime], Any]


@dataclass
class RestoreResult:
    """What a restore into a directory wrote (``stamp``: its ``RESTORED_FROM`` file)."""

    backup_id: str
    target: Path
    written: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    verified: bool = False
    stamp: Path | None = None


class RecoveryManager:
    """Restores and verifies backups of one repository (the seed's recovery API)."""

    def __init__(self, backup_manager: BackupManager | None = None) -> None:
        self.manager = backup_manager if backup_manager is not None else BackupManager()
        # Backups found damaged by this manager: "latest" then means the newest intact one,
        # so the seed's "try an older backup" fallback reaches a backup that restores.
        self._damaged: set[str] = set()

    def restore_backup(
        self, backup_id: str | None = None, *, reconcile: Reconcile | None = None
    ) -> dict[str, Any]:
        """The data of backup ``backup_id`` (``None``: the newest that restores, as
        :meth:`restore_latest_backup`), verified. Any failure raises :class:`RecoveryError`
        (:class:`BackupNotFoundError` for an unknown id, :class:`IntegrityError` for damage).

        ``reconcile(state, backup_time)`` is called with the restored data and the backup's
        time (timezone-aware UTC) before this returns, so the bot can reconcile positions and
        orders with the exchange before trading resumes. If it raises, its exception
        propagates unchanged (with a note naming the backup) and nothing is returned; nothing
        needs undoing, since restoring values writes nothing to disk."""
        if backup_id is None:
            info, data = self._restore_latest(None)
            backup_id = info.backup_id
        else:
            data = self._restore_one(backup_id)
            info = None
        if reconcile is not None:
            if info is None:
                info = self.manager.get_backup_info(backup_id)
            try:
                reconcile(data, info.timestamp_utc)
            except Exception as exc:
                log.error("reconcile after restoring backup %s failed: %r", backup_id, exc)
                if hasattr(exc, "add_note"):
                    exc.add_note(f"raised by reconcile() after restoring backup {backup_id}")
                raise
        return data

    def _restore_one(self, backup_id: str) -> dict[str, Any]:
        try:
            return self.manager.load_backup(backup_id)
        except IntegrityError:
            self._damaged.add(backup_id)
            raise
        except RecoveryError:
            raise
        except BackupError as exc:
            raise RecoveryError(f"cannot restore backup {backup_id}: {exc}") from exc

    def restore_latest_backup(self, backup_type: str | None = None) -> dict[str, Any]:
        """The data of the newest backup (of ``backup_type``) that restores cleanly.

        A damaged newer backup is skipped with a warning naming it.
        """
        return self._restore_latest(backup_type)[1]

    def _restore_latest(self, backup_type: str | None) -> tuple[BackupInfo, dict[str, Any]]:
        backups = self._list(backup_type)
        if not backups:
            kind = f" of type {backup_type!r}" if backup_type else ""
            raise BackupNotFoundError(f"no backup{kind} to restore")
        skipped = []
        for info in backups:
            try:
                data = self._restore_one(info.backup_id)
            except RecoveryError as exc:
                log.warning("skipping damaged backup %s: %s", info.backup_id, exc)
                skipped.append(f"{info.backup_id} ({exc})")
                continue
            if skipped:
                log.warning(
                    "restored %s instead of newer damaged backups: %s",
                    info.backup_id,
                    "; ".join(skipped),
                )
            return info, data
        raise RecoveryError("no backup could be restored; all are damaged: " + "; ".join(skipped))

    def get_latest_backup(self, backup_type: str | None = None) -> str | None:
        """The id of the newest backup (of ``backup_type``) not found damaged by this
        manager, or ``None`` if there is none."""
        backups = [b for b in self._list(backup_type) if b.backup_id not in self._damaged]
        return backups[0].backup_id if backups else None

    async def arestore_backup(
        self, backup_id: str | None = None, *, reconcile: Reconcile | None = None
    ) -> dict[str, Any]:
        """:meth:`restore_backup` for asyncio code: reading, verifying and decoding (and
        ``reconcile``) run in a worker thread (``asyncio.to_thread``), so the event loop keeps
        running meanwhile."""
        import asyncio

        return await asyncio.to_thread(self.restore_backup, backup_id, reconcile=reconcile)

    async def arestore_latest_backup(self, backup_type: str | None = None) -> dict[str, Any]:
        """:meth:`restore_latest_backup` for asyncio code, in a worker thread."""
        import asyncio

        return await asyncio.to_thread(self.restore_latest_backup, backup_type)

    def verify_backup(self, backup_id: str, *, decode: bool = False) -> bool:
        """Whether the backup is intact: every chunk read and checked against its (keyed)
        hash and size, every entry's size, every chunk list. ``decode`` also decodes every
        data entry as a value (what a restore does; about twice the time). Never raises."""
        try:
            ok = self.verify_backup_report(backup_id, decode=decode).ok
        except BackupError as exc:
            log.warning("verify of %r failed: %s", backup_id, exc)
            return False
        except Exception:  # the contract is a bool, whatever went wrong
            log.exception("verify of %r failed unexpectedly", backup_id)
            return False
        if not ok and is_valid_backup_id(backup_id):
            self._damaged.add(backup_id)
        return ok

    def verify_backup_report(
        self,
        backup_id: str,
        *,
        read_data: bool = True,
        decode: bool = False,
        progress: ProgressCallback | None = None,
    ) -> VerifyReport:
        """Verify one backup and say what is wrong: every chunk is read and hashed, or with
        ``read_data=False`` only checked to exist. ``decode``: data entries must also decode
        as values (checked from the same read of the chunks). The hashes already prove the
        bytes are the ones written; decoding adds that this version of the code reads them.
        ``backup_id`` may be a reference (``latest``, ``pre_trade~1``: see README)."""
        backup_id = self.manager.resolve(backup_id)
        repository = self.manager.repository
        report = repository.verify_snapshot(
            backup_id,
            read_data=read_data,
            check_data=_check_decodes if decode else None,
            progress=progress,
        )
        # Run history for `status` and the health check (best-effort, never raises); an id
        # that names no backup is a caller's mistake, not a failed verify.
        if report.ok or (is_valid_backup_id(backup_id) and backup_id in repository.snapshot_ids()):
            record_verify(repository.store, backup_id, report.ok, full=read_data)
            if self.manager.alerts is not None:  # damage alerts once; intact clears it
                self.manager.alerts.report_verify(
                    backup_id, report.ok, report.problems, full=read_data
                )
        return report

    def restore_to_directory(
        self,
        backup_id: str,
        target: str | Path,
        *,
        verify: bool = False,
        progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        """Write a backup out below ``target``: data entries as ``<key>.json`` (readable JSON),
        files under their relative paths with mode and mtime, each verified and atomic;
        symbolic links as links, directories with their mode and mtime, hard links as links,
        owners when running as root. A database's stale ``-wal``/``-shm``/``-journal`` files
        in ``target`` are removed before its copy is written.

        Every path is checked before anything is written; nothing lands outside ``target``,
        and nothing is written through a symbolic link (an entry below a link or file entry
        of the backup is refused up front).
        With ``verify``, every restored file is read back and checked against the backup
        (:class:`IntegrityError` if one differs). Last, ``target/RESTORED_FROM`` is written
        (JSON: backup id and time, restore time, host, user; not if the backup has an entry
        of that name). ``progress`` is called with the bytes written as they are written
        (a callable with a ``set_total`` method is told the total first). ``backup_id``
        may be a reference (``latest``, ``pre_trade~1``).
        """
        backup_id = self.manager.resolve(backup_id)
        repository = self.manager.repository
        try:
            manifest = repository.read_manifest(backup_id)
        except RecoveryError:
            raise
        except BackupError as exc:
            raise RecoveryError(f"cannot restore backup {backup_id}: {exc}") from exc
        root = Path(target).absolute()
        names = [f"{e.name}.json" if e.kind == "data" else e.name for e in manifest.entries]
        try:
            planned = [restore_path(root, name) for name in names]
            check_layout([(name, e.kind) for name, e in zip(names, manifest.entries, strict=True)])
        except InvalidInputError as exc:
            raise RecoveryError(f"backup {backup_id} cannot be restored safely: {exc}") from exc
        if len(set(planned)) != len(planned):
            raise RecoveryError(f"backup {backup_id}: two entries would restore to the same path")
        result = RestoreResult(backup_id, root)
        announce_total(
            progress, sum(e.size for e in manifest.entries if e.kind in ("data", "file"))
        )
        try:
            _restore_entries(
                repository, manifest.entries, root, result, verify=verify, progress=progress
            )
            if STAMP_NAME in names:
                log.warning("backup %s has an entry %s: no stamp written", backup_id, STAMP_NAME)
            else:
                result.stamp = write_stamp(
                    root, backup_id=backup_id, backup_time=_utc(manifest.time_utc), mode="directory"
                )
        except RecoveryError:
            raise
        except BackupError as exc:
            raise RecoveryError(f"restore of {backup_id} failed: {exc}") from exc
        return result

    def restore_in_place(
        self,
        backup_id: str,
        *,
        dry_run: bool = False,
        overwrite: Overwrite = "if-changed",
        delete: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        verify: bool = False,
        force: bool = False,
        progress: ProgressCallback | None = None,
    ) -> InPlaceResult:
        """Write the backup's files back where they came from (its base directory + entry
        path; absolute entry paths as they are), each atomically with its mode and mtime.

        ``overwrite``: ``"if-changed"`` (default: replace a file whose size or content hash
        differs; fix only mode/mtime when the content is the same), ``"always"`` or
        ``"never"`` (only create missing files). ``delete``: also remove files the
        configured sources select, in directories the backup has files in, that the backup
        does not have. ``include`` / ``exclude``: ``fnmatch`` patterns on the entry path
        (a pattern matching a directory selects what is below it). ``dry_run``: plan only,
        write nothing. ``verify``: read every written file back and compare.

        Every path is checked first (no ``..``, NUL, symbolic link on the way, or path
        outside the source roots: else :class:`RecoveryError` and nothing is written). Before
        the first write, the files to be overwritten, changed or deleted are backed up as a
        ``pre_restore`` backup (``result.pre_restore_id``); restoring it in place undoes this
        restore, including removing files it created. Data entries are values and are
        skipped (``result.skipped_data``).

        With ``[backup] bot_pidfile`` configured, a restore (not a dry run) refuses with
        :class:`BotRunningError` before anything is written while the bot it names is
        running as another process, unless ``force``; a PID file naming this process (the
        bot restoring itself) is allowed. After the files, ``RESTORED_FROM`` is written in
        the base directory (see :meth:`restore_to_directory`). ``progress``: as there, with
        the bytes of the files to write. ``backup_id`` may be a reference.
        """
        for what, patterns in (("include", include), ("exclude", exclude)):
            if isinstance(patterns, str):
                raise InvalidInputError(f"{what} must be a sequence of patterns, not a string")
        backup_id = self.manager.resolve(backup_id)
        repository = self.manager.repository
        try:
            manifest = repository.read_manifest(backup_id)
            plan = plan_in_place(
                repository,
                self.manager.config.source_settings,
                manifest,
                overwrite=overwrite,
                delete=delete,
                include=include,
                exclude=exclude,
            )
        except InvalidInputError as exc:
            if overwrite not in ("always", "if-changed", "never"):
                raise
            raise RecoveryError(
                f"backup {backup_id} cannot be restored in place safely: {exc}"
            ) from exc
        except RecoveryError:
            raise
        except BackupError as exc:
            raise RecoveryError(f"cannot restore backup {backup_id}: {exc}") from exc
        if dry_run:
            return plan.result
        if not force:
            refuse_if_bot_running(
                self.manager.config.bot_pidfile, f"in-place restore of {backup_id}"
            )
        written = {"create", "overwrite"}
        announce_total(progress, sum(a.size for a in plan.result.actions if a.action in written))
        try:
            result = execute_in_place(
                repository,
                self.manager.config.source_settings,
                plan,
                verify=verify,
                progress=progress,
            )
        except RecoveryError:
            raise
        except BackupError as exc:
            raise RecoveryError(f"in-place restore of {backup_id} failed: {exc}") from exc
        if not result.actions:  # no file entry (a data-only backup): nothing restored
            return result
        try:
            result.stamp = write_stamp(
                plan.pre_root,
                backup_id=backup_id,
                backup_time=_utc(manifest.time_utc),
                mode="in-place",
            )
        except BackupError as exc:  # the files are restored: say so, do not fail
            log.warning("in-place restore of %s: %s", backup_id, exc)
            result.notes.append(f"no {STAMP_NAME} stamp: {exc}")
        return result

    def get_backup_at(self, when: str | datetime | date, backup_type: str | None = None) -> str:
        """The id of the newest backup (of ``backup_type``) taken at or before ``when``: a
        datetime (naive = local time) or ISO text (``"2025-12-17 10:00"``, with or without a
        zone; a time given to the second covers that second, a date alone its whole day).
        :class:`BackupNotFoundError` if there is none. Backups this manager found damaged
        are passed over."""
        moment = parse_moment(when, upper=True)
        backups = self._list(backup_type)
        for info in backups:
            if info.timestamp_utc <= moment and info.backup_id not in self._damaged:
                return str(info.backup_id)
        kind = f" of type {backup_type!r}" if backup_type else ""
        oldest = (
            f" (the oldest{kind} is {backups[-1].backup_id}, "
            f"{backups[-1].timestamp:%Y-%m-%d %H:%M:%S} local)"
            if backups
            else ""
        )
        raise BackupNotFoundError(
            f"no backup{kind} at or before {moment.astimezone():%Y-%m-%d %H:%M:%S %Z}{oldest}"
        )

    def restore_backup_at(
        self, when: str | datetime | date, backup_type: str | None = None
    ) -> dict[str, Any]:
        """The data of the newest backup (of ``backup_type``) at or before ``when`` (see
        :meth:`get_backup_at`); a damaged one is skipped with a warning, as by
        :meth:`restore_latest_backup`. :class:`BackupNotFoundError` if there is none."""
        skipped: list[str] = []
        while True:
            try:
                backup_id = self.get_backup_at(when, backup_type)
            except BackupNotFoundError:
                if skipped:
                    raise RecoveryError(
                        "no backup at that time could be restored; damaged: " + "; ".join(skipped)
                    ) from None
                raise
            try:
                data = self.restore_backup(backup_id)
            except RecoveryError as exc:
                log.warning("skipping damaged backup %s: %s", backup_id, exc)
                self._damaged.add(backup_id)
                skipped.append(f"{backup_id} ({exc})")
                continue
            if skipped:
                log.warning("restored %s instead of damaged: %s", backup_id, "; ".join(skipped))
            return data

    def _list(self, backup_type: str | None) -> list[Any]:
        if backup_type is not None:
            validate_backup_type(backup_type)
        return self.manager.list_backups(backup_type)


def _restore_entries(
    repository: Repository,
    entries: Sequence[Entry],
    root: Path,
    result: RestoreResult,
    *,
    verify: bool,
    progress: ProgressCallback | None = None,
) -> None:
    """Write entries below ``root`` in an order that never writes through a link:
    directories, then data and files (several at once), then hard links, then symbolic
    links; directory modes and mtimes last (deepest first), so writing below them does not
    change them. See ``files/tree_restore.py``."""
    outcome = restore_tree(repository, entries, root, verify=verify, progress=progress)
    result.written.extend(outcome.written)
    result.bytes_written += outcome.bytes_written
    result.verified = outcome.verified


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _check_decodes(entry: Entry, content: bytes) -> None:
    # raises CorruptDataError (an IntegrityError) if it does not decode
    decode_data_payload("", entry, content)


_default_recovery: RecoveryManager | None = None


def get_recovery_manager() -> RecoveryManager:
    """A process-wide ``RecoveryManager`` over :func:`get_backup_manager`."""
    global _default_recovery
    if _default_recovery is None:
        _default_recovery = RecoveryManager(get_backup_manager())
    return _default_recovery


__all__ = ["InPlaceResult", "RecoveryManager", "RestoreResult", "get_recovery_manager"]
