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
from pathlib import Path, PurePosixPath

from src.infra.backup.errors import InvalidInputError
from src.infra.backup.repository import FileInput
from src.infra.backup.storage.local import TEMP_PREFIX, fsync_dir, storage_error, write_temp_file

log = logging.getLogger(__name__)

SECRET_PATTERNS = (".env", ".env.*", "secrets.toml", "*.key", "*.pem", "*_secret*")
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


def collect_sources(
    sources: Sequence[str],
    root: Path,
    *,
    exclude: Sequence[str] = (),
    include_secrets: bool = False,
) -> list[FileInput]:
    """The regular files the sources name, sorted, without duplicates, secrets or excludes."""
    found: dict[str, FileInput] = {}
    for source in sources:
        for path in _expand(source, root):
            name = entry_name(path, root)
            if name in found or _excluded(name, exclude):
                continue
            if not include_secrets and is_secret(name):
                log.info("not backing up %s: looks like a secret (set include_secrets)", name)
                continue
            found[name] = FileInput(name=name, path=path)
    return [found[name] for name in sorted(found)]


def _expand(source: str, root: Path) -> Iterable[Path]:
    pattern = Path(source).expanduser()
    absolute = pattern if pattern.is_absolute() else root / pattern
    if glob.has_magic(source):
        matches = sorted(glob.glob(str(absolute), recursive=True))
        for match in matches:
            yield from _files_below(Path(os.path.normpath(match)))
        return
    absolute = Path(os.path.normpath(absolute))
    if not absolute.exists():
        log.warning("backup source %s does not exist; skipped", absolute)
        return
    yield from _files_below(absolute)


def _files_below(path: Path) -> Iterable[Path]:
    """A regular file itself, or the regular files below a directory (links not followed)."""
    try:
        st = path.lstat()
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) or (stat.S_ISLNK(st.st_mode) and path.is_file()):
        yield path
    elif stat.S_ISDIR(st.st_mode):
        for directory, subdirs, files in os.walk(path):
            subdirs.sort()
            for name in sorted(files):
                candidate = Path(directory) / name
                if name.startswith(TEMP_PREFIX):
                    continue
                if candidate.is_symlink():
                    log.info("not backing up symbolic link %s", candidate)
                    continue
                if candidate.is_file():
                    yield candidate


def restore_path(target: Path, name: str) -> Path:
    """Where entry ``name`` goes below ``target``; refuses names that could escape it."""
    if not name or "\0" in name or "\\" in name:
        raise InvalidInputError(f"refusing to restore entry with unsafe name {name!r}")
    pure = PurePosixPath(name)
    parts = pure.parts[1:] if pure.is_absolute() else pure.parts
    if pure.is_absolute():
        parts = (ABSOLUTE_PREFIX, *parts)
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise InvalidInputError(f"refusing to restore entry with unsafe name {name!r}")
    return target.joinpath(*parts)


def _ensure_safe_dir(target: Path, directory: Path) -> None:
    """Create ``directory`` below ``target``, refusing symbolic links on the way."""
    relative = directory.relative_to(target)
    current = target
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            raise InvalidInputError(f"refusing to restore through symbolic link {current}")
        if not current.exists():
            os.mkdir(current, 0o700)
        elif not current.is_dir():
            raise InvalidInputError(f"cannot restore below {current}: it is not a directory")


def write_file(
    target: Path,
    name: str,
    chunks: Iterable[bytes],
    *,
    mode: int | None = None,
    mtime_ns: int | None = None,
) -> Path:
    """Write one restored file atomically (temp, fsync, rename) with its mode and mtime."""
    destination = restore_path(target, name)
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        _ensure_safe_dir(target, destination.parent)
        if destination.is_symlink() or destination.is_dir():
            raise InvalidInputError(f"cannot restore {destination}: a link or directory is there")
        temp = write_temp_file(destination.parent, chunks)
        try:
            if mode is not None:
                os.chmod(temp, mode & 0o7777)
            if mtime_ns is not None:
                os.utime(temp, ns=(mtime_ns, mtime_ns))
            os.replace(temp, destination)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(destination.parent)
    except OSError as exc:
        raise storage_error("restore", destination, exc) from exc
    return destination
