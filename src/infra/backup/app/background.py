"""Backups taken off the trading path (``BackupManager.start_backup``).

The call captures the state and returns; storing happens in the background:

1. **Capture.** The process forks. The child holds a copy-on-write image of the caller's memory
   as it was at that instant; it encodes every value with the value codec into an anonymous
   memory file and exits. The parent returns at once, so the caller may change the state right
   away, in place and deep inside. Where ``os.fork`` is missing or fails, the values are encoded
   in the calling thread instead (the call then blocks for the encode, as ``create_backup``).
   A small state (a bounded walk finds at most :data:`SMALL_STATE_OBJECTS` objects and
   :data:`SMALL_STATE_BYTES` of text and array data) is encoded in the calling thread too: its
   encoded bytes are the copy, cheaper than a fork, and an unsupported value then fails at
   the call, before anything is queued.
2. **Store.** One writer thread per manager takes the captures in call order, waits for the
   child, and stores the encoded values through the same path as ``create_backup`` (hooks,
   fallback, run history, off-site). The backup's time, and the time in its id, is the moment
   of the call; the id's collision suffix (``_2`` ...) is chosen when it commits.

The child runs the codec and ``os.write`` only: no logging, no imports, no I/O but its memory
file and one status pipe, so it never waits for a lock another thread of the parent held at the
fork; it leaves with ``os._exit``. If the parent dies, the child's status write fails and it
exits; a pending backup is then simply lost, and the repository never saw it.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import json
import logging
import mmap
import os
import queue
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from typing import Any

from src.infra.backup.errors import BackupError, UnsupportedValueError
from src.infra.backup.format.values import encode_value

log = logging.getLogger(__name__)

# How long a process that is exiting waits for its pending background backups.
EXIT_FLUSH_SECONDS = 300.0

# A state within both bounds is encoded at the call rather than by a forked child: the encode
# then costs less than the fork, and bad values fail at the call (docs/PERFORMANCE.md).
SMALL_STATE_OBJECTS = 4096
SMALL_STATE_BYTES = 1 << 20

_SCALARS = (int, float, bool, type(None))
_TEXT = (str, bytes, bytearray)
_SEQUENCES = (list, tuple, set, frozenset)


def is_small_state(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` holds at most :data:`SMALL_STATE_OBJECTS` objects and
    :data:`SMALL_STATE_BYTES` of text and array data, found by a walk that stops at the first
    bound crossed. Dataclass fields and instance attributes are walked too; an array or frame
    without a byte size counts as large."""
    objects, data_bytes = 0, 0
    stack: list[Any] = list(data.values())
    while stack:
        value = stack.pop()
        objects += 1
        if objects > SMALL_STATE_OBJECTS:
            return False
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind in _TEXT:
            data_bytes += len(value)
        elif kind is dict or kind in _SEQUENCES:
            if objects + len(stack) + len(value) > SMALL_STATE_OBJECTS:
                return False  # checked before the items are taken: a huge list costs nothing
            if kind is dict:
                stack.extend(value.keys())
                stack.extend(value.values())
            else:
                stack.extend(value)
        elif hasattr(value, "shape"):  # an array or a frame: its data is not walked
            size = getattr(value, "nbytes", None)
            if not isinstance(size, int):
                return False
            data_bytes += size
        elif dataclasses.is_dataclass(value):
            stack.extend(getattr(value, field.name) for field in dataclasses.fields(value))
        elif hasattr(value, "__dict__"):
            stack.extend(vars(value).values())
        if data_bytes > SMALL_STATE_BYTES:
            return False
    return True


def _entry_root(name: str) -> str:
    return f"data[{json.dumps(name)}]"


