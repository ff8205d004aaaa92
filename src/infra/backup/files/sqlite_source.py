"""Consistent capture of a live SQLite database through SQLite's online backup API.

Copying the bytes of a database file that a bot is writing to yields a torn copy: pages from
before and after a commit, or a main file without the WAL content it depends on.
:func:`capture_sqlite` instead copies the database with ``sqlite3.Connection.backup()`` from
a connection of its own into a temporary file, page by page (never the whole database in
memory), and checks the copy before handing it out. The copy holds every transaction
committed before the capture started, and only whole transactions.

How the copy is taken depends on the source's journal mode:

* **WAL**: readers never block the writer. The capture's connection opens a read transaction
  (``BEGIN``, then a read, which takes the snapshot) and holds it until the copy is done, so
  the copy is exactly that snapshot. By default the copy is taken in one step (``pages=-1``).
  Holding the snapshot also makes a stepwise copy possible (:data:`WAL_STEP_BYTES`, flushing
  the copy to disk as it grows, :data:`WAL_SYNC_BYTES`): without it SQLite restarts a
  stepwise copy whenever another connection commits between two steps, with it the source's
  pages stay those of the snapshot and the copy never restarts (should it all the same, the
  rest is copied in one step). The stepwise copy is not the default because
  ``bench/sqlite_live.py`` shows no gain from it: the writer's commits are no faster at a
  low commit rate, and at full speed they are slower, since the copy takes longer. What made
  the writer wait was the sync of the whole copy described below, which is no longer done.
  While the snapshot is held, the writer's checkpoints cannot fold the transactions committed
  since into the database, so its WAL grows for as long as the copy takes; its next
  checkpoint after the capture folds all of that back at once (the longer the copy, the
  longer that checkpoint).
* **Rollback journal** (delete, truncate, persist, ...): a reader's SHARED lock blocks the
  writer's commit for as long as it is held, so the copy is taken in steps of
  :data:`STEP_BYTES`, pausing between steps so that the writer gets in, without holding a
  read transaction across them (that would block the writer for the whole copy). A commit
  between two steps makes SQLite restart the copy; after :data:`MAX_RESTARTS` restarts the
  steps grow (:data:`ESCALATION`) and finally the rest is copied in one step, so the capture
  always terminates (the writer then waits for that one step).

The copy is a temporary file, read once and removed: apart from the flushes of a stepwise
WAL copy, it is never synced. Its header still
marks it as a WAL database when the source is one; switching it to journal mode DELETE
checkpoints it, and with SQLite's default synchronous setting that would sync the whole copy
to disk, a burst of writes that the writer's own next sync (at its checkpoints) would queue
behind. Unsynced, a copy removed soon after the capture mostly never reaches the disk.

Lock waits are bounded by ``busy_timeout``: a read or copy step that finds the database locked
is retried every millisecond (:data:`BUSY_RETRY_SLEEP`), and when none could run for
``busy_timeout`` seconds the capture raises :class:`SqliteCaptureError`.
Stepwise copying of rollback-journal databases stops after ``STEPWISE_BUDGET *
busy_timeout`` seconds (the rest is copied in one step); a stepwise WAL copy never restarts
and needs no such bound.

A database that does not exist (also one that vanishes before SQLite opened it) raises
:class:`FileNotFoundError`, not :class:`SqliteCaptureError`: callers tell a vanished file
from one that cannot be captured.

The source is only read: the capture opens it with ``mode=rw`` (never creating a missing
file), falling back to ``mode=ro`` when writing is not permitted, and issues no writes. As
with any SQLite client, opening it may roll back a hot journal left by a crashed writer;
on Python < 3.12, if the capture's connection is the last one to close a WAL database,
SQLite checkpoints it on close (from Python 3.12 on that is switched off).

SQLite keeps the journal mode of rollback-journal databases per connection, not in the
file: the capture reports ``"wal"`` for WAL databases and its own connection's mode
(``"delete"``) for the others.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from src.infra.backup.errors import BackupError, InvalidInputError

SQLITE_HEADER = b"SQLite format 3\x00"

#: Rollback-journal modes: bytes copied per backup step (``STEP_BYTES // page_size`` pages,
#: 1024 pages of 4 KiB). A step holds the read lock, so it bounds the writer's wait: 4 ms per
#: step (16 ms for 16 MiB, 65 ms for 64 MiB), measured by ``bench/sqlite_live.py``.
STEP_BYTES = 4 * 1024 * 1024
#: Pause between two steps (seconds), so that a writer about to commit gets in.
STEP_PAUSE = 0.002
#: WAL mode: bytes copied per backup step while the capture holds its read snapshot
#: (``WAL_STEP_BYTES // page_size`` pages); 0, the default: the whole copy in one step.
WAL_STEP_BYTES = 0
#: WAL mode, stepwise copies: the copy is flushed to disk (``fdatasync``) each time it grew by
#: this many bytes (0: never).
WAL_SYNC_BYTES = 4 * 1024 * 1024
#: Restarts tolerated at the normal step size before the steps grow.
MAX_RESTARTS = 3
#: Step-size multipliers tried (one restart each) after :data:`MAX_RESTARTS`, before the
#: rest is copied in one step.
ESCALATION = (4, 16)
#: Stepwise copying gives up after this many times ``busy_timeout`` (then: one step).
STEPWISE_BUDGET = 4
#: Pause before retrying a step that found the database locked (seconds). SQLite's own busy
#: handler backs off to 100 ms between attempts; a reader polling that slowly seldom finds a
#: moment when a busy rollback-journal writer holds no PENDING lock (measured: waits of up to
#: 2 s per step with a writer committing continuously), so the copy polls itself.
BUSY_RETRY_SLEEP = 0.001
#: Page-cache sizes (KiB) of the connections: the copy is streamed, never held in memory.
SOURCE_CACHE_KIB = 2048
COPY_CACHE_KIB = 1024
#: Problems a check reports at most (the message names the first).
CHECK_LIMIT = 10

_ANY_FILE_SUFFIXES = ("", "-journal", "-wal", "-shm")

# SQLite result codes (primary codes; ``sqlite3`` exports them from Python 3.11 on only).
_PERM = 3
_BUSY = 5
_LOCKED = 6
_READONLY = 8
_CORRUPT = 11
_CANTOPEN = 14
_AUTH = 23
_NOTADB = 26
_DONE = 101
_ACCESS_CODES = frozenset({_PERM, _READONLY, _CANTOPEN, _AUTH})


class SqliteCaptureError(BackupError):
    """The database cannot be captured; the message says why (not a database or encrypted,
    damaged, unreadable, locked past the timeout, ...)."""


@dataclass(frozen=True)
class SqliteCapture:
    """A consistent copy of an SQLite database, valid inside :func:`capture_sqlite`."""

    path: Path  # temporary file holding the copy (journal mode DELETE: self-contained)
    size: int  # bytes of the copy
    page_size: int
    journal_mode: str  # of the source, as its connection reports it ("wal", "delete", ...)
    steps: int  # backup steps taken
    restarts: int  # times the copy restarted because a writer changed the source
    seconds: float  # wall time of the capture (copy and check)


def looks_like_sqlite(path: Path) -> bool:
    """Whether ``path`` is a regular file starting with the SQLite header.

    Encrypted databases (SQLCipher) have no plain header and are not recognized. False when
    the file cannot be read or is shorter than the header.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


