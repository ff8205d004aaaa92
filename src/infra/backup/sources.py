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
from collections.abc import Callable, Iterable, Sequence
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
        _install(temp, destination, mode, mtime_ns)
    except OSError as exc:
        raise storage_error("restore", destination, exc) from exc
    return destination


def _install(
    temp: Path,
    destination: Path,
    mode: int | None,
    mtime_ns: int | None,
    check: Callable[[], None] | None = None,
) -> None:
    """Give a written temp file its mode and mtime, run ``check``, rename it over
    ``destination`` and make the rename durable; the temp file never outlives a failure."""
    try:
        if check is not None:
            check()
        if mode is not None:
            os.chmod(temp, mode & 0o7777)
        if mtime_ns is not None:
            os.utime(temp, ns=(mtime_ns, mtime_ns))
        os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(destination.parent)


# -- in-place restore: where a backup's files came from, checked ---------------------------


def collect_paths(
    paths: Iterable[Path], root: Path, *, include_secrets: bool = False
) -> list[FileInput]:
    """Exactly the given regular files, named as :func:`collect_sources` names them (relative
    to ``root`` when inside it, else absolute), sorted and without duplicates.

    This is the source list of a ``pre_restore`` backup: the files an in-place restore is
    about to overwrite or delete. A secret among them raises :class:`InvalidInputError` unless
    ``include_secrets`` (the caller checks the repository is encrypted), and so does anything
    that is not a regular file: such a backup must hold every file it was asked for.
    """
    found: dict[str, FileInput] = {}
    for path in paths:
        name = entry_name(path, root)
        if not include_secrets and is_secret(name):
            raise InvalidInputError(
                f"{path} looks like a secret and cannot be backed up here (it needs "
                "include_secrets = true and an encrypted repository)"
            )
        try:
            st = path.lstat()
        except OSError as exc:
            raise InvalidInputError(f"cannot back up {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInputError(f"cannot back up {path}: not a regular file")
        found.setdefault(name, FileInput(name=name, path=path))
    return [found[name] for name in sorted(found)]


def source_roots(sources: Sequence[str], root: Path) -> list[Path]:
    """The directories (or single files) the configured ``sources`` may touch: ``root``
    itself, and for each source outside it the part before its first glob character."""
    roots = [Path(os.path.normpath(root))]
    for source in sources:
        parts = PurePosixPath(os.path.expanduser(source)).parts
        plain: list[str] = []
        for part in parts:
            if glob.has_magic(part):
                break
            plain.append(part)
        if not plain:
            continue
        prefix = Path(*plain)
        absolute = Path(os.path.normpath(prefix if prefix.is_absolute() else root / prefix))
        if not any(absolute == r or r in absolute.parents for r in roots):
            roots.append(absolute)
    return roots


def _check_name_parts(name: str) -> tuple[str, ...]:
    """The components of a manifest path, refusing anything that could climb or hide."""
    if not name or "\0" in name or "\\" in name:
        raise InvalidInputError(f"refusing unsafe path {name!r} from a backup")
    pure = PurePosixPath(name)
    raw = name.split("/")
    body = raw[1:] if name.startswith("/") else raw
    if not body or any(part in ("", ".", "..") for part in body):
        raise InvalidInputError(f"refusing unsafe path {name!r} from a backup")
    return pure.parts


def in_place_path(name: str, base_dir: Path | None, roots: Sequence[Path]) -> tuple[Path, Path]:
    """Where entry ``name`` of a backup taken in ``base_dir`` lives on disk, and the source
    root it lies in: ``base_dir / name`` for relative names, ``name`` itself for absolute
    ones. Refuses ``..``, NUL, a path outside every root in ``roots`` (whatever the manifest
    says), and a symbolic link on the way from that root (see :func:`check_no_links`)."""
    _check_name_parts(name)
    if PurePosixPath(name).is_absolute():
        destination = Path(name)
    else:
        if base_dir is None:
            raise InvalidInputError(f"backup entry {name!r} is relative but has no base directory")
        destination = base_dir / name
    containing = [r for r in roots if destination == r or r in destination.parents]
    if not containing:
        raise InvalidInputError(
            f"refusing to write {destination}: outside the source roots "
            f"({', '.join(str(r) for r in roots)})"
        )
    root = min(containing, key=lambda r: len(r.parts))  # the widest root: most checks
    if root == destination:  # a source that is a single file: write in its directory
        root = destination.parent
    check_no_links(root, destination)
    return root, destination


def check_no_links(root: Path, destination: Path) -> None:
    """Refuse a symbolic link (or a non-directory) on the way from ``root`` to
    ``destination``, and a link or directory at ``destination`` itself."""
    current = root
    for part in destination.relative_to(root).parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise InvalidInputError(f"refusing to follow symbolic link {current}")
        if current.exists() and not current.is_dir():
            raise InvalidInputError(f"cannot write below {current}: it is not a directory")
    if destination.is_symlink():
        raise InvalidInputError(f"refusing to replace symbolic link {destination}")
    if destination.is_dir():
        raise InvalidInputError(f"cannot write {destination}: a directory is there")


def write_in_place(
    root: Path,
    destination: Path,
    chunks: Iterable[bytes],
    *,
    size: int,
    mode: int | None,
    mtime_ns: int | None,
) -> None:
    """Replace (or create) ``destination`` atomically: temp file in its directory, fsync,
    mode and mtime, rename, fsync of the directory. Missing directories below ``root`` are
    created (0700); links on the way are refused again right before writing. A content of
    another size than ``size`` is an :class:`InvalidInputError` and replaces nothing."""
    try:
        check_no_links(root, destination)
        if root.exists() and not root.is_dir():
            raise InvalidInputError(f"cannot restore into {root}: it is not a directory")
        root.mkdir(parents=True, exist_ok=True, mode=0o700)  # a configured root: trusted
        _ensure_safe_dir(root, destination.parent)
        written = 0

        def counted() -> Iterable[bytes]:
            nonlocal written
            for chunk in chunks:
                written += len(chunk)
                yield chunk

        temp = write_temp_file(destination.parent, counted())

        def check() -> None:
            if written != size:
                raise InvalidInputError(
                    f"restored content for {destination} has {written} bytes, not {size}"
                )
            check_no_links(root, destination)

        _install(temp, destination, mode, mtime_ns, check)
    except OSError as exc:
        raise storage_error("restore", destination, exc) from exc


def set_metadata(destination: Path, *, mode: int | None, mtime_ns: int | None) -> None:
    """Give an existing regular file (never a link) its backed-up mode and mtime."""
    try:
        if destination.is_symlink():
            raise InvalidInputError(f"refusing to change symbolic link {destination}")
        if mode is not None:
            os.chmod(destination, mode & 0o7777)
        if mtime_ns is not None:
            os.utime(destination, ns=(mtime_ns, mtime_ns))
    except OSError as exc:
        raise storage_error("restore", destination, exc) from exc


def delete_in_place(root: Path, destination: Path) -> None:
    """Remove one regular file (links on the way refused), then fsync its directory."""
    try:
        check_no_links(root, destination)
        if not stat.S_ISREG(destination.lstat().st_mode):
            raise InvalidInputError(f"refusing to delete {destination}: not a regular file")
        destination.unlink()
        fsync_dir(destination.parent)
    except FileNotFoundError:
        return  # gone already: the goal is reached
    except OSError as exc:
        raise storage_error("delete", destination, exc) from exc
