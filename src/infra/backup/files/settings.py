"""What the file side takes from the configuration, as plain values: the sources and how they
are read (:class:`SourceSettings`, :class:`SqliteOptions`), and the commands of hooks and
command sources (:class:`HookCommand`, :class:`CommandSourceSettings`). No I/O.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class SqliteOptions:
    """How databases among the sources are captured: detection on or off, and the check run
    on every copy (``quick``: ``PRAGMA quick_check``, ``full``: ``integrity_check``)."""

    detect: bool = True
    check: Literal["quick", "full"] = "quick"


@dataclass(frozen=True)
class SourceSettings:
    """What the file side needs of the configuration: the sources (relative to
    ``source_root``), the exclude patterns, whether secrets may be stored, the directories
    never backed up (the repository's own), and how databases are captured."""

    sources: Sequence[str]
    source_root: Path
    exclude: Sequence[str] = ()
    include_secrets: bool = False
    own_directories: tuple[Path, ...] = ()
    sqlite: SqliteOptions = field(default_factory=SqliteOptions)


@dataclass(frozen=True)
class HookCommand:
    """One command of a hook or command source: a string is run by ``/bin/sh -c``, a tuple
    is an argv run directly (no shell). Whether the program exists is checked when it runs."""

    command: str | tuple[str, ...]

    @property
    def uses_shell(self) -> bool:
        """Whether the command is shell text (run by ``/bin/sh -c``)."""
        return isinstance(self.command, str)

    @property
    def args(self) -> list[str]:
        """What is executed: ``["/bin/sh", "-c", text]`` or the argv."""
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)

    @property
    def program(self) -> str:
        """The program started: ``/bin/sh`` for shell text, else ``argv[0]``."""
        return self.args[0]

    def __str__(self) -> str:
        if isinstance(self.command, str):
            return self.command
        return shlex.join(self.command)


@dataclass(frozen=True)
class CommandSourceSettings:
    """One ``[[backup.command_sources]]``: ``command``'s standard output is stored as the
    entry ``name`` (a safe relative path); the command must finish within ``timeout``."""

    name: str
    command: HookCommand
    timeout: timedelta = timedelta(hours=1)
