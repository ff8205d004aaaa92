"""In-place restore: write a backup's files back where they came from.

Planning reads the manifest and the current files and decides, per file, one action:

``create``     the file is missing: written
``overwrite``  it differs (size or content hash), or ``overwrite="always"``: replaced
``metadata``   same content, other mode or mtime: mode and mtime set, content untouched
``unchanged``  same content, mode and mtime: left alone
``kept``       it exists and ``overwrite="never"``: left alone
``delete``     with ``delete=True``: a file the configured sources select, in a directory
               the backup has files in, that the backup does not have; and, when restoring
               a ``pre_restore`` backup, a file the restore it undoes had created

``--delete`` only deletes among the files a backup *covers*. A normal backup covers what the
configured sources select in the directories it has files in. A ``pre_restore`` backup is
partial: it covers exactly the files it holds plus those in ``pre_restore.absent``, and the
absent ones are deleted by the undo anyway; so with a ``pre_restore`` backup, ``delete=True``
deletes nothing more (``InPlaceResult.notes`` says so), and files the restore it undoes never
touched are left alone.

Every path comes from a manifest and is checked before anything is written: no ``..``, no
NUL, no symbolic link on the way, nothing outside the configured source roots (the config's
directory and the roots of absolute sources), whatever a damaged or hostile manifest says.

Before the first write, the files about to be overwritten, changed or deleted are backed up
as a ``pre_restore`` backup (a normal snapshot; it also records, as the data entry
``pre_restore.absent``, which files the restore creates), so restoring that backup in place
undoes the restore exactly. Each file is written atomically (temp file, fsync, rename); temp
files a killed restore left in the directories of the backup's files are removed first (see
``restore_temp.py``).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal, get_args

import msgspec

from src.infra.backup.errors import BackupError, CorruptDataError, InvalidInputError, RecoveryError
from src.infra.backup.files.archiver import entry_sources
from src.infra.backup.files.restore_temp import clean_stale_temps
from src.infra.backup.files.restorer import (
    DATABASE_COMPANIONS,
    check_layout,
    check_no_links,
    collect_paths,
    delete_in_place,
    finish_directory,
    in_place_path,
    make_directory,
    make_symlink,
    remove_database_companions,
    restore_owner,
    set_metadata,
    source_roots,
    write_in_place,
)
from src.infra.backup.files.settings import SourceSettings
from src.infra.backup.files.sources import collect_sources, entry_name, is_secret
from src.infra.backup.format.manifest import Entry, Manifest
from src.infra.backup.repository.reader import ProgressCallback, decode_data_payload
from src.infra.backup.repository.snapshot_writer import DataInput, EntrySource

if TYPE_CHECKING:
    from src.infra.backup.repository.repository import Repository

log = logging.getLogger(__name__)

Overwrite = Literal["always", "if-changed", "never"]
Action = Literal["create", "overwrite", "metadata", "unchanged", "kept", "delete"]
OVERWRITE_CHOICES: tuple[str, ...] = get_args(Overwrite)
ACTIONS: tuple[str, ...] = get_args(Action)
PRE_RESTORE_TYPE = "pre_restore"
ABSENT_KEY = "pre_restore.absent"
_WRITES = ("create", "overwrite", "metadata")
_SAVED = ("overwrite", "metadata", "delete")


@dataclass(frozen=True)
class PlannedAction:
    """What an in-place restore does (or, in a dry run, would do) with one file.

    ``name`` is the file's path in the backup (relative to its base directory, or
    absolute); ``path`` where it is on disk; ``size`` the bytes written (0 unless created or
    overwritten); ``reason`` a short explanation.
    """

    action: Action
    name: str
    path: Path
    size: int = 0
    reason: str = ""
    kind: str = "file"


@dataclass
class InPlaceResult:
    """The outcome of :meth:`RecoveryManager.restore_in_place`.

    ``actions``: every file considered, in order. ``pre_restore_id``: the backup of the
    files before the restore (``None`` in a dry run or when nothing is overwritten, changed,
    deleted or created). ``skipped_data``: data entries, which are values and are not
    written in place. ``filtered``: file entries left out by ``include`` / ``exclude``.
    ``notes``: how the request was interpreted, where the caller should know (e.g. that
    ``delete`` adds nothing for a ``pre_restore`` backup).
    """

    backup_id: str
    dry_run: bool
    actions: list[PlannedAction] = field(default_factory=list)
    pre_restore_id: str | None = None
    skipped_data: list[str] = field(default_factory=list)
    filtered: int = 0
    bytes_written: int = 0
    verified: bool = False
    notes: list[str] = field(default_factory=list)
    stamp: Path | None = None  # the RESTORED_FROM file written (restore_stamp.py)

    @property
    def counts(self) -> dict[str, int]:
        """How many files each action applies to (every action listed, zeros included)."""
        counts = dict.fromkeys(ACTIONS, 0)
        for planned in self.actions:
            counts[planned.action] += 1
        return counts

    def paths(self, action: Action) -> list[Path]:
        """The paths of the files with ``action``."""
        return [p.path for p in self.actions if p.action == action]


@dataclass(frozen=True)
class _Step:
    planned: PlannedAction
    root: Path
    entry: Entry | None


@dataclass
class InPlacePlan:
    """The checked plan of an in-place restore: steps to carry out and the result so far."""

    manifest: Manifest
    steps: list[_Step]
    result: InPlaceResult
    pre_root: Path


def matches_filters(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether entry path ``name`` is selected: it (or a directory above it) matches one of
    ``include`` (when any are given) and none of ``exclude`` (``fnmatch``, case-sensitive;
    ``*`` also matches ``/``)."""
    pure = PurePosixPath(name)
    candidates = [name, *(p.as_posix() for p in pure.parents if p.as_posix() not in (".", "/"))]

    def hit(patterns: Sequence[str]) -> bool:
        return any(
            fnmatch.fnmatchcase(c, pattern.rstrip("/") or pattern)
            for pattern in patterns
            for c in candidates
        )

    return (not include or hit(include)) and not hit(exclude)


