"""A fault-injecting :class:`Store` wrapper, for errors a real store can't be made to produce
on demand (disk full, I/O errors, timeouts, torn writes). Used only by tests.

Usage: run an operation once unarmed to count its write steps (``store.calls["write"]``),
then, on a fresh copy, ``store.arm("EIO", at=k)`` for each step ``k``.

Fault kinds:

``ENOSPC`` / ``EIO``
    The call fails before it reaches the inner store, with the ``StorageError`` that
    ``LocalStore`` raises for that ``OSError``.
``timeout``
    The call reaches the inner store and takes effect, but its answer is lost: a
    ``StorageError`` saying the operation timed out (the ambiguous outcome of a network store).
``short_write``
    The write stops halfway. Stores never expose a partial object under its key (local: temp
    file + rename; S3: a PUT is atomic), so what a short write really leaves is a truncated
    temporary file: ``put`` leaves one in the key's directory, then ``StorageError``;
    ``put_many`` writes the first half of the batch fully, leaves the next item as a truncated
    temporary file, then fails. Other operations write no bytes: they fail like ``EIO``.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from src.infra.backup.errors import StorageError
from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.local import LocalStore, storage_error, write_temp_file

FaultKind = Literal["ENOSPC", "EIO", "timeout", "short_write"]
FAULT_KINDS: tuple[FaultKind, ...] = ("ENOSPC", "EIO", "timeout", "short_write")
WRITE_OPS = frozenset({"put", "put_many", "move", "delete", "delete_temporary"})
ANY_WRITE = "write"


@dataclass(frozen=True)
class Fault:
    """An armed fault: fail the ``at``-th call (1-based) of ``op`` (or of any write)."""

    kind: FaultKind
    at: int
    op: str = ANY_WRITE


@dataclass(frozen=True)
class Injected:
    """A fault that fired: its kind, the operation and the key it hit."""

    kind: FaultKind
    op: str
    key: str
    torn_keys: tuple[str, ...] = ()


class FaultyStore(Store):
    """Delegates every call to ``inner``; counts calls per operation (and all writes under
    ``"write"``); fires at most one armed fault."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.write_log: list[tuple[str, str]] = []  # (op, key) of every write call, in order
        self.fault: Fault | None = None
        self.injected: list[Injected] = []

    # -- arming ----------------------------------------------------------------------------

    def arm(self, kind: FaultKind, at: int, op: str = ANY_WRITE) -> None:
        """Fail the ``at``-th call of ``op`` from now on (counters are reset)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.reset()
        self.fault = Fault(kind, at, op)

    def reset(self) -> None:
        """Forget the counts, the write log and any armed fault."""
        self.calls.clear()
        self.write_log.clear()
        self.fault = None

    def _due(self, op: str, key: str) -> Fault | None:
        """Count the call; return the armed fault if this call is the one to fail."""
        self.calls[op] += 1
        if op in WRITE_OPS:
            self.calls[ANY_WRITE] += 1
            self.write_log.append((op, key))
        fault = self.fault
        if fault is None:
            return None
        hit = (fault.op == ANY_WRITE and op in WRITE_OPS and self.calls[ANY_WRITE] == fault.at) or (
            fault.op == op and self.calls[op] == fault.at
        )
        if not hit:
            return None
        self.fault = None  # fire once
        return fault

    def _error(self, fault: Fault, op: str, key: str, torn: tuple[str, ...] = ()) -> StorageError:
        self.injected.append(Injected(fault.kind, op, key, torn))
        action = {"put": "write", "put_many": "write", "delete_temporary": "delete"}.get(op, op)
        if fault.kind == "ENOSPC":
            return storage_error(action, key, OSError(errno.ENOSPC, "No space left on device"))
        if fault.kind == "timeout":
            return StorageError(f"cannot {action} {key}: the operation timed out after 30 s")
        if fault.kind == "short_write":
            return storage_error(action, key, OSError(errno.EIO, "short write (torn object)"))
        return storage_error(action, key, OSError(errno.EIO, "Input/output error"))

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        fault = self._due("get", key)
        if fault is not None:
            raise self._error(fault, "get", key)
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        fault = self._due("exists", key)
        if fault is not None:
            raise self._error(fault, "exists", key)
        return self.inner.exists(key)

    def stat(self, key: str) -> ObjectInfo:
        fault = self._due("stat", key)
        if fault is not None:
            raise self._error(fault, "stat", key)
        return self.inner.stat(key)

    def size(self, key: str) -> int:
        fault = self._due("size", key)
        if fault is not None:
            raise self._error(fault, "size", key)
        return self.inner.size(key)

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        fault = self._due("list_info", prefix)
        if fault is not None:
            raise self._error(fault, "list", prefix)
        return self.inner.list_info(prefix)

    def list(self, prefix: str) -> Iterator[str]:
        fault = self._due("list", prefix)
        if fault is not None:
            raise self._error(fault, "list", prefix)
        return self.inner.list(prefix)

    def list_temporary(self) -> Iterator[ObjectInfo]:
        fault = self._due("list_temporary", "")
        if fault is not None:
            raise self._error(fault, "list", "")
        return self.inner.list_temporary()

    @property
    def location(self) -> str:
        return self.inner.location

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        fault = self._due("put", key)
        if fault is None:
            self.inner.put(key, data, exclusive=exclusive, durable=durable)
            return
        if fault.kind == "timeout":
            self.inner.put(key, data, exclusive=exclusive, durable=durable)
        elif fault.kind == "short_write":
            self._leave_truncated_temp(key, data)
            raise self._error(fault, "put", key, (key,))
        raise self._error(fault, "put", key)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        batch = list(items)
        first = batch[0][0] if batch else ""
        fault = self._due("put_many", first)
        if fault is None:
            self.inner.put_many(batch)
            return
        if fault.kind == "timeout":
            self.inner.put_many(batch)
        elif fault.kind == "short_write" and batch:
            whole, (key, data) = batch[: len(batch) // 2], batch[len(batch) // 2]
            self.inner.put_many(whole)
            self._leave_truncated_temp(key, data)
            raise self._error(fault, "put_many", key, (key,))
        raise self._error(fault, "put_many", first)

    def _leave_truncated_temp(self, key: str, data: bytes) -> None:
        """What an interrupted write leaves behind: half the bytes in a temp file."""
        if isinstance(self.inner, LocalStore):
            directory = self.inner.root.joinpath(*key.split("/")[:-1])
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_temp_file(directory, bytes(data[: len(data) // 2]))

    def move(self, source: str, destination: str) -> None:
        fault = self._due("move", source)
        if fault is None or fault.kind == "timeout":
            self.inner.move(source, destination)
        if fault is not None:
            raise self._error(fault, "move", source)

    def delete(self, key: str, *, durable: bool = True) -> None:
        fault = self._due("delete", key)
        if fault is None or fault.kind == "timeout":
            self.inner.delete(key, durable=durable)
        if fault is not None:
            raise self._error(fault, "delete", key)

    def delete_temporary(self, key: str) -> None:
        fault = self._due("delete_temporary", key)
        if fault is None or fault.kind == "timeout":
            self.inner.delete_temporary(key)
        if fault is not None:
            raise self._error(fault, "delete_temporary", key)
