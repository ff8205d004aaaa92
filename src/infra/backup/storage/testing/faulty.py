"""A fault-injecting :class:`Store` wrapper, for errors a real store can't be made to produce
on demand (disk full, I/O errors, timeouts, torn writes). For tests (kopia's ``faulty.go``).

Usage: run an operation once unarmed to count its write steps (``store.calls["write"]``),
then, on a fresh copy, ``store.arm("EIO", at=k)`` for each step ``k``. Unarmed, the wrapper
passes the store contract (``storage.testing.contract``).

Fault kinds:

``ENOSPC`` / ``EIO``
    The call fails before it reaches the inner store, with the ``StorageError`` that
    ``LocalStore`` raises for that ``OSError``.
``timeout``
    A write reaches the inner store and takes effect, but its answer is lost: a
    ``StorageError`` saying the operation timed out (the ambiguous outcome of a network store).
    A read fails before it reaches the inner store.
``short_write``
    The write stops halfway. Stores never expose a partial object under its key (local: temp
    file + rename; S3: a PUT is atomic), so what a short write really leaves is a truncated
    temporary file: ``put`` leaves one in the key's directory, then ``StorageError``;
    ``put_many`` writes the first half of the batch fully, leaves the next item as a truncated
    temporary file, then fails. Other operations write no bytes: they fail like ``EIO``. (Only
    a :class:`LocalStore` has temporary files; over another store the torn object leaves
    nothing.)
"""

from __future__ import annotations

import builtins
import errno
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from src.infra.backup.errors import StorageError
from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.local import LocalStore, storage_error, write_temp_file
from src.infra.backup.storage.requests import RequestCounter

FaultKind = Literal["ENOSPC", "EIO", "timeout", "short_write"]
FAULT_KINDS: tuple[FaultKind, ...] = ("ENOSPC", "EIO", "timeout", "short_write")
WRITE_OPS = frozenset({"put", "put_many", "move", "delete", "delete_temporary"})
ANY_WRITE = "write"

_T = TypeVar("_T")


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
        self.write_log: builtins.list[tuple[str, str]] = []  # (op, key) of every write call
        self.fault: Fault | None = None
        self.injected: builtins.list[Injected] = []

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

    def _guard(
        self,
        op: str,
        key: str,
        call: Callable[[], _T],
        *,
        label: str | None = None,
        tear: Callable[[], str] | None = None,
    ) -> _T:
        """Count the call of ``op`` on ``key`` and run ``call``, unless it is the one to fail:
        then fail as the fault's kind says (``tear`` does what a short write leaves and names
        the torn key; ``label`` names the operation in the error)."""
        fault = self._due(op, key)
        if fault is None:
            return call()
        name = label or op
        if fault.kind == "timeout" and op in WRITE_OPS:
            call()  # the write happens; only its answer is lost
        elif fault.kind == "short_write" and tear is not None:
            torn = tear()
            raise self._error(fault, name, torn, (torn,))
        raise self._error(fault, name, key)

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
        return self._guard("get", key, lambda: self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._guard("get_range", key, lambda: self.inner.get_range(key, start, length))

    def exists(self, key: str) -> bool:
        return self._guard("exists", key, lambda: self.inner.exists(key))

    def stat(self, key: str) -> ObjectInfo:
        return self._guard("stat", key, lambda: self.inner.stat(key))

    def size(self, key: str) -> int:
        return self._guard("size", key, lambda: self.inner.size(key))

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        return self._guard("list_info", prefix, lambda: self.inner.list_info(prefix), label="list")

    def list(self, prefix: str) -> Iterator[str]:
        return self._guard("list", prefix, lambda: self.inner.list(prefix))

    def list_temporary(self) -> Iterator[ObjectInfo]:
        return self._guard("list_temporary", "", self.inner.list_temporary, label="list")

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def request_counter(self) -> RequestCounter:
        """The inner store's: a wrapper makes no requests of its own."""
        return self.inner.request_counter

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
        def tear() -> str:
            self._leave_truncated_temp(key, data)
            return key

        self._guard(
            "put",
            key,
            lambda: self.inner.put(key, data, exclusive=exclusive, durable=durable),
            tear=tear,
        )

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        batch = builtins.list(items)

        def tear() -> str:
            half = len(batch) // 2
            self.inner.put_many(batch[:half])
            key, data = batch[half]
            self._leave_truncated_temp(key, data)
            return key

        first = batch[0][0] if batch else ""
        self._guard(
            "put_many", first, lambda: self.inner.put_many(batch), tear=tear if batch else None
        )

    def _leave_truncated_temp(self, key: str, data: bytes) -> None:
        """What an interrupted write leaves behind: half the bytes in a temp file."""
        if isinstance(self.inner, LocalStore):
            directory = self.inner.root.joinpath(*key.split("/")[:-1])
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_temp_file(directory, bytes(data[: len(data) // 2]))

    def move(self, source: str, destination: str) -> None:
        self._guard("move", source, lambda: self.inner.move(source, destination))

    def delete(self, key: str, *, durable: bool = True) -> None:
        self._guard("delete", key, lambda: self.inner.delete(key, durable=durable))

    def delete_temporary(self, key: str) -> None:
        self._guard("delete_temporary", key, lambda: self.inner.delete_temporary(key))

    def close(self) -> None:
        """Close the inner store (never a fault: closing writes nothing)."""
        self.inner.close()