def _base_dir(manifest: Manifest, roots: Sequence[Path]) -> Path | None:
    """The manifest's base directory, if it is a plain absolute path inside a source root."""
    raw = manifest.base_dir
    if raw is None:
        return None
    if "\0" in raw or not os.path.isabs(raw):
        raise InvalidInputError(f"backup has an unsafe base directory {raw!r}")
    base = Path(os.path.normpath(raw))  # lexical: containment is checked on this form
    if not any(base == r or r in base.parents for r in roots):
        raise InvalidInputError(
            f"the backup was taken in {base}, which is not inside this configuration's source "
            f"roots ({', '.join(str(r) for r in roots)}); restore it with the configuration "
            "that made it, or into a directory with --target"
        )
    return base


def _same_meta(st: os.stat_result, entry: Entry) -> bool:
    return (entry.mode is None or stat.S_IMODE(st.st_mode) == entry.mode & 0o7777) and (
        entry.mtime_ns is None or st.st_mtime_ns == entry.mtime_ns
    )


def plan_in_place(
    repository: Repository,
    config: SourceSettings,
    manifest: Manifest,
    *,
    overwrite: Overwrite = "if-changed",
    delete: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> InPlacePlan:
    """Decide every action (reading, never writing). Unsafe paths raise
    :class:`InvalidInputError` before anything happens."""
    if overwrite not in OVERWRITE_CHOICES:
        raise InvalidInputError(
            f"overwrite must be one of {', '.join(OVERWRITE_CHOICES)}, not {overwrite!r}"
        )
    roots = source_roots(config.sources, config.source_root)
    base = _base_dir(manifest, roots)
    pre_root = base if base is not None else config.source_root
    secrets_ok = config.include_secrets and repository.encrypted
    result = InPlaceResult(manifest.backup_id, dry_run=True)
    steps: list[_Step] = []
    held: set[Path] = set()  # every file the backup has, filtered out or not
    entry_dirs: set[Path] = set()
    absent: list[str] = []

    def add(step: _Step) -> None:
        planned = step.planned
        if planned.action in _SAVED and not secrets_ok and is_secret(planned.name):
            raise InvalidInputError(
                f"{planned.path} looks like a secret: the pre_restore backup could not hold "
                "it (needs include_secrets = true and an encrypted repository); leave it "
                "out with --exclude"
            )
        steps.append(step)

    file_entries = []
    databases: set[Path] = set()
    by_name = {e.name: e for e in manifest.entries}
    check_layout([(e.name, e.kind) for e in manifest.entries if e.kind != "data"])
    for entry in manifest.entries:
        if entry.kind == "data" or entry.origin == "command":
            # values, and command output, have no place on disk to go back to
            result.skipped_data.append(entry.name)
            if manifest.backup_type == PRE_RESTORE_TYPE and entry.name == ABSENT_KEY:
                absent = _absent_names(repository, entry)
            continue
        if entry.path is not None and entry.path != entry.name:
            raise InvalidInputError(f"backup entry {entry.name!r} names another path")
        if entry.kind == "hardlink":  # in place: the linked file's content under this name
            linked = by_name[entry.target or ""]
            entry = msgspec.structs.replace(
                linked, name=entry.name, path=entry.name, mode=entry.mode, mtime_ns=entry.mtime_ns
            )
        root, destination = in_place_path(entry.name, base, roots, leaf=entry.kind)
        if destination in held:
            raise InvalidInputError(f"two backup entries restore to {destination}")
        held.add(destination)
        if entry.origin == "sqlite":
            databases.add(destination)
        if entry.kind != "dir":
            entry_dirs.add(destination.parent)
        file_entries.append((entry, root, destination))

    for entry, root, destination in file_entries:
        if not matches_filters(entry.name, include, exclude):
            result.filtered += 1
            continue
        decided = replace(_decide(repository, entry, destination, overwrite), kind=entry.kind)
        add(_Step(decided, root, entry))

    deletions: dict[Path, _Step] = {}
    for name in absent:
        if not matches_filters(name, include, exclude):
            continue
        # A link the undone restore created may be removed too (unlinking never follows it);
        # directories it created stay.
        try:
            root, destination = in_place_path(name, base, roots, leaf="symlink")
        except InvalidInputError:
            _root, directory = in_place_path(name, base, roots, leaf="dir")
            if directory.is_dir() and not directory.is_symlink():
                continue
            raise
        if destination not in held and (_is_regular(destination) or destination.is_symlink()):
            reason = "created by the restore this backup undoes"
            deletions[destination] = _Step(
                PlannedAction("delete", name, destination, reason=reason), root, None
            )
    if delete and manifest.backup_type == PRE_RESTORE_TYPE:
        # A pre_restore backup covers only its own files and its absent list (planned above):
        # every other file in those directories was never touched by the restore it undoes.
        note = (
            f"--delete deletes nothing more for {manifest.backup_id}: a pre_restore backup "
            "covers only the files it holds and those the restore it undoes created "
            "(removed anyway); other files are left alone"
        )
        result.notes.append(note)
        log.warning("%s", note)
    elif delete:
        current = collect_sources(
            config.sources,
            config.source_root,
            exclude=config.exclude,
            include_secrets=secrets_ok,
            skip=config.own_directories,
        )
        for item in current:
            path = Path(os.path.normpath(item.path))
            if path.parent not in entry_dirs or path in held or path in deletions:
                continue
            owner = next(
                (path.name[: -len(s)] for s in DATABASE_COMPANIONS if path.name.endswith(s)), None
            )
            if owner and path.with_name(owner) in databases:
                continue  # a database's WAL or journal: part of it, never deleted on its own
            name = entry_name(path, pre_root)
            if not matches_filters(name, include, exclude):
                continue
            try:
                root, destination = in_place_path(name, base, roots)
            except InvalidInputError as exc:
                log.warning("not deleting %s: %s", path, exc)
                continue
            if _is_regular(destination):
                reason = "not in the backup (--delete)"
                deletions[destination] = _Step(
                    PlannedAction("delete", name, destination, reason=reason), root, None
                )
    for destination in sorted(deletions):
        add(deletions[destination])
    result.actions = [step.planned for step in steps]
    return InPlacePlan(manifest, steps, result, pre_root)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _absent_names(repository: Repository, entry: Entry) -> list[str]:
    value = decode_data_payload("", entry, repository.read_entry(entry))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorruptDataError(f"entry {entry.name!r}: expected a list of paths")
    return value


def _decide(
    repository: Repository, entry: Entry, destination: Path, overwrite: Overwrite
) -> PlannedAction:
    name = entry.name
    try:
        st = destination.lstat()
    except FileNotFoundError:
        return PlannedAction("create", name, destination, entry.size, "missing")
    if entry.kind == "dir":
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidInputError(f"cannot restore directory {destination}: not a directory")
        return PlannedAction("unchanged", name, destination, reason="directory exists")
    if entry.kind == "symlink":
        if not stat.S_ISLNK(st.st_mode):
            raise InvalidInputError(
                f"cannot restore symbolic link {destination}: something else is there"
            )
        if os.readlink(destination) == entry.target:
            return PlannedAction("unchanged", name, destination, reason="identical link")
        if overwrite == "never":
            return PlannedAction("kept", name, destination, reason="exists (--overwrite never)")
        return PlannedAction("overwrite", name, destination, reason="link points elsewhere")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"cannot restore {destination}: not a regular file there")
    if overwrite == "never":
        return PlannedAction("kept", name, destination, reason="exists (--overwrite never)")
    if overwrite == "always":
        return PlannedAction("overwrite", name, destination, entry.size, "--overwrite always")
    if st.st_size != entry.size:
        return PlannedAction("overwrite", name, destination, entry.size, "size differs")
    if not repository.file_matches_entry(destination, entry):
        return PlannedAction("overwrite", name, destination, entry.size, "content differs")
    if not _same_meta(st, entry):
        return PlannedAction("metadata", name, destination, reason="mode or mtime differs")
    return PlannedAction("unchanged", name, destination, reason="identical")


