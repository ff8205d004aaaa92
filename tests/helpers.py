"""Test mechanics shared by the test files: running the ``peak-backup`` CLI in this process or
as a child process, and running a Python snippet in a fresh interpreter.

``run_cli_inline`` is the default way to run the CLI from a test: it calls the console-script
entry point in this process, with the working directory, environment, stdin, argv and output
streams a child process would have, and it undoes afterwards whatever process-wide state a call
changed (see ``_fresh_process_state``), so calls do not leak into each other or into the test.
``run_cli_process`` starts a real interpreter: use it only where the process is the point
(signals, SIGKILL, a terminal or pipe on stdin, interpreter exit, several processes, the
entry-point scripts themselves). ``tests/test_cli_inline.py`` checks that both give the same
result, and ``PEAK_TEST_CLI_IN_CHILD=1 pytest ...`` runs every ``run_cli_inline`` call in a
child process instead (tests that patch the CLI's internals from the test, as
``test_gc``'s ``--retry-lock`` test does, cannot pass that way).

Workload builders (trees, states, configs) live in ``tests/factories.py``.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal, overload

import click.formatting
from click.testing import CliRunner as _ClickRunner

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAIN_SCRIPT = PROJECT_ROOT / "src" / "infra" / "backup" / "__main__.py"
CONFIG_ENV = "PEAK_TRADE_CONFIG_PATH"
# Read once, when the package is imported: a child process is needed to change them.
IMPORT_TIME_ENV = frozenset({"PEAK_BACKUP_HOST"})
# Set (to anything but "" or "0"), every run_cli_inline call runs in a child process
# instead: the tests then show that none of them depends on running in this process, and
# how much time the in-process runner saves.
IN_CHILD_ENV = "PEAK_TEST_CLI_IN_CHILD"
# A thread the CLI started and left running is waited for this long before the call fails
# (a child process would have ended it at exit; this process cannot).
LEFTOVER_THREAD_WAIT = 60.0

CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI child process: ours, minus the config path, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != CONFIG_ENV}
    env.setdefault("COLUMNS", "200")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def run_cli_process(
    *args: str,
    cwd: str | os.PathLike[str],
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python <repo>/src/infra/backup/__main__.py *args`` (or ``command + args``) as a
    child process. ``input=None`` gives the child an empty stdin (a pipe), never the test's."""
    argv = [*(command or [sys.executable, str(MAIN_SCRIPT)]), *args]
    return subprocess.run(
        argv,
        cwd=cwd,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=timeout,
        check=False,
    )


@overload
def run_cli_inline(
    *args: str,
    cwd: str | os.PathLike[str],
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    text: Literal[True] = True,
) -> subprocess.CompletedProcess[str]: ...


@overload
def run_cli_inline(
    *args: str,
    cwd: str | os.PathLike[str],
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    text: Literal[False],
) -> subprocess.CompletedProcess[bytes]: ...