@contextmanager
def capture_sqlite(
    path: Path,
    *,
    integrity: Literal["quick", "full"] = "quick",
    busy_timeout: float = 5.0,
    temp_dir: Path | None = None,
) -> Iterator[SqliteCapture]:
    """Copy the live database at ``path`` consistently into a temporary file and check it.

    Yields a :class:`SqliteCapture` whose ``path`` is the copy (mode 0600, in ``temp_dir`` or
    the system's temporary directory); the copy is removed when the context exits, also on
    errors. The copy is checked with ``PRAGMA quick_check`` (``integrity_check`` when
    ``integrity="full"``). ``busy_timeout`` (seconds) bounds each wait for a lock.

    Raises :class:`FileNotFoundError` when the database does not exist (also when it
    vanishes before SQLite opened it), and :class:`SqliteCaptureError` when it cannot be
    captured: unreadable, not an SQLite database (or encrypted), damaged, or locked past the
    timeout.
    """
    if integrity not in ("quick", "full"):
        raise InvalidInputError(f"integrity must be 'quick' or 'full', not {integrity!r}")
    if busy_timeout < 0:
        raise InvalidInputError(f"busy_timeout must not be negative, got {busy_timeout!r}")
    started = time.monotonic()
    _check_file(path)
    try:
        handle, name = tempfile.mkstemp(prefix="sqlite-capture-", suffix=".db", dir=temp_dir)
    except OSError as exc:
        raise SqliteCaptureError(
            f"cannot capture SQLite database {path}: cannot create a temporary copy ({exc})"
        ) from exc
    os.close(handle)
    copy = Path(name)
    try:
        try:
            page_size, journal_mode, steps, restarts = _copy(path, copy, busy_timeout)
            _finish_copy(path, copy, integrity)
            size = copy.stat().st_size
        except sqlite3.Error as exc:
            if not os.path.exists(path):  # removed after the check: SQLite cannot open it
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from exc
            raise SqliteCaptureError(_describe(path, exc, busy_timeout)) from exc
        yield SqliteCapture(
            path=copy,
            size=size,
            page_size=page_size,
            journal_mode=journal_mode,
            steps=steps,
            restarts=restarts,
            seconds=time.monotonic() - started,
        )
    finally:
        for suffix in _ANY_FILE_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{copy}{suffix}")


