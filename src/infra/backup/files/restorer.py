"""Writing restored files safely: into a target folder (never through a link, never outside it)
or in place over the sources (checked names, links refused, atomic replacement); directories,
symbolic and hard links, ownership, and the SQLite companions a restored database must lose.

Knows nothing of repositories: callers hand it bytes and entry metadata.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

from src.infra.backup.errors import InvalidInputError
from src.infra.backup.files.restore_temp import restore_temp_tag, write_restore_temp
from src.infra.backup.files.sources import ABSOLUTE_PREFIX, SourceItem, entry_name, is_secret
from src.infra.backup.storage.local import TEMP_PREFIX, fsync_dir, storage_error


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
    owner: tuple[int, int] | None = None,
) -> Path:
    """Write one restored file atomically (temp, fsync, rename) with its mode and mtime
    (and ``owner`` uid/gid, when given: only root can set it)."""
    destination = restore_path(target, name)
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        _ensure_safe_dir(target, destination.parent)
        if destination.is_symlink() or destination.is_dir():
            raise InvalidInputError(f"cannot restore {destination}: a link or directory is there")
        temp = write_restore_temp(destination.parent, chunks)
        _install(temp, destination, mode, mtime_ns, owner=owner)
    except OSError as exc:
        raise storage_error("restore", destination, exc) from exc
    return destination


def set_file_metadata(
    target: Path | int,
    *,
    owner: tuple[int, int] | None,
    mode: int | None,
    mtime_ns: int | None,
) -> None:
    """Give a restored file (a path, or an open descriptor) its owner, mode and mtime."""
    if owner is not None:
        os.chown(target, *owner)  # before chmod: chown clears setuid/setgid bits
    if mode is not None:
        os.chmod(target, mode & 0o7777)
    if mtime_ns is not None:
        os.utime(target, ns=(mtime_ns, mtime_ns))


def _install(
    temp: Path,
    destination: Path,
    mode: int | None,
    mtime_ns: int | None,
    check: Callable[[], None] | None = None,
    *,
    owner: tuple[int, int] | None = None,
) -> None:
    """Give a written temp file its owner, mode and mtime, run ``check``, rename it over
    ``destination`` and make the rename durable; the temp file never outlives a failure."""
    try:
        if check is not None:
            check()
        set_file_metadata(temp, owner=owner, mode=mode, mtime_ns=mtime_ns)
        os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(destination.parent)


def check_layout(names: Sequence[tuple[str, str]]) -> None:
    """Refuse a set of ``(name, kind)`` entries in which one lies below another that is not
    a directory (``a -> /elsewhere`` and ``a/b``): restoring it would write through a link or
    fail half-way. Checked before anything is written."""
    leaves = {name: kind for name, kind in names if kind != "dir"}
    for name, _kind in names:
        parent = PurePosixPath(name).parent
        while parent.as_posix() not in (".", "/", ""):
            holder = leaves.get(parent.as_posix())
            if holder is not None:
                what = "a symbolic link" if holder == "symlink" else f"a {holder}"
                raise InvalidInputError(
                    f"refusing to restore {name!r}: it lies below {parent.as_posix()!r}, which "
                    f"the backup holds as {what}"
                )
            parent = parent.parent


def make_directory(target: Path, name: str) -> Path:
    """Create directory ``name`` below ``target`` (0700 until :func:`finish_directory`),
    refusing links on the way; an existing directory is fine."""
    destination = restore_path(target, name)
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        _ensure_safe_dir(target, destination)
    except OSError as exc:
        raise storage_error("restore", destination, exc) from exc
    return destination


def finish_directory(
    path: Path, *, mode: int | None, mtime_ns: int | None, owner: tuple[int, int] | None
) -> None:
    """Give a restored directory its owner, mode and mtime (after everything below it is
    written, so the mtime stays). Never through a symbolic link."""
    try:
        if path.is_symlink() or not path.is_dir():
            raise InvalidInputError(f"cannot restore directory {path}: something else is there")
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)
        if mode is not None:
            os.chmod(path, mode & 0o7777)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    except OSError as exc:
        raise storage_error("restore", path, exc) from exc


def make_symlink(
    target: Path,
    name: str,
    link_text: str,
    *,
    mtime_ns: int | None,
    owner: tuple[int, int] | None,
) -> Path:
    """Create symbolic link ``name`` (pointing to ``link_text``, which is never followed)
    below ``target``, atomically: a new link under a temporary name, renamed into place."""
    destination = restore_path(target, name)
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        _ensure_safe_dir(target, destination.parent)
        if destination.is_dir() and not destination.is_symlink():
            raise InvalidInputError(f"cannot restore link {destination}: a directory is there")

        def create(temp: Path) -> None:
            os.symlink(link_text, temp)
            if owner is not None:
                os.chown(temp, *owner, follow_symlinks=False)
            if mtime_ns is not None:
                os.utime(temp, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

        _swap_into_place(destination, create)
    except OSError as exc:
        raise storage_error("restore", destination, exc) from exc
    return destination


def _swap_into_place(destination: Path, create: Callable[[Path], None]) -> None:
    """``create`` a link under a temporary name beside ``destination`` (named like the
    restore's temp files, so a killed restore's leftover is swept), rename it over
    ``destination`` and make that durable; the temporary never outlives a failure."""
    temp = destination.parent / f"{TEMP_PREFIX}{restore_temp_tag()}{os.urandom(8).hex()}"
    try:
        create(temp)
        os.replace(temp, destination)
    except BaseException:
        if os.path.lexists(temp):
            temp.unlink()
        raise
    fsync_dir(destination.parent)


def make_hardlink(target: Path, name: str, existing: Path) -> Path:
    """Create ``name`` below ``target`` as a hard link to the restored file ``existing``
    (a regular file, never a link), atomically."""
    destination = restore_path(target, name)
    try:
        _ensure_safe_dir(target, destination.parent)
        if not stat.S_ISREG(existing.lstat().st_mode):
            raise InvalidInputError(f"cannot link {destination} to {existing}: not a file")
        if destination.is_dir() and not destination.is_symlink():
            raise InvalidInputError(f"cannot restore {destination}: a directory is there")
        _swap_into_place(destination, lambda temp: os.link(existing, temp, follow_symlinks=False))
    except OSError as exc:
        raise storage_error("restore", destination, exc) from exc
    return destination


DATABASE_COMPANIONS = ("-wal", "-shm", "-journal")


def remove_database_companions(root: Path, database: Path) -> None:
    """Remove the ``-wal``, ``-shm`` and ``-journal`` files beside a database about to be
    replaced by a restored copy: SQLite would otherwise apply a stale WAL or roll back a
    stale journal into the restored file. Only regular files, never through a link."""
    removed = False
    for suffix in DATABASE_COMPANIONS:
        companion = database.with_name(database.name + suffix)
        try:
            check_no_links(root, companion)
            if not stat.S_ISREG(companion.lstat().st_mode):
                continue
            companion.unlink()
            removed = True
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise storage_error("remove", companion, exc) from exc
    if removed:
        fsync_dir(database.parent)


def restore_owner(uid: int | None, gid: int | None) -> tuple[int, int] | None:
    """The owner to give a restored object: only when running as root and it is known."""
    if uid is None or gid is None or os.geteuid() != 0:
        return None
    return (uid, gid)


def collect_paths(
    paths: Iterable[Path], root: Path, *, include_secrets: bool = False
) -> list[SourceItem]:
    """Exactly the given regular files (and symbolic links), named as :func:`collect_sources`
    names them (relative to ``root`` when inside it, else absolute), sorted, no duplicates.

    This is the source list of a ``pre_restore`` backup: the files an in-place restore is
    about to overwrite or delete. A secret among them raises :class:`InvalidInputError` unless
    ``include_secrets`` (the caller checks the repository is encrypted), and so does anything
    that is not a regular file: such a backup must hold every file it was asked for.
    """
    found: dict[str, SourceItem] = {}
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
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise InvalidInputError(f"cannot back up {path}: not a regular file or link")
        found.setdefault(name, SourceItem(name, path, st))
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


def in_place_path(
    name: str, base_dir: Path | None, roots: Sequence[Path], *, leaf: str = "file"
) -> tuple[Path, Path]:
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
    check_no_links(root, destination, leaf=leaf)
    return root, destination


def check_no_links(root: Path, destination: Path, *, leaf: str = "file") -> None:
    """Refuse a symbolic link (or a non-directory) on the way from ``root`` to
    ``destination``, and a link or directory at ``destination`` itself (for ``leaf`` =
    ``"file"``; a ``"symlink"`` may replace a link, a ``"dir"`` may be a directory)."""
    current = root
    for part in destination.relative_to(root).parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise InvalidInputError(f"refusing to follow symbolic link {current}")
        if current.exists() and not current.is_dir():
            raise InvalidInputError(f"cannot write below {current}: it is not a directory")
    if leaf == "symlink":
        if destination.is_dir() and not destination.is_symlink():
            raise InvalidInputError(f"cannot write link {destination}: a directory is there")
        return
    if destination.is_symlink():
        raise InvalidInputError(f"refusing to replace symbolic link {destination}")
    if leaf == "dir":
        if destination.exists() and not destination.is_dir():
            raise InvalidInputError(f"cannot create directory {destination}: a file is there")
        return
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

        temp = write_restore_temp(destination.parent, counted())

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
    """Remove one regular file or symbolic link (itself, never what it points to; links on
    the way refused), then fsync its directory."""
    try:
        check_no_links(root, destination, leaf="symlink")
        mode = destination.lstat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise InvalidInputError(f"refusing to delete {destination}: not a file or link")
        destination.unlink()
        fsync_dir(destination.parent)
    except FileNotFoundError:
        return  # gone already: the goal is reached
    except OSError as exc:
        raise storage_error("delete", destination, exc) from exc