def run_cli_inline(
    *args: str,
    cwd: str | os.PathLike[str],
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run ``peak-backup *args`` in this process, as ``run_cli_process`` would in a child.

    The console-script entry point runs with ``sys.argv``, the working directory ``cwd``, the
    environment of :func:`cli_env` (plus ``env``) and ``input`` on stdin (empty by default, not
    a terminal); its exit status becomes ``returncode`` exactly as the interpreter would make
    it, and an unexpected exception prints its traceback on ``stderr`` with status 1. stdout
    and stderr are captured separately (``text=False``: as bytes).

    With ``$PEAK_TEST_CLI_IN_CHILD`` set, the call runs in a child process instead.
    """
    extra = dict(env or {})
    if IMPORT_TIME_ENV & extra.keys():
        raise ValueError(
            f"{sorted(IMPORT_TIME_ENV & extra.keys())} are read at import: use run_cli_process"
        )
    if os.environ.get(IN_CHILD_ENV, "") not in ("", "0"):
        data = input if input is not None else ""
        if text and isinstance(data, bytes):
            data = data.decode()
        elif not text and isinstance(data, str):
            data = data.encode()
        return subprocess.run(
            [sys.executable, str(MAIN_SCRIPT), *map(str, args)],
            cwd=cwd,
            input=data,
            capture_output=True,
            text=text,
            env=cli_env(extra),
            timeout=120,
            check=False,
        )
    overrides: dict[str, str | None] = {CONFIG_ENV: None}
    if "COLUMNS" not in os.environ:
        overrides["COLUMNS"] = "200"
    overrides.update(extra)
    argv = [str(MAIN_SCRIPT), *map(str, args)]
    runner = _ClickRunner()
    with (
        runner.isolation(input=input, env=overrides, color=False) as (out, err, _mixed),
        _fresh_process_state(argv, cwd),
    ):
        status = _run_entry_point()
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue(), err.getvalue()
    if text:
        return subprocess.CompletedProcess(argv, status, _decode(stdout), _decode(stderr))
    return subprocess.CompletedProcess(argv, status, stdout, stderr)


def _decode(data: bytes) -> str:
    """Like ``subprocess.run(text=True)``: UTF-8 with universal newlines."""
    return data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def _run_entry_point() -> int:
    """Run ``entry_point()`` and what an interpreter does when the script ends: wait for the
    non-daemon threads, run the exit handlers registered meanwhile; returns the exit status.

    Daemon threads the call started (a background prune, output pumps) die with a child
    process; here they are waited for instead, and idle thread pools the call dropped are
    collected (their workers end), so nothing runs on into the next call. A thread still
    running after ``LEFTOVER_THREAD_WAIT`` seconds (an off-site replicator, a pool still
    referenced) fails the call rather than hanging it: such a test needs
    ``run_cli_process``."""
    from src.infra.backup.cli import entry_point

    handlers: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def register(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        handlers.append((func, args, kwargs))
        return func

    def unregister(func: Callable[..., Any]) -> None:
        handlers[:] = [h for h in handlers if h[0] != func]

    threads_before = set(threading.enumerate())
    saved = atexit.register, atexit.unregister
    atexit.register, atexit.unregister = register, unregister  # type: ignore[assignment]
    try:
        try:
            entry_point()
            status = 0
        except SystemExit as exc:
            status = _exit_status(exc.code)
        except BaseException:
            traceback.print_exc()
            status = 1
        started = [t for t in threading.enumerate() if t not in threads_before]
        deadline = time.monotonic() + LEFTOVER_THREAD_WAIT
        for thread in started:
            if not thread.daemon:
                thread.join(max(deadline - time.monotonic(), 0))
        for func, args, kwargs in reversed(handlers):  # atexit runs them last-in, first-out
            try:
                func(*args, **kwargs)
            except BaseException:
                print(f"Exception ignored in atexit callback {func!r}:", file=sys.stderr)
                traceback.print_exc()
    finally:
        atexit.register, atexit.unregister = saved  # type: ignore[assignment]
    if any(thread.is_alive() for thread in started):
        gc.collect()  # an unreachable ThreadPoolExecutor wakes its workers to end
    for thread in started:
        thread.join(max(deadline - time.monotonic(), 0))
    running = [t.name for t in started if t.is_alive()]
    if running:
        raise RuntimeError(f"the CLI left threads running {running}: use run_cli_process")
    return status


def _exit_status(code: object) -> int:
    """The process exit status ``sys.exit(code)`` gives."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


@contextmanager
def _fresh_process_state(argv: list[str], cwd: str | os.PathLike[str]) -> Iterator[None]:
    """Inside a ``CliRunner.isolation`` (streams and environment): make the rest of the
    process look like a new interpreter for the CLI, and restore everything afterwards."""
    with ExitStack() as stack:
        # click's own width logic ($COLUMNS, at most 80), not CliRunner's fixed 80 columns
        click.formatting.FORCED_WIDTH = None  # CliRunner.isolation restores it
        saved_argv = sys.argv
        sys.argv = argv
        stack.callback(setattr, sys, "argv", saved_argv)
        saved_cwd = os.getcwd()
        os.chdir(cwd)
        stack.callback(os.chdir, saved_cwd)
        stack.enter_context(_fresh_logging())
        stack.enter_context(_fresh_consoles())
        stack.enter_context(_restored_signal_handlers())
        stack.enter_context(_fresh_module_state())
        yield


@contextmanager
def _fresh_logging() -> Iterator[None]:
    """No handlers and level WARNING on the root logger, our loggers at NOTSET (as in a new
    interpreter); afterwards the test's handlers and levels come back and the handler the
    CLI installed on its (captured) stderr goes."""
    root = logging.getLogger()
    ours = [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("src") and isinstance(logger, logging.Logger)
    ]
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {logger: logger.level for logger in ours}
    saved_disable = logging.root.manager.disable
    root.handlers = []
    root.setLevel(logging.WARNING)
    logging.disable(logging.NOTSET)
    for logger in ours:
        logger.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        logging.disable(saved_disable)
        for name, logger in logging.root.manager.loggerDict.items():
            if name.startswith("src") and isinstance(logger, logging.Logger):
                logger.setLevel(saved_levels.get(logger, logging.NOTSET))


@contextmanager
def _fresh_consoles() -> Iterator[None]:
    """The CLI's rich consoles as a child process would build them: built again on first use
    with the captured streams and this call's environment ($COLUMNS, $NO_COLOR, ...), and
    forgotten again afterwards."""
    from src.infra.backup.cli.output import reset_consoles

    reset_consoles()
    try:
        yield
    finally:
        reset_consoles()


# Process-wide signals the CLI may handle (the `run` daemon installs SIGTERM/SIGINT handlers).
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@contextmanager
def _restored_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if signal.getsignal(sig) is not handler and handler is not None:
                signal.signal(sig, handler)


@contextmanager
def _fresh_module_state() -> Iterator[None]:
    """Caches and registries that live for a process start empty for the call, and what the
    call put in them is gone afterwards: unlocked keys, the default managers, exclusive locks
    this process holds (a lock left held is then stale, as a dead process's would be), and
    the once-per-process restore-temp sweeps."""
    from src.infra.backup.app import manager, recovery
    from src.infra.backup.files import restore_temp
    from src.infra.backup.format import crypto
    from src.infra.backup.repository import locks

    saved_keys = dict(crypto._cache)
    saved_swept = dict(restore_temp._swept)
    saved_held = dict(locks._held_here)
    saved_defaults = manager._default_manager, recovery._default_recovery
    crypto.clear_key_cache()
    restore_temp._swept.clear()
    manager._default_manager = recovery._default_recovery = None
    try:
        yield
    finally:
        crypto.clear_key_cache()
        with crypto._cache_lock:
            crypto._cache.update(saved_keys)
        restore_temp._swept.clear()
        restore_temp._swept.update(saved_swept)
        for key in set(locks._held_here) - set(saved_held):
            locks._held_here.pop(key, None)
        manager._default_manager, recovery._default_recovery = saved_defaults


# -- a fresh interpreter -------------------------------------------------------------------------


def run_python(
    script: str,
    *args: str,
    cwd: str | os.PathLike[str] = PROJECT_ROOT,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c script *args`` in a new interpreter (our environment, ``cwd`` the
    project root): for what only a fresh process shows (modules not imported, a missing
    optional dependency, a crash of the interpreter, what happens at its exit)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