def execute_in_place(
    repository: Repository,
    config: SourceSettings,
    plan: InPlacePlan,
    *,
    verify: bool = False,
    progress: ProgressCallback | None = None,
) -> InPlaceResult:
    """Back up what will change as ``pre_restore``, then carry out the planned steps
    (``progress``: called with the size of each file written).

    A failure after the ``pre_restore`` backup was taken is a :class:`RecoveryError` that
    names it, so what was already written can be undone.
    """
    manifest, steps, result, pre_root = plan.manifest, plan.steps, plan.result, plan.pre_root
    result.dry_run = False
    saved = [s.planned.path for s in steps if s.planned.action in _SAVED]
    created = sorted(
        entry_name(s.planned.path, pre_root)
        for s in steps
        if s.planned.action == "create" and s.planned.kind != "dir"
    )
    if saved or created:
        secrets_ok = config.include_secrets and repository.encrypted
        entries: list[DataInput | EntrySource] = list(
            entry_sources(
                collect_paths(saved, pre_root, include_secrets=secrets_ok),
                sqlite=config.sqlite,
            )
        )
        if created:
            entries.append(DataInput.from_value(ABSENT_KEY, created))
        pre = repository.create_snapshot(
            PRE_RESTORE_TYPE,
            entries,
            tags={"restore_of": manifest.backup_id},
            note=f"files as they were before the in-place restore of {manifest.backup_id}",
            base_dir=str(pre_root),
        )
        result.pre_restore_id = pre.backup_id
        log.info(
            "pre_restore backup %s taken before restoring %s", pre.backup_id, manifest.backup_id
        )
    try:
        _carry_out(repository, plan, verify=verify, progress=progress)
    except BackupError as exc:
        undo = (
            f"; the files before it are in backup {result.pre_restore_id} "
            f"(restore {result.pre_restore_id} --in-place undoes what was written)"
            if result.pre_restore_id
            else ""
        )
        raise RecoveryError(
            f"in-place restore of {manifest.backup_id} failed: {exc}{undo}"
        ) from exc
    return result


