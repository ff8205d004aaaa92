"""Commands run by the backup: starting them in a session of their own, watching their deadline,
pumping their output, saying why they failed; and command sources, whose standard output is
stored as one entry (:func:`open_command_source`).

Every command runs with no stdin (``/dev/null``), in a process group of its own: on a timeout
the whole group is killed, so the children of a shell die with it. A string command is run by
``/bin/sh -c``; a list is an argv, run directly. Knows nothing of configuration files: the
application layer builds :class:`HookCommand` and :class:`CommandSourceSettings`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import IO, BinaryIO, cast

from src.infra.backup.errors import (
    CommandSourceError,
)
from src.infra.backup.files.settings import CommandSourceSettings, HookCommand
from src.infra.backup.format.durations import format_duration

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 64 * 1024  # the end of a command's stderr kept for error messages
MESSAGE_TAIL_LINES = 10  # lines of that tail quoted in an error message
_MESSAGE_LINE_CHARS = 300
_LOG_LINE_CHARS = 4096
_READ_SIZE = 64 * 1024
REAP_SECONDS = 5.0  # after a kill: how long the pipes may take to close


# How sh (dash: "sh: 1: xyz: not found") and bash ("line 1: xyz: command not found") say it.
_SHELL_NOT_FOUND = re.compile(r"([^\s:]+): (?:command )?not found\s*$", re.MULTILINE)


def start_command(
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


def start_failure(exc: OSError, command: HookCommand, cwd: Path) -> str:
    """Why a command could not be started, naming the program."""
    if isinstance(exc, FileNotFoundError):
        if exc.filename is not None and os.fspath(exc.filename) == os.fspath(cwd):
            return f"working directory not found: {cwd}"
        return f"program not found: {command.program}"
    if isinstance(exc, PermissionError):
        return f"cannot run {command.program}: permission denied"
    return f"cannot start {command.program}: {exc.strerror or exc}"


def kill_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's whole process group (it leads a session of its own)."""
    with suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(process.pid, signal.SIGKILL)


def failure_reason(
    returncode: int,
    *,
    timed_out: bool,
    timeout: timedelta,
    command: HookCommand,
    stderr: OutputPump,
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


class Watchdog:
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
                kill_process_group(self._process)

    def cancel(self) -> bool:
        """Stop watching; returns whether the command was killed."""
        with self._lock:
            self._cancelled.set()
        return self.fired


class OutputPump:
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


def with_stderr_tail(message: str, stderr: OutputPump) -> str:
    tail = stderr.tail()
    return f"{message}; last lines of stderr:\n{tail}" if tail else message


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
        process = start_command(settings.command, cwd=cwd, env=env)
    except OSError as exc:
        raise CommandSourceError(
            f"{label} failed: {start_failure(exc, settings.command, cwd)}"
        ) from None
    deadline = started + settings.timeout.total_seconds()
    watchdog = Watchdog(process, deadline, f"peak-backup {label} watchdog")
    stdout = cast(BinaryIO, process.stdout)
    stderr = OutputPump(
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
        kill_process_group(process)
        watchdog.cancel()
        process.wait()
        stderr.join(REAP_SECONDS)
        stdout.close()
        raise
    if unread:
        kill_process_group(process)
    try:
        process.wait()  # the watchdog kills the group at the deadline
        stderr.join(deadline - time.monotonic() + REAP_SECONDS)
    except BaseException:
        kill_process_group(process)
        raise
    finally:
        timed_out = watchdog.cancel()
        stdout.close()
    reason = failure_reason(
        process.returncode,
        timed_out=timed_out,
        timeout=settings.timeout,
        command=settings.command,
        stderr=stderr,
    )
    if unread and not timed_out:
        reason = "its output was not read to the end (the command was killed)"
    if reason is not None:
        raise CommandSourceError(with_stderr_tail(f"{label} failed: {reason}", stderr))
    log.info("%s finished in %.1fs", label, time.monotonic() - started)
