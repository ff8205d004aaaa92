"""Temporary files of restores in the user's directories: named after their writer, and
removed by the next restore once that writer is gone.

A restored file is first written to a temporary file in its destination directory, then
renamed over the destination (``restorer.write_file``, ``restorer.write_in_place``,
``tree_write``; links are made the same way), so a file is never torn. A restore killed
with SIGKILL (or a power cut) leaves that temporary file (or link) behind. Restore temp
files are therefore named ``.tmp-<pid>-<host>-<16 hex>`` (``<host>``: 8 hex digits of a
hash of the host name, see :data:`HOST_TAG`), and before a restore writes into a directory
it removes the ones that are stale:

* written by a process of this host that is no longer running (or is a zombie): removed;
* written by a running process (another restore in progress, or this one): kept, unless left
  untouched (no write, ``chmod`` or ``utime``: judged by its ``ctime``) for
  :data:`STALE_AFTER` (its PID was reused after a crash);
* written on another host (a directory shared over the network; its PIDs mean nothing here),
  or ``.tmp-<16 hex>`` as older versions named them: removed once untouched for
  :data:`STALE_AFTER`.

Nothing else is ever touched: other ``.tmp-*`` names (which may be the user's own files),
directories, special files, and nothing below the directory (a symbolic link with such a name
is removed itself, never followed). Cleaning never fails a restore: a file that cannot be
removed is logged and left. The repository's own temporary files
(``storage/local.py``) keep their ``.tmp-<16 hex>`` names and are collected by ``prune``;
backups never select ``.tmp-*`` files (``sources.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from src.infra.backup.repository.locks import HOSTNAME, pid_alive
from src.infra.backup.storage.local import TEMP_PREFIX, write_temp_file

log = logging.getLogger(__name__)

# A temp file a running writer has not touched for this long is abandoned (a writer streams
# chunks of at most 128 KiB, and renames right after setting mode and mtime, which also
# update the ctime).
STALE_AFTER = 6 * 3600.0
# A directory is swept at most once per this many seconds per process (a restore of many
# files into one directory sweeps it once).
SWEEP_INTERVAL = 60.0
HOST_TAG = hashlib.blake2b(HOSTNAME.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()

_TAGGED = re.compile(re.escape(TEMP_PREFIX) + r"([1-9][0-9]{0,8})-([0-9a-f]{8})-[0-9a-f]{16}")
_UNTAGGED = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{16}")
_swept: dict[str, float] = {}
_swept_lock = threading.Lock()


def restore_temp_tag() -> str:
    """The part of a restore temp name that names its writer: ``<pid>-<host>-``."""
    return f"{os.getpid()}-{HOST_TAG}-"


def write_restore_temp(directory: Path, chunks: Iterable[bytes]) -> Path:
    """Sweep stale restore temp files out of ``directory`` (see :func:`clean_stale_temps`),
    then write ``chunks`` to a new, fsync'ed temp file there named after this process."""
    clean_stale_temps(directory)
    return write_temp_file(directory, chunks, tag=restore_temp_tag())


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie is not: it writes nothing)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # "pid (comm) state ...": comm may contain spaces and parentheses.
            return handle.read().rpartition(b")")[2].split()[:1] != [b"Z"]
    except OSError:
        return True  # no /proc (or a race): trust kill(pid, 0)


def stale_reason(name: str, st: os.stat_result, now: float) -> str | None:
    """Why the file ``name`` (in a restore's destination directory, with ``lstat`` result
    ``st``) is an abandoned restore temp file, or ``None`` if it must be left alone."""
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return None  # restores leave files and links; a directory or FIFO is not ours
    untouched = now - max(st.st_mtime, st.st_ctime)
    tagged = _TAGGED.fullmatch(name)
    if tagged is not None:
        pid, host = int(tagged.group(1)), tagged.group(2)
        if host == HOST_TAG and pid != os.getpid() and not _running(pid):
            return f"left by process {pid}, which is no longer running"
    elif _UNTAGGED.fullmatch(name) is None:
        return None  # not a name this tool writes: maybe the user's own file
    if untouched >= STALE_AFTER:
        return f"untouched for {untouched / 3600:.1f} hours"
    return None


def clean_stale_temps(directory: Path, *, force: bool = False) -> list[Path]:
    """Remove the abandoned restore temp files directly in ``directory`` (see the module
    docstring for which ones) and return their paths. Unless ``force``, a directory swept by
    this process in the last :data:`SWEEP_INTERVAL` seconds is not swept again. Never raises:
    a missing directory has nothing to sweep, and a file that cannot be removed is logged."""
    key = os.path.abspath(directory)
    clock = time.monotonic()
    with _swept_lock:
        last = _swept.get(key)
        if not force and last is not None and clock - last < SWEEP_INTERVAL:
            return []
        _swept[key] = clock
    removed: list[Path] = []
    now = time.time()
    try:
        with os.scandir(key) as listing:
            candidates = [e for e in listing if e.name.startswith(TEMP_PREFIX)]
    except OSError:
        return removed  # missing (it is about to be created) or unreadable: nothing to do
    for candidate in candidates:
        try:
            reason = stale_reason(candidate.name, candidate.stat(follow_symlinks=False), now)
            if reason is None:
                continue
            os.unlink(candidate.path)
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
        except OSError as exc:
            log.warning("cannot remove temporary file %s: %s", candidate.path, exc.strerror)
            continue
        log.info("removed temporary file %s of an interrupted restore (%s)", candidate.path, reason)
        removed.append(Path(candidate.path))
    return removed


__all__ = [
    "HOST_TAG",
    "STALE_AFTER",
    "clean_stale_temps",
    "restore_temp_tag",
    "stale_reason",
    "write_restore_temp",
]