class Capture:
    """The encoded values of one ``start_backup`` call, being made by a child process (or
    already made, on the fallback path). :meth:`payloads` waits for them."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._encoded: list[bytes | memoryview] | None = None
        self._pid = 0
        self._memory_fd = -1
        self._status_fd = -1

    @classmethod
    def take(cls, data: Mapping[str, Any]) -> Capture:
        """Capture ``data`` now: fork a child that encodes it (see the module docstring)."""
        capture = cls(list(data))
        fork = getattr(os, "fork", None)
        if fork is None or is_small_state(data):
            capture._encode_here(data)
            return capture
        memory_fd = _anonymous_file()
        status_read, status_write = os.pipe()
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns of fork with threads
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = fork()
        except OSError as exc:  # e.g. out of memory for the page tables: encode here
            log.warning("cannot fork to capture the backup (%s): encoding in this thread", exc)
            for fd in (memory_fd, status_read, status_write):
                os.close(fd)
            capture._encode_here(data)
            return capture
        if pid == 0:  # the child: see the module docstring for what it may do
            try:
                # A collection would touch every tracked object's header, so copy-on-write
                # would copy the whole heap: the short-lived child never collects.
                gc.disable()
                os.close(status_read)
                _encode_into(data, capture.names, memory_fd, status_write)
            finally:
                os._exit(0)
        os.close(status_write)
        capture._pid, capture._memory_fd, capture._status_fd = pid, memory_fd, status_read
        return capture

    def _encode_here(self, data: Mapping[str, Any]) -> None:
        self._encoded = [encode_value(data[name], root=_entry_root(name)) for name in self.names]

    def payloads(self) -> list[tuple[str, bytes | memoryview]]:
        """``(name, encoded value)`` in the order of the call's mapping; raises the encoding's
        error (e.g. :class:`UnsupportedValueError` naming where the value is)."""
        if self._encoded is None:
            self._encoded = self._collect()
        return list(zip(self.names, self._encoded, strict=True))

    def _collect(self) -> list[bytes | memoryview]:
        try:
            with open(self._status_fd, "rb", closefd=True) as status:
                report = status.read()
            _, wait_status = os.waitpid(self._pid, 0)
            if not report:
                raise BackupError(
                    "the process capturing the backup ended without a result "
                    f"({_describe_exit(wait_status)})"
                )
            result = json.loads(report)
            if "error" in result:
                if result["error"] == "unsupported":
                    raise UnsupportedValueError(result["message"], result.get("path", ""))
                raise BackupError(f"encoding the captured state failed: {result['message']}")
            sizes: list[int] = result["sizes"]
            if os.fstat(self._memory_fd).st_size != sum(sizes):
                raise BackupError("the captured state was cut short")
            if not sum(sizes):
                return [b"" for _ in sizes]
            # Mapped, not read: the child's pages are used where they are (no copy).
            whole = memoryview(mmap.mmap(self._memory_fd, sum(sizes), access=mmap.ACCESS_READ))
            offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            return [whole[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]
        finally:
            os.close(self._memory_fd)


def _anonymous_file() -> int:
    """A file only this process and its children can reach (memfd on Linux)."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd: int = memfd_create("peak-backup-capture", 0)
        return fd
    handle = tempfile.TemporaryFile()  # noqa: SIM115 - its descriptor outlives the object
    return os.dup(handle.fileno())


def _encode_into(data: Mapping[str, Any], names: list[str], memory_fd: int, status_fd: int) -> None:
    """In the child: encode each value into ``memory_fd``, then report the sizes (or the
    error) on ``status_fd`` as one JSON document."""
    try:
        sizes = []
        for name in names:
            payload = encode_value(data[name], root=_entry_root(name))
            view = memoryview(payload)
            while view:
                view = view[os.write(memory_fd, view) :]
            sizes.append(len(payload))
        report: dict[str, Any] = {"sizes": sizes}
    except UnsupportedValueError as exc:
        report = {"error": "unsupported", "message": str(exc), "path": exc.path}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        report = {"error": type(exc).__name__, "message": str(exc)}
    view = memoryview(json.dumps(report).encode())
    while view:
        view = view[os.write(status_fd, view) :]


def _describe_exit(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        return f"killed by signal {os.WTERMSIG(wait_status)}"
    return f"exit status {os.waitstatus_to_exitcode(wait_status)}"


class BackgroundWriter:
    """Runs submitted backups one after the other in a daemon thread, in call order; pending
    ones are waited for at interpreter exit (up to :data:`EXIT_FLUSH_SECONDS`)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], str], Future[str]]] = queue.SimpleQueue()
        self._pending: list[Future[str]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], str]) -> Future[str]:
        """Queue ``job`` (it returns the backup id); its future holds the id or the error."""
        future: Future[str] = Future()
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(future)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="peak-backup-background", daemon=True
                )
                self._thread.start()
                atexit.register(self._flush_at_exit)
        self._jobs.put((job, future))
        return future

    def pending(self) -> list[Future[str]]:
        """The futures of backups not yet finished."""
        with self._lock:
            return [f for f in self._pending if not f.done()]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted backup finished (stored or failed); ``False`` if
        ``timeout`` seconds passed first."""
        pending = self.pending()
        if not pending:
            return True
        _done, not_done = wait(pending, timeout=timeout)
        return not not_done

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller by .result()
                future.set_exception(exc)

    def _flush_at_exit(self) -> None:
        if self.pending() and not self.wait(EXIT_FLUSH_SECONDS):
            log.warning("exiting with background backups not yet stored: they are lost")
