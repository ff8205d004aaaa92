"""File sources: collect the configured files for a backup; write files back on restore.

Sources are files, directories (recursive) and globs relative to the source root. Secrets are
left out unless the user opts in. Restored paths are validated so that nothing is ever written
outside the target directory, whatever a damaged or hostile manifest says.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from src.infra.backup.files.restore_stamp import STAMP_NAME
from src.infra.backup.storage.local import TEMP_PREFIX

log = logging.getLogger(__name__)

SECRET_PATTERNS = (".env", ".env.*", "secrets.toml", "*.key", "*.pem", "*_secret*")
# Where sources outside the base directory are stored (entry names, export and restore folders).
ABSOLUTE_PREFIX = "_root"


def is_secret(relative: str) -> bool:
    """Whether a file name looks like a secret (matched on the last path component)."""
    name = PurePosixPath(relative).name
    return any(fnmatch.fnmatch(name, pattern) for pattern in SECRET_PATTERNS)


def _excluded(relative: str, patterns: Sequence[str]) -> bool:
    """Patterns without ``/`` match any path component; with ``/``, the whole relative path."""
    parts = PurePosixPath(relative).parts
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if "/" in pattern:
            if fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + "/"):
                return True
        elif any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def entry_name(path: Path, root: Path) -> str:
    """The name a file gets in a backup: relative to ``root`` if inside it, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass(frozen=True)
class SourceItem:
    """One file-system object a backup selected: its name in the backup, where it is, and
    its ``lstat`` when it was listed (links are never followed)."""

    name: str
    path: Path
    st: os.stat_result

    @property
    def kind(self) -> str:
        """``file``, ``dir``, ``symlink`` or ``special`` (FIFO, socket, device)."""
        return _kind_of(self.st.st_mode)


@dataclass
class SourceScan:
    """What the configured sources select (sorted by name, without duplicates, secrets or
    excludes) and the warnings met while listing (special files, unreadable directories)."""

    items: list[SourceItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def file_bytes(self) -> int:
        """The size of the regular files selected, as listed (a backup's progress total)."""
        return sum(item.st.st_size for item in self.items if stat.S_ISREG(item.st.st_mode))


def _kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


_SPECIAL_NAMES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_kind(mode: int) -> str:
    """What a special file is, in words (``a FIFO``, ``a socket``, ...)."""
    return next((name for test, name in _SPECIAL_NAMES if test(mode)), "a special file")


def _own_file(name: str, path: Path) -> bool:
    """A restore's temp file, or its ``RESTORED_FROM`` stamp at the root: never backed up."""
    return path.name.startswith(TEMP_PREFIX) or name == STAMP_NAME


def scan_sources(
    sources: Sequence[str],
    root: Path,
    *,
    exclude: Sequence[str] = (),
    include_secrets: bool = False,
    skip: Sequence[Path] = (),
) -> SourceScan:
    """Every file, directory and symbolic link the sources name (directories recursively,
    links never followed), and a warning for each special file (FIFO, socket, device: never
    opened, so a FIFO cannot block a backup) and each directory that cannot be listed.

    Temporary files of an interrupted restore (``.tmp-*``) and the ``RESTORED_FROM`` stamp
    at the root (``restore_stamp.py``) are never selected, nor anything
    in or below ``skip`` (the repository itself, when it lies inside a source). The root
    directory itself is not an entry.
    """
    scan = SourceScan()
    found: dict[str, SourceItem] = {}
    root = Path(os.path.normpath(root))
    skipped = {Path(os.path.normpath(p)) for p in skip}
    for source in sources:
        for path, st in _expand(source, root, scan.warnings, exclude, skipped):
            if path == root:
                continue
            name = entry_name(path, root)
            if name in found or _excluded(name, exclude) or _own_file(name, path):
                continue
            kind = _kind_of(st.st_mode)
            if kind != "dir" and not include_secrets and is_secret(name):
                log.info("not backing up %s: looks like a secret (set include_secrets)", name)
                continue
            if kind == "special":
                scan.warnings.append(
                    f"{path}: not backed up: it is {special_kind(st.st_mode)} (never opened)"
                )
                continue
            found[name] = SourceItem(name, path, st)
    scan.items = [found[name] for name in sorted(found)]
    return scan


def collect_sources(
    sources: Sequence[str],
    root: Path,
    *,
    exclude: Sequence[str] = (),
    include_secrets: bool = False,
    skip: Sequence[Path] = (),
) -> list[SourceItem]:
    """The regular files the sources name, sorted, without duplicates, secrets or excludes."""
    scan = scan_sources(sources, root, exclude=exclude, include_secrets=include_secrets, skip=skip)
    return [item for item in scan.items if item.kind == "file"]


def _expand(
    source: str, root: Path, warnings: list[str], exclude: Sequence[str], skip: set[Path]
) -> Iterable[tuple[Path, os.stat_result]]:
    pattern = Path(source).expanduser()
    absolute = pattern if pattern.is_absolute() else root / pattern
    if glob.has_magic(source):
        matches = sorted(glob.glob(str(absolute), recursive=True))
        for match in matches:
            yield from _walk(Path(os.path.normpath(match)), root, warnings, exclude, skip)
        return
    absolute = Path(os.path.normpath(absolute))
    if not os.path.lexists(absolute):
        log.warning("backup source %s does not exist; skipped", absolute)
        return
    yield from _walk(absolute, root, warnings, exclude, skip)


def _walk(
    path: Path, root: Path, warnings: list[str], exclude: Sequence[str], skip: set[Path]
) -> Iterable[tuple[Path, os.stat_result]]:
    """``path`` itself and, for a directory, everything below it (links not followed;
    excluded and skipped directories not entered)."""
    if path in skip or any(parent in skip for parent in path.parents):
        return
    try:
        st = path.lstat()
    except FileNotFoundError:
        return  # vanished since it was listed
    except OSError as exc:
        warnings.append(f"{path}: not backed up: cannot read its attributes ({exc.strerror})")
        return
    yield path, st
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [path]
    while stack:
        directory = stack.pop()
        subdirs = []
        for child_path, child_st in _list_directory(directory, warnings):
            if child_path in skip:
                continue
            yield child_path, child_st
            if (
                stat.S_ISDIR(child_st.st_mode)
                and not child_path.name.startswith(TEMP_PREFIX)
                and not _excluded(entry_name(child_path, root), exclude)
            ):
                subdirs.append(child_path)
        stack.extend(reversed(subdirs))


def _list_directory(directory: Path, warnings: list[str]) -> list[tuple[Path, os.stat_result]]:
    """The entries of ``directory`` with their ``lstat``, sorted by name. The directory is
    opened without following a link (one swapped for a link after it was listed is not
    entered), and its entries are stat'ed relative to that open directory."""
    found: list[tuple[Path, os.stat_result]] = []
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return found
    except OSError as exc:
        warnings.append(
            f"{directory}: its contents are not backed up: cannot list it ({exc.strerror})"
        )
        return found
    try:
        with os.scandir(fd) as listing:
            children = sorted(listing, key=lambda e: e.name)
        for child in children:
            child_path = directory / child.name
            try:
                found.append((child_path, child.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
            except OSError as exc:
                warnings.append(
                    f"{child_path}: not backed up: cannot read its attributes ({exc.strerror})"
                )
    except OSError as exc:
        warnings.append(
            f"{directory}: its contents are not backed up: cannot list it ({exc.strerror})"
        )
    finally:
        os.close(fd)
    return found


# -- restoring links, hard links and directories -----------------------------------------


# -- in-place restore: where a backup's files came from, checked ---------------------------