def _check_file(path: Path) -> None:
    """Raise a clear :class:`SqliteCaptureError` unless ``path`` is a readable SQLite file
    (:class:`FileNotFoundError` when it does not exist)."""
    prefix = f"cannot capture SQLite database {path}"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise SqliteCaptureError(f"{prefix}: it is {kind}")
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        raise  # vanished: not a capture error (callers tell a missing file from others)
    except OSError as exc:
        raise SqliteCaptureError(f"{prefix}: cannot read it ({exc.strerror or exc})") from exc
    if header != SQLITE_HEADER:
        raise SqliteCaptureError(
            f"{prefix}: file is not a database (no SQLite header: empty, encrypted, e.g. "
            "with SQLCipher, or another format)"
        )


def _copy(path: Path, copy: Path, busy_timeout: float) -> tuple[int, str, int, int]:
    """Back ``path`` up into ``copy``: (page size, journal mode, steps, restarts)."""
    source = _open_source(path, busy_timeout)
    try:
        page_size = int(_read(source, "PRAGMA page_size", busy_timeout))
        journal_mode = str(_read(source, "PRAGMA journal_mode", busy_timeout)).lower()
        target = sqlite3.connect(copy, isolation_level=None)
        try:
            # A private temporary file: no durability needed. The memory journal stays
            # empty (the copy starts with no pages) and lets an abandoned attempt roll back.
            target.execute("PRAGMA journal_mode=MEMORY")
            target.execute("PRAGMA synchronous=OFF")
            target.execute(f"PRAGMA cache_size=-{COPY_CACHE_KIB}")
            run = _BackupRun(path, source, target, busy_timeout)
            if journal_mode == "wal":
                _copy_wal(run, copy, page_size)
            else:
                _copy_rollback(run, page_size)
        finally:
            target.close()
    finally:
        source.close()
    return page_size, journal_mode, run.steps, run.restarts


