"""What an export reads from and an import writes to: a manager or a repository."""

from __future__ import annotations

from src.infra.backup.app.manager import BackupManager
from src.infra.backup.repository.repository import Repository

Target = BackupManager | Repository
"""A :class:`BackupManager` (its repository is opened) or a :class:`Repository` itself."""


def open_repository(target: Target, *, create: bool) -> Repository:
    """The repository of ``target``; ``create`` lets a manager create it if it is missing."""
    if isinstance(target, Repository):
        return target
    return target.open_repository(create=create)


__all__ = ["Target", "open_repository"]