def _write_object(root: Path, destination: Path, entry: Entry) -> None:
    """Create a directory, or (re)place a symbolic link, in place; never through a link."""
    check_no_links(root, destination, leaf=entry.kind)
    relative = destination.relative_to(root).as_posix()
    if entry.kind == "dir":
        make_directory(root, relative)
    elif entry.target is not None:
        owner = restore_owner(entry.uid, entry.gid)
        make_symlink(root, relative, entry.target, mtime_ns=entry.mtime_ns, owner=owner)


def _carry_out(
    repository: Repository,
    plan: InPlacePlan,
    *,
    verify: bool,
    progress: ProgressCallback | None = None,
) -> None:
    manifest, steps, result = plan.manifest, plan.steps, plan.result
    for directory in sorted({step.planned.path.parent for step in steps}):
        clean_stale_temps(directory)  # leftovers of a killed restore (writes sweep too)
    for step in steps:
        planned, entry = step.planned, step.entry
        if entry is not None and entry.kind in ("dir", "symlink"):
            if planned.action in ("create", "overwrite"):
                _write_object(step.root, planned.path, entry)
            continue
        if planned.action in ("create", "overwrite") and entry is not None:
            if entry.origin == "sqlite":
                remove_database_companions(step.root, planned.path)
            write_in_place(
                step.root,
                planned.path,
                repository.iter_entry(entry),
                size=entry.size,
                mode=entry.mode,
                mtime_ns=entry.mtime_ns,
            )
            result.bytes_written += entry.size
            if progress is not None:
                progress(entry.size)
        elif planned.action == "metadata" and entry is not None:
            set_metadata(planned.path, mode=entry.mode, mtime_ns=entry.mtime_ns)
        elif planned.action == "delete":
            delete_in_place(step.root, planned.path)
    created_dirs = [
        s
        for s in steps
        if s.entry is not None and s.entry.kind == "dir" and s.planned.action == "create"
    ]
    for step in sorted(created_dirs, key=lambda s: len(s.planned.path.parts), reverse=True):
        assert step.entry is not None
        owner = restore_owner(step.entry.uid, step.entry.gid)
        finish_directory(
            step.planned.path, mode=step.entry.mode, mtime_ns=step.entry.mtime_ns, owner=owner
        )
    if verify:
        for step in steps:
            entry = step.entry
            if step.planned.action not in _WRITES or entry is None:
                continue
            path = step.planned.path
            if entry.kind == "dir":
                if not path.is_dir() or path.is_symlink():
                    raise CorruptDataError(f"restored directory {path} is missing")
                continue
            if entry.kind == "symlink":
                if not path.is_symlink() or os.readlink(path) != entry.target:
                    raise CorruptDataError(f"restored link {path} differs from the backup")
                continue
            if not (repository.file_matches_entry(path, entry) and _same_meta(path.lstat(), entry)):
                raise CorruptDataError(f"restored {path} differs from backup {manifest.backup_id}")
        result.verified = True


__all__ = [
    "ABSENT_KEY",
    "OVERWRITE_CHOICES",
    "PRE_RESTORE_TYPE",
    "InPlacePlan",
    "InPlaceResult",
    "Overwrite",
    "PlannedAction",
    "execute_in_place",
    "matches_filters",
    "plan_in_place",
]
