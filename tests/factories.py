"""Workload builders shared by the test files: file trees with exact modes and times, and
managers on throw-away repositories.

Mechanics (running the CLI, a fresh interpreter) live in ``tests/helpers.py``. Builders used
by one file only stay in that file, under a name that says what they build: several files
have a ``trades``, ``state`` or ``config_for`` of their own, each a different workload that
its assertions (chunk counts, dedup ratios, sizes) depend on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from src.infra.backup import BackupConfig, BackupManager

# relative name -> (content, mode, mtime_ns)
FileSpec = tuple[bytes, int, int]


def write_file(path: Path, content: bytes, mode: int, mtime_ns: int) -> None:
    """Write ``content`` to ``path`` (parents created), then set its mode and mtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def write_tree(root: Path, files: Mapping[str, FileSpec]) -> Path:
    """Write every file of ``files`` below ``root`` with its mode and mtime; returns ``root``."""
    for name, (content, mode, mtime_ns) in files.items():
        write_file(root / name, content, mode, mtime_ns)
    return root


def fresh_manager(repo: str | os.PathLike[str], **config: Any) -> BackupManager:
    """A new manager (no caches shared with any other) on ``repo``, retention off unless
    ``config`` says otherwise."""
    values: dict[str, Any] = {"backup_path": repo, "retention_days": 0, **config}
    return BackupManager(BackupConfig(**values))
