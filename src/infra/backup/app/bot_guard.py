"""Is the trading bot running? The ``[backup] bot_pidfile`` check of in-place restores.

Alive means: the PID file exists, holds a PID (first line, decimal), and a process with that
PID exists on this host (``os.kill(pid, 0)``; ``EPERM`` means it exists; a zombie counts as
gone). A missing file means the bot is not running. A file that cannot be read, holds no
PID, or names a process that is gone is "not alive" too, but stale: the check says so in a
warning, since the bot may have died without cleaning up. A PID file naming the calling
process itself is the bot restoring its own files through the API: not refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from src.infra.backup.errors import BotRunningError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BotState:
    """What the PID file says: ``alive`` and the ``pid`` it names, and ``stale`` with why
    (a message) when the file exists but names no running process."""

    pidfile: Path
    alive: bool
    pid: int | None = None
    stale: str | None = None


def bot_state(pidfile: str | os.PathLike[str]) -> BotState:
    """Read ``pidfile`` and check its process (see the module docstring)."""
    path = Path(pidfile)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return BotState(path, alive=False)
    except OSError as exc:
        return BotState(path, alive=False, stale=f"bot PID file {path} cannot be read: {exc}")
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not first.isdigit() or int(first) <= 0:
        return BotState(path, alive=False, stale=f"bot PID file {path} holds no PID")
    pid = int(first)
    if _exists(pid):
        return BotState(path, alive=True, pid=pid)
    return BotState(
        path, alive=False, pid=pid, stale=f"bot PID file {path} is stale: process {pid} is gone"
    )


def refuse_if_bot_running(pidfile: str | os.PathLike[str] | None, action: str) -> BotState | None:
    """Raise :class:`BotRunningError` if the bot named by ``pidfile`` is running as another
    process; log a warning for a stale PID file. ``None`` (no ``bot_pidfile``): no check."""
    if pidfile is None:
        return None
    state = bot_state(pidfile)
    if state.stale:
        log.warning("%s; continuing with %s", state.stale, action)
    if state.alive and state.pid != os.getpid():
        raise BotRunningError(
            f"refusing {action}: the trading bot is running (PID {state.pid}, from "
            f"{state.pidfile}); stop it first, or use --force (force=True) to restore anyway"
        )
    return state


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    except OverflowError:
        return False
    try:  # a zombie (killed, not yet reaped) is not running
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
