"""Hooks: commands run around a backup.

``[backup.hooks]``: :func:`run_hooks` runs the ``before`` commands ahead of every
``create_backup`` (one that fails fails the backup with :class:`HookError`) and the ``after``
commands once the outcome is recorded (a failure is only logged; the environment says how the
backup went, see :func:`outcome_environment`). Commands run in the config file's directory;
how they are started, watched and killed is :mod:`src.infra.backup.files.commands`, which also
runs command sources.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, cast

from src.infra.backup.errors import (
    BackupError,
    HookError,
    InvalidInputError,
)
from src.infra.backup.files.commands import (
    REAP_SECONDS,
    STDERR_TAIL_BYTES,
    OutputPump,
    Watchdog,
    failure_reason,
    kill_process_group,
    start_command,
    start_failure,
    with_stderr_tail,
)
from src.infra.backup.files.settings import HookCommand

log = logging.getLogger(__name__)

Phase = Literal["before", "after"]
_ERROR_ENV_CHARS = 4000
PACKAGE_LOGGER = "src.infra.backup"


# -- processes ---------------------------------------------------------------------------------


# -- hooks -------------------------------------------------------------------------------------


def run_hooks(
    commands: Sequence[HookCommand],
    *,
    phase: Phase,
    timeout: timedelta,
    env: Mapping[str, str] | None = None,
    cwd: Path,
) -> None:
    """Run ``commands`` one after the other in ``cwd``, each within ``timeout``, with ``env``
    added to this process's environment. Their stdout is logged at INFO, their stderr at
    WARNING.

    ``phase="before"``: the first command that fails (non-zero exit status, killed, timed out,
    program not found) raises :class:`HookError` naming the hook, the command, why, and the
    last lines of its stderr; the commands after it do not run. ``phase="after"``: a failure
    is logged as a warning, the next command still runs, and nothing is raised.
    """
    if phase not in ("before", "after"):
        raise InvalidInputError(f"phase must be 'before' or 'after', not {phase!r}")
    for number, command in enumerate(commands, 1):
        label = f"{phase} hook #{number} `{command}`"
        try:
            _run_hook(command, label, timeout=timeout, env=env, cwd=cwd)
        except Exception as exc:
            if phase == "before":
                raise
            log.warning("%s (the backup is not affected)", exc)


def _run_hook(
    command: HookCommand,
    label: str,
    *,
    timeout: timedelta,
    env: Mapping[str, str] | None,
    cwd: Path,
) -> None:
    """Run one hook command to its end; :class:`HookError` if it failed."""
    started = time.monotonic()
    deadline = started + timeout.total_seconds()
    log.info("running %s", label)
    try:
        process = start_command(command, cwd=cwd, env=env)
    except OSError as exc:
        raise HookError(f"{label} failed: {start_failure(exc, command, cwd)}") from None
    watchdog = Watchdog(process, deadline, f"peak-backup {label} watchdog")
    stdout = OutputPump(
        cast(IO[bytes], process.stdout), label=f"{label} stdout", level=logging.INFO, keep=0
    )
    stderr = OutputPump(
        cast(IO[bytes], process.stderr),
        label=f"{label} stderr",
        level=logging.WARNING,
        keep=STDERR_TAIL_BYTES,
    )
    try:
        process.wait()  # the watchdog kills the group at the deadline
        # A background process the command started may hold the pipes until the deadline.
        for pump in (stdout, stderr):
            pump.join(deadline - time.monotonic() + REAP_SECONDS)
    except BaseException:
        kill_process_group(process)
        raise
    finally:
        timed_out = watchdog.cancel()
    reason = failure_reason(
        process.returncode, timed_out=timed_out, timeout=timeout, command=command, stderr=stderr
    )
    if reason is not None:
        raise HookError(with_stderr_tail(f"{label} failed: {reason}", stderr))
    log.info("%s finished in %.1fs", label, time.monotonic() - started)


def outcome_environment(
    *,
    backup_type: str,
    backup_id: str | None,
    error: BaseException | None,
    warnings: int,
    duration_seconds: float,
) -> dict[str, str]:
    """The environment ``after`` hooks get: ``PEAK_BACKUP_OUTCOME`` (``success`` or
    ``failure``), ``PEAK_BACKUP_ID`` (empty on failure), ``PEAK_BACKUP_TYPE``,
    ``PEAK_BACKUP_ERROR`` (the error message, empty on success), ``PEAK_BACKUP_WARNINGS`` (how
    many warnings the backup logged) and ``PEAK_BACKUP_DURATION`` (seconds)."""
    ok = error is None and backup_id is not None
    message = ""
    if isinstance(error, BackupError):
        message = str(error) or type(error).__name__
    elif error is not None:  # not one of ours: say what it was
        message = f"{type(error).__name__}: {error}"
    environment = {
        "PEAK_BACKUP_OUTCOME": "success" if ok else "failure",
        "PEAK_BACKUP_ID": backup_id if ok and backup_id is not None else "",
        "PEAK_BACKUP_TYPE": backup_type,
        "PEAK_BACKUP_ERROR": message[:_ERROR_ENV_CHARS],
        "PEAK_BACKUP_WARNINGS": str(warnings),
        "PEAK_BACKUP_DURATION": f"{duration_seconds:.3f}",
    }
    # A NUL cannot be passed in the environment (e.g. in a refused backup type).
    return {key: value.replace("\0", "\\0") for key, value in environment.items()}


class WarningCounter(logging.Handler):
    """Collects the warnings (and errors) the backup subsystem logs from this thread while
    active (``with WarningCounter() as counter: ...``; see :meth:`total`). Installing it does
    not silence Python's last-resort stderr output for records no other handler takes."""

    def __init__(self, logger: str = PACKAGE_LOGGER) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []
        self._logger = logging.getLogger(logger)
        self._thread = threading.get_ident()

    def total(self, recorded: Sequence[str] = ()) -> int:
        """How many warnings there were: those ``recorded`` (e.g. in the backup's manifest)
        plus those logged that are not among them."""
        known = set(recorded)
        return len(recorded) + sum(1 for message in self.messages if message not in known)

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            try:
                self.messages.append(record.getMessage())
            except (TypeError, ValueError, KeyError):  # a malformed log call: still counted
                self.messages.append(str(record.msg))
        last_resort = logging.lastResort
        if (
            last_resort is not None
            and record.levelno >= last_resort.level
            and not self._others_handle(record)
        ):
            last_resort.handle(record)

    def _others_handle(self, record: logging.LogRecord) -> bool:
        """Whether another handler on the record's way up took it (as ``callHandlers``
        decides whether to fall back to ``logging.lastResort``)."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False

    def __enter__(self) -> WarningCounter:
        self._thread = threading.get_ident()
        self._logger.addHandler(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._logger.removeHandler(self)


# -- command sources ---------------------------------------------------------------------------