def _copy_wal(run: _BackupRun, copy: Path, page_size: int) -> None:
    """WAL source: copy the read snapshot that the source connection holds open, in one
    step or (:data:`WAL_STEP_BYTES`) in steps, flushing the copy as it grows. Should a
    stepwise copy restart all the same, the rest is copied in one step (same snapshot)."""
    source, busy_timeout = run.source, run.busy_timeout
    # BEGIN is deferred: the read starts the transaction and takes the snapshot.
    source.execute("BEGIN")
    _read(source, "SELECT count(*) FROM sqlite_master", busy_timeout)
    if WAL_STEP_BYTES <= 0:
        run.attempt(-1, 0)
    else:
        with _Flusher(copy, WAL_SYNC_BYTES) as flusher:
            pages = max(1, WAL_STEP_BYTES // page_size)
            if not run.attempt(pages, 1, after_step=flusher.step, budget=False):
                run.attempt(-1, 0)
    source.execute("COMMIT")


def _copy_rollback(run: _BackupRun, page_size: int) -> None:
    """Rollback-journal source: steps of :data:`STEP_BYTES`, restarting when the writer
    commits between two steps, growing (:data:`ESCALATION`) and finally one step."""
    base = max(1, STEP_BYTES // page_size)
    plan = [(base, MAX_RESTARTS), *((base * grow, 1) for grow in ESCALATION), (-1, 0)]
    for pages, restarts_allowed in plan:
        if pages > 0 and time.monotonic() >= run.stepwise_until:
            continue
        if run.attempt(pages, restarts_allowed, after_step=_pause_between_steps):
            break


def _pause_between_steps() -> None:
    time.sleep(STEP_PAUSE)


class _Flusher:
    """Flushes the copy to disk each time it grew by ``every`` bytes (0: never), through a
    descriptor of its own, so that little of it waits in the page cache to be written."""

    def __init__(self, copy: Path, every: int) -> None:
        self.copy = copy
        self.every = every
        self.fd = -1
        self.flushed = 0

    def __enter__(self) -> _Flusher:
        self.fd = os.open(self.copy, os.O_RDONLY)
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)

    def step(self) -> None:
        """After a backup step: flush when the copy grew enough since the last flush."""
        if self.every <= 0:
            return
        size = os.fstat(self.fd).st_size
        if size - self.flushed >= self.every:
            _fdatasync(self.fd)
            self.flushed = size


_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)  # macOS: no fdatasync


