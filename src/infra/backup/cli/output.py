"""Output helpers shared by the commands: the consoles, sizes, JSON, a delayed progress display.

rich is imported when a console is first used, not when the CLI starts: ``--json`` output and
quick commands never pay for it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Literal

import click
import msgspec

from src.infra.backup.app.backup_info import BackupInfo
from src.infra.backup.cli.context import Context

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


class LazyConsole:
    """A rich ``Console`` built on first use (for the streams and environment of that
    moment); every attribute is the console's."""

    def __init__(self, *, to_stderr: bool) -> None:
        self._to_stderr = to_stderr
        self._console: Console | None = None

    def get(self) -> Console:
        """The console, built now if it was not yet."""
        if self._console is None:
            from rich.console import Console

            if self._to_stderr:
                self._console = Console(stderr=True, soft_wrap=True)
            else:
                # Output to a pipe or file need not fit 80 columns: keep table rows on one line.
                width = None if sys.stdout.isatty() else 160
                self._console = Console(soft_wrap=True, width=width)
        return self._console

    def reset(self) -> None:
        """Forget the console: the next use builds a new one (for new streams)."""
        self._console = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


stdout = LazyConsole(to_stderr=False)
stderr = LazyConsole(to_stderr=True)


def reset_consoles() -> None:
    """Build both consoles again on next use (after stdout/stderr were replaced)."""
    stdout.reset()
    stderr.reset()


def human_size(size: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def info_json(info: BackupInfo) -> dict[str, Any]:
    """A backup's metadata for ``--json`` output."""
    return {
        "backup_id": info.backup_id,
        "backup_type": info.backup_type,
        "timestamp": info.timestamp.isoformat(),
        "timestamp_utc": info.timestamp_utc.isoformat(),
        "size_bytes": info.size_bytes,
        "logical_bytes": info.logical_bytes,
        "added_bytes": info.added_bytes,
        "compressed": info.compressed,
        "files": info.files,
        "tags": info.tags,
        "note": info.note,
        "host": info.host,
        "warnings": info.warnings,
    }


def emit_json(payload: Any) -> None:
    """Print one JSON document on stdout (UTF-8, indented; msgspec's C encoder: ``list
    --json`` of 100,000 backups is a 39 MB document)."""
    click.echo(msgspec.json.format(msgspec.json.encode(payload), indent=2).decode())


def text_table(
    title: str, headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: frozenset[int]
) -> str:
    """A plain table with aligned columns (those numbered in ``right`` right-aligned): for
    listings too long for a rich table, which takes a third of a millisecond per row."""
    rows = list(rows)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    line = "  ".join(
        f"{{:{'>' if i in right else '<'}{width}}}" for i, width in enumerate(widths)
    ).format
    rule = "  ".join("-" * width for width in widths)
    lines = [line(*cells).rstrip() for cells in [headers, *rows]]
    return "\n".join([title, lines[0], rule, *lines[1:], rule])


#: Seconds of work before the progress bar appears (quick commands never flash one).
BAR_DELAY = 1.0
#: Seconds between two ``--json`` status lines (at most 4 a second).
JSON_INTERVAL = 0.25


class ProgressReporter:
    """The progress callback a command hands to the lower layers: ``reporter(n)`` adds ``n``
    bytes done (thread-safe: restores and verifies report from worker threads);
    ``reporter.set_total(n)`` says how many bytes the work has, when that becomes known.

    It drives a rich bar on stderr (a terminal, no ``--json``), ``--json`` status lines on
    stderr (restic's ``--json`` status messages: see README "Progress"), or nothing."""

    def __init__(
        self, action: str, mode: Literal["bar", "json", "quiet"], total: int | None
    ) -> None:
        self.action = action
        self.mode = mode
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_line = float("-inf")
        self._last_fraction = 0.0
        self._bar: Progress | None = None
        self._task: Any = None
        self._timer: threading.Timer | None = None
        self._closed = False

    def __call__(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            if self.mode == "json":
                now = time.monotonic()
                if now - self._last_line >= JSON_INTERVAL:
                    self._last_line = now
                    self._json_line(now, final=False)
            elif self._bar is not None:
                self._bar.update(self._task, completed=self.done)

    def set_total(self, total: int | None) -> None:
        """The bytes the whole work has (``None``: unknown)."""
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.update(self._task, total=total)

    def start(self) -> None:
        if self.mode == "json":
            with self._lock:
                self._last_line = time.monotonic()
                self._json_line(self._last_line, final=False)
        elif self.mode == "bar":
            if BAR_DELAY <= 0:
                self._show_bar()
            else:
                self._timer = threading.Timer(BAR_DELAY, self._show_bar)
                self._timer.daemon = True
                self._timer.start()

    def finish(self, *, succeeded: bool) -> None:
        """Stop the bar; with ``--json`` and success, print the final (100 %) line."""
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._closed = True
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            if self.mode == "json" and succeeded:
                if self.total is None or self.total < self.done:
                    self.total = self.done
                self._json_line(time.monotonic(), final=True)

    def _show_bar(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with self._lock:
            if self._closed or self._bar is not None:
                return
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=stderr.get(),
                transient=True,
            )
            self._task = self._bar.add_task(self.action, total=self.total, completed=self.done)
            self._bar.start()

    def _json_line(self, now: float, *, final: bool) -> None:
        elapsed = now - self.started
        total = self.total
        fraction = None
        remaining = None
        if total:
            fraction = 1.0 if final else min(self.done / total, 1.0)
            if self.done and not final:
                remaining = round(elapsed * (total - min(self.done, total)) / self.done, 1)
        elif total == 0 or final:
            fraction = 1.0 if final else None
        if fraction is not None:  # never backwards, even when the total grew meanwhile
            fraction = max(round(fraction, 4), self._last_fraction)
            self._last_fraction = fraction
        line: dict[str, Any] = {
            "message_type": "status",
            "action": self.action,
            "seconds_elapsed": round(elapsed, 3),
            "bytes_done": self.done,
            "total_bytes": total,
            "percent_done": fraction,
            "seconds_remaining": 0.0 if final else remaining,
        }
        if final:
            line["done"] = True
        sys.stderr.write(msgspec.json.encode(line).decode() + "\n")
        sys.stderr.flush()


@contextmanager
def progress_bar(
    ctx: Context, action: str, *, total: int | None = None, json_lines: bool = True
) -> Iterator[ProgressReporter]:
    """A :class:`ProgressReporter` for one long command: a rich bar (bytes done, total when
    known, rate, ETA) on stderr when it is a terminal and not ``--json``, once the work
    takes longer than :data:`BAR_DELAY`; with ``--json`` (and ``json_lines``), JSON status
    lines on stderr, at most 4 a second, a first one at once and a final one (100 %) when
    the work succeeded; otherwise nothing."""
    mode: Literal["bar", "json", "quiet"]
    if ctx.as_json:
        mode = "json" if json_lines else "quiet"
    else:
        mode = "bar" if stderr.is_terminal else "quiet"
    reporter = ProgressReporter(action, mode, total)
    reporter.start()
    succeeded = False
    try:
        yield reporter
        succeeded = True
    finally:
        reporter.finish(succeeded=succeeded)


def delayed_progress(ctx: Context, description: str) -> AbstractContextManager[ProgressReporter]:
    """The bar of :func:`progress_bar` without ``--json`` status lines (prune, import,
    migrate)."""
    return progress_bar(ctx, description, json_lines=False)
