"""Hooks and command sources: commands run around a backup, and commands whose standard output
is stored as one entry.

``[backup.hooks]``: :func:`run_hooks` runs the ``before`` commands ahead of every
``create_backup`` (one that fails fails the backup with :class:`HookError`) and the ``after``
commands once the outcome is recorded (a failure is only logged; the environment says how the
backup went, see :func:`outcome_environment`). ``[[backup.command_sources]]``:
:func:`open_command_source` starts a command and hands its stdout pipe to the caller, which
streams it into the repository; leaving the context checks how the command ended
(:class:`CommandSourceError`).

Every command runs in the config file's directory, with no stdin (``/dev/null``), in a session
(process group) of its own: on a timeout the whole group is killed, so the children of a shell
die with it. A string command is run by ``/bin/sh -c``; a list is an argv, run directly.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO, Literal, cast

from src.infra.backup.app.config import CommandSourceSettings, HookCommand
from src.infra.backup.errors import (
    BackupError,
    CommandSourceError,
    HookError,
    InvalidInputError,
)
from src.infra.backup.policy.retention import format_duration

log = logging.getLogger(__name__)

Phase = Literal["before", "after"]
STDERR_TAIL_BYTES = 64 * 1024  # the end of a command's stderr kept for error messages
MESSAGE_TAIL_LINES = 10  # lines of that tail quoted in an error message
_MESSAGE_LINE_CHARS = 300
_LOG_LINE_CHARS = 4096
_READ_SIZE = 64 * 1024
_REAP_SECONDS = 5.0  # after a kill: how long the pipes may take to close
_ERROR_ENV_CHARS = 4000
PACKAGE_LOGGER = "src.infra.backup"
# How sh (dash: "sh: 1: xyz: not found") and bash ("line 1: xyz: command not found") say it.
_SHELL_NOT_FOUND = re.compile(r"([^\s:]+): (?:command )?not found\s*$", re.MULTILINE)


# -- processes ---------------------------------------------------------------------------------


def _start(
    command: HookCommand, *, cwd: Path, env: Mapping[str, str] | None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session, stdout and stderr as pipes, stdin ``/dev/null``."""
    environment = dict(os.environ)
    if env:
        environment.update(env)
    return subprocess.Popen(
        command.args,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _start_failure(exc: OSError, command: HookCommand, cwd: Path) -> str:
    """Why a command could not be started, naming the program."""
    if isinstance(exc, FileNotFoundError):
        if exc.filename is not None and os.fspath(exc.filename) == os.fspath(cwd):
            return f"working directory not found: {cwd}"
        return f"program not found: {command.program}"
    if isinstance(exc, PermissionError):
        return f"cannot run {command.program}: permission denied"
    return f"cannot start {command.program}: {exc.strerror or exc}"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's whole process group (it leads a session of its own)."""
    with suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(process.pid, signal.SIGKILL)


def _failure(
    returncode: int,
    *,
    timed_out: bool,
    timeout: timedelta,
    command: HookCommand,
    stderr: _OutputPump,
) -> str | None:
    """Why a finished command failed (``None``: it succeeded)."""
    if timed_out:
        return f"timed out after {format_duration(timeout)} (killed)"
    if returncode == 0:
        return None
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    if returncode == 127 and command.uses_shell:
        missing = _SHELL_NOT_FOUND.findall(stderr.text())
        if missing:
            return f"program not found: {missing[-1]} (exit status 127)"
        return "exit status 127: the shell did not find a program (see stderr)"
    return f"exit status {returncode}"


class _Watchdog:
    """Kills a command's process group at ``deadline`` (``time.monotonic()``) unless
    cancelled first; ``fired`` says whether it did."""

    def __init__(self, process: subprocess.Popen[bytes], deadline: float, name: str) -> None:
        self.fired = False
        self._process = process
        self._deadline = deadline
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._cancelled.wait(max(self._deadline - time.monotonic(), 0.0)):
            return
        with self._lock:
            if not self._cancelled.is_set():
                self.fired = True
                _kill_group(self._process)

    def cancel(self) -> bool:
        """Stop watching; returns whether the command was killed."""
        with self._lock:
            self._cancelled.set()
        return self.fired


class _OutputPump:
    """Reads a pipe to its end in a thread: logs each line at ``level`` (``None``: not logged)
    and keeps the last ``keep`` bytes."""

    def __init__(self, pipe: IO[bytes], *, label: str, level: int | None, keep: int) -> None:
        self._pipe = pipe
        self._label = label
        self._level = level
        self._keep = keep
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"peak-backup {label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        partial = b""
        fd = self._pipe.fileno()
        try:
            while chunk := os.read(fd, _READ_SIZE):
                if self._keep:
                    with self._lock:
                        self._tail += chunk
                        del self._tail[: max(len(self._tail) - self._keep, 0)]
                if self._level is not None:
                    *lines, partial = (partial + chunk).split(b"\n")
                    for line in lines:
                        self._log(line)
                    if len(partial) > _LOG_LINE_CHARS:
                        self._log(partial)
                        partial = b""
        except OSError:
            pass  # the pipe broke: nothing more to read
        if partial:
            self._log(partial)

    def _log(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if self._level is not None and text.strip():
            log.log(self._level, "%s: %s", self._label, text[:_LOG_LINE_CHARS])

    def join(self, timeout: float) -> bool:
        """Wait until the pipe is at its end (at most ``timeout`` seconds); then close it."""
        self._thread.join(max(timeout, 0.0))
        if self._thread.is_alive():
            return False  # a process outside the group holds it: leave it to the thread
        self._pipe.close()
        return True

    def text(self) -> str:
        """What was kept, decoded."""
        with self._lock:
            return bytes(self._tail).decode("utf-8", "replace")

    def tail(self) -> str:
        """The last lines kept, indented, for an error message (empty: nothing was written)."""
        lines = [line.rstrip() for line in self.text().splitlines() if line.strip()]
        shown = [
            line if len(line) <= _MESSAGE_LINE_CHARS else line[:_MESSAGE_LINE_CHARS] + "..."
            for line in lines[-MESSAGE_TAIL_LINES:]
        ]
        return "\n".join("  " + line for line in shown)


def _with_stderr(message: str, stderr: _OutputPump) -> str:
    tail = stderr.tail()
    return f"{message}; last lines of stderr:\n{tail}" if tail else message


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
        process = _start(command, cwd=cwd, env=env)
    except OSError as exc:
        raise HookError(f"{label} failed: {_start_failure(exc, command, cwd)}") from None
    watchdog = _Watchdog(process, deadline, f"peak-backup {label} watchdog")
    stdout = _OutputPump(
        cast(IO[bytes], process.stdout), label=f"{label} stdout", level=logging.INFO, keep=0
    )
    stderr = _OutputPump(
        cast(IO[bytes], process.stderr),
        label=f"{label} stderr",
        level=logging.WARNING,
        keep=STDERR_TAIL_BYTES,
    )
    try:
        process.wait()  # the watchdog kills the group at the deadline
        # A background process the command started may hold the pipes until the deadline.
        for pump in (stdout, stderr):
            pump.join(deadline - time.monotonic() + _REAP_SECONDS)
    except BaseException:
        _kill_group(process)
        raise
    finally:
        timed_out = watchdog.cancel()
    reason = _failure(
        process.returncode, timed_out=timed_out, timeout=timeout, command=command, stderr=stderr
    )
    if reason is not None:
        raise HookError(_with_stderr(f"{label} failed: {reason}", stderr))
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


@contextmanager
def open_command_source(
    settings: CommandSourceSettings, cwd: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[BinaryIO]:
    """Start the command of ``settings`` in ``cwd`` and yield its stdout, a pipe to read to
    its end in chunks (nothing is buffered in memory or on disk); its stderr is logged at
    WARNING and its last 64 KiB kept.

    The command is killed (its whole process group) when ``settings.timeout``, counted from
    its start, runs out, also while the caller is blocked reading. Leaving the context
    normally waits for the command and raises :class:`CommandSourceError` (naming the entry,
    the command, the exit status or signal, timeout or missing program, and the last lines of
    stderr) if it did not succeed, or if its output was not read to the end; the caller must
    then discard what it read. If the ``with`` body raises, the command is killed and the
    exception propagates.
    """
    label = f"command source {settings.name!r} `{settings.command}`"
    started = time.monotonic()
    try:
        process = _start(settings.command, cwd=cwd, env=env)
    except OSError as exc:
        raise CommandSourceError(
            f"{label} failed: {_start_failure(exc, settings.command, cwd)}"
        ) from None
    deadline = started + settings.timeout.total_seconds()
    watchdog = _Watchdog(process, deadline, f"peak-backup {label} watchdog")
    stdout = cast(BinaryIO, process.stdout)
    stderr = _OutputPump(
        cast(IO[bytes], process.stderr),
        label=f"command source {settings.name!r} stderr",
        level=logging.WARNING,
        keep=STDERR_TAIL_BYTES,
    )
    log.info("running %s", label)
    try:
        yield stdout
        # b"" at once when the caller read it all (or the command was killed meanwhile).
        unread = not stdout.closed and stdout.read(1) != b""
    except BaseException:
        _kill_group(process)
        watchdog.cancel()
        process.wait()
        stderr.join(_REAP_SECONDS)
        stdout.close()
        raise
    if unread:
        _kill_group(process)
    try:
        process.wait()  # the watchdog kills the group at the deadline
        stderr.join(deadline - time.monotonic() + _REAP_SECONDS)
    except BaseException:
        _kill_group(process)
        raise
    finally:
        timed_out = watchdog.cancel()
        stdout.close()
    reason = _failure(
        process.returncode,
        timed_out=timed_out,
        timeout=settings.timeout,
        command=settings.command,
        stderr=stderr,
    )
    if unread and not timed_out:
        reason = "its output was not read to the end (the command was killed)"
    if reason is not None:
        raise CommandSourceError(_with_stderr(f"{label} failed: {reason}", stderr))
    log.info("%s finished in %.1fs", label, time.monotonic() - started)