def _open_source(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` read-write (never creating it), or read-only when writing is denied,
    and read its schema once (which fails on files that are not databases)."""
    uri = path.absolute().as_uri()
    for mode in ("rw", "ro"):
        connection: sqlite3.Connection | None = None
        try:
            connection = sqlite3.connect(
                f"{uri}?mode={mode}", uri=True, timeout=busy_timeout, isolation_level=None
            )
            # The busy timeout is applied by polling (see BUSY_RETRY_SLEEP), not by SQLite.
            connection.execute("PRAGMA busy_timeout=0")
            _no_checkpoint_on_close(connection)
            _read(connection, "SELECT count(*) FROM sqlite_master", busy_timeout)
            _read(connection, f"PRAGMA cache_size=-{SOURCE_CACHE_KIB}", busy_timeout)
        except sqlite3.Error as exc:
            if connection is not None:
                connection.close()
            if mode == "rw" and _is_access_denied(exc):
                continue
            raise
        return connection
    raise AssertionError("unreachable")  # pragma: no cover


def _read(connection: sqlite3.Connection, sql: str, busy_timeout: float) -> Any:
    """The first column of the first row of ``sql``, retried while the database is locked
    (every :data:`BUSY_RETRY_SLEEP`, for up to ``busy_timeout`` seconds)."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            row = connection.execute(sql).fetchone()
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(BUSY_RETRY_SLEEP)
            continue
        return row[0] if row else None


def _no_checkpoint_on_close(connection: sqlite3.Connection) -> None:
    """Keep the capture's connection from checkpointing a WAL source when it closes
    (``Connection.setconfig`` exists from Python 3.12 on)."""
    setconfig = getattr(connection, "setconfig", None)
    flag = getattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", None)
    if setconfig is not None and flag is not None:
        setconfig(flag, True)


class _AttemptAbandonedError(Exception):
    """Raised from the progress callback to abandon one backup call (steps grow next)."""


class _BackupRun:
    """Successive ``Connection.backup`` calls of one capture, with their step counts."""

    def __init__(
        self,
        path: Path,
        source: sqlite3.Connection,
        target: sqlite3.Connection,
        busy_timeout: float,
    ) -> None:
        self.path = path
        self.source = source
        self.target = target
        self.busy_timeout = busy_timeout
        now = time.monotonic()
        self.stepwise_until = now + STEPWISE_BUDGET * busy_timeout
        self.last_progress = now
        self.steps = 0
        self.restarts = 0

    def attempt(
        self,
        pages: int,
        restarts_allowed: int,
        *,
        after_step: Callable[[], None] | None = None,
        budget: bool = True,
    ) -> bool:
        """Copy with steps of ``pages`` pages (-1: all at once), calling ``after_step``
        between two steps. False when abandoned after ``restarts_allowed`` restarts or, with
        ``budget``, at the end of the stepwise budget."""
        try:
            self.source.backup(
                self.target,
                pages=pages,
                progress=self._monitor(pages, restarts_allowed, after_step, budget),
                sleep=BUSY_RETRY_SLEEP,
            )
        except _AttemptAbandonedError:
            return False
        return True

    def _monitor(
        self,
        pages: int,
        restarts_allowed: int,
        after_step: Callable[[], None] | None,
        budget: bool,
    ) -> Callable[[int, int, int], None]:
        last: tuple[int, int] | None = None  # (pages copied, page count) after the last step
        restarts_here = 0

        def progress(status: int, remaining: int, total: int) -> None:
            nonlocal last, restarts_here
            now = time.monotonic()
            if status in (_BUSY, _LOCKED):
                if now - self.last_progress >= self.busy_timeout:
                    raise SqliteCaptureError(
                        f"cannot capture SQLite database {self.path}: locked, no read lock "
                        f"within the busy timeout of {self.busy_timeout:g} s"
                    )
                return
            self.steps += 1
            self.last_progress = now
            copied = total - remaining
            # A restart copies from the first page again: progress does not advance (or
            # the page count changed under the copy).
            if last is not None and (total != last[1] or copied <= last[0]):
                self.restarts += 1
                restarts_here += 1
            last = (copied, total)
            if status == _DONE or pages < 0:
                return
            if restarts_here >= restarts_allowed or (budget and now >= self.stepwise_until):
                raise _AttemptAbandonedError
            if after_step is not None:
                after_step()

        return progress


def _finish_copy(path: Path, copy: Path, integrity: str) -> None:
    """Make the copy self-contained (journal mode DELETE) and check it."""
    connection = sqlite3.connect(copy, isolation_level=None)
    try:
        connection.execute(f"PRAGMA cache_size=-{COPY_CACHE_KIB}")
        # A copy of a WAL database is marked WAL in its header: switching it to DELETE
        # checkpoints it, which must not flush the whole copy to disk (a temporary file).
        connection.execute("PRAGMA synchronous=OFF")
        mode = str(connection.execute("PRAGMA journal_mode=DELETE").fetchone()[0]).lower()
        if mode != "delete":
            raise SqliteCaptureError(
                f"cannot capture SQLite database {path}: the copy stays in journal mode {mode}"
            )
        pragma = "quick_check" if integrity == "quick" else "integrity_check"
        rows = connection.execute(f"PRAGMA {pragma}({CHECK_LIMIT})").fetchall()
    finally:
        connection.close()
    # One row per problem; the first may be prefixed with "*** in database main ***\n".
    lines = [line for row in rows for line in str(row[0]).splitlines()]
    problems = [line for line in lines if line and not line.startswith("***")]
    if problems != ["ok"]:
        at_least = "at least " if len(problems) >= CHECK_LIMIT else ""
        more = f" (and {at_least}{len(problems) - 1} more)" if len(problems) > 1 else ""
        first = problems[0] if problems else "no result"
        raise SqliteCaptureError(
            f"cannot capture SQLite database {path}: damaged, {pragma} of the copy found: "
            f"{first}{more}"
        )


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    return code & 0xFF if isinstance(code, int) else None


def _is_locked(exc: sqlite3.Error) -> bool:
    code = _primary_code(exc)
    if code is not None:
        return code in (_BUSY, _LOCKED)
    return "is locked" in str(exc)


def _is_access_denied(exc: sqlite3.Error) -> bool:
    code = _primary_code(exc)
    if code is not None:
        return code in _ACCESS_CODES
    message = str(exc)
    return any(word in message for word in ("unable to open", "readonly", "not authorized"))


def _describe(path: Path, exc: sqlite3.Error, busy_timeout: float) -> str:
    """Why the capture failed, from SQLite's error."""
    prefix = f"cannot capture SQLite database {path}"
    code = _primary_code(exc)
    message = str(exc)
    if code == _NOTADB or "not a database" in message:
        return f"{prefix}: file is not a database (encrypted, e.g. with SQLCipher, or damaged)"
    if code == _CORRUPT or "malformed" in message:
        return f"{prefix}: damaged ({message})"
    if _is_locked(exc):
        return f"{prefix}: locked past the busy timeout of {busy_timeout:g} s ({message})"
    if _is_access_denied(exc):
        return f"{prefix}: cannot open it ({message})"
    return f"{prefix}: {message}"
