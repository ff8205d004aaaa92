"""A test kit for stores (restic's ``internal/backend/test``, kopia's ``blobtesting``).

- :mod:`.contract`: ``StoreContract``, the pytest suite every backend passes; a backend's
  test module subclasses it with a ``make_store`` factory. It imports pytest, so it is not
  imported here: ``from src.infra.backup.storage.testing.contract import StoreContract``.
- :mod:`.faulty`: :class:`FaultyStore`, a wrapper that injects disk-full, I/O, timeout and
  torn-write faults at a chosen call.
- :mod:`.eventual`: :class:`EventualStore`, a wrapper whose listings (and optionally reads)
  lag writes and deletes.
- :mod:`.delegating`: :class:`DelegatingStore`, a wrapper that forwards every call: the base
  of test and benchmark stores that count a few of them.

For an in-memory store see :class:`src.infra.backup.storage.memory.MemoryStore`. Nothing in
the backup engine imports this package.
"""

from src.infra.backup.storage.testing.delegating import DelegatingStore
from src.infra.backup.storage.testing.eventual import EventualStore, PendingChange
from src.infra.backup.storage.testing.faulty import (
    FAULT_KINDS,
    Fault,
    FaultKind,
    FaultyStore,
    Injected,
)

__all__ = [
    "FAULT_KINDS",
    "DelegatingStore",
    "EventualStore",
    "Fault",
    "FaultKind",
    "FaultyStore",
    "Injected",
    "PendingChange",
]
