"""Storage backends: one :class:`Store` interface over a flat key space of immutable objects."""

from src.infra.backup.storage.base import ObjectInfo, Store
from src.infra.backup.storage.local import LocalStore

__all__ = ["LocalStore", "ObjectInfo", "Store"]
