"""The ``peak-backup`` command line: create, list, show, restore, delete, verify.

Every command takes ``--json`` for scripts. Exit codes: 0 ok, 1 error, 2 usage, 3 not found,
4 integrity failure, 5 repository busy, 6 configuration error, 7 cancelled (no confirmation),
8 wrong or missing passphrase, 9 stale or failing (``status``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from src.infra.backup._version import __version__
from src.infra.backup.app.config import load_backup_config
from src.infra.backup.app.manager import BackupInfo, BackupManager
from src.infra.backup.app.recovery import RecoveryManager
from src.infra.backup.errors import (
    BackupError,
    BackupNotFoundError,
    IntegrityError,
    InvalidInputError,
)
from src.infra.backup.files.in_place import OVERWRITE_CHOICES
from src.infra.backup.format.crypto import AEAD_ALGORITHMS, DEFAULT_AEAD, read_passphrase
from src.infra.backup.format.durations import parse_duration
from src.infra.backup.format.layout import REPO_KEY
from src.infra.backup.format.manifest import Entry
from src.infra.backup.monitoring.logging_setup import configure_logging
from src.infra.backup.policy.point_in_time import select_between
from src.infra.backup.policy.retention import Decision
from src.infra.backup.repository.check import CheckReport

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTEGRITY = 4
EXIT_BUSY = 5
EXIT_CONFIG = 6
EXIT_CANCELLED = 7
EXIT_PASSPHRASE = 8
EXIT_WARNINGS = 10  # the backup was made, with warnings (restic uses 3, which is "not found" here)

_F = TypeVar("_F", bound=Callable[..., Any])
# Output to a pipe or file need not fit 80 columns: keep table rows on one line there.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, soft_wrap=True)


class Context:
    """Shared state of one invocation: the config file and the output mode."""

    def __init__(
        self, config_path: str | None, as_json: bool, password_file: str | None = None
    ) -> None:
        self.config_path = config_path
        self.password_file = password_file
        self.as_json = as_json
        self.confirm_new_passphrase = False
        self._manager: BackupManager | None = None
        self._passphrase: str | None = None

    def passphrase(self) -> str:
        """The repository passphrase, read once (environment, password file, or prompt)."""
        if self._passphrase is None:
            config = self.manager.config
            self._passphrase = read_passphrase(
                password_file=self.password_file or config.password_file,
                confirm=self.confirm_new_passphrase,
            )
        return self._passphrase

    @property
    def manager(self) -> BackupManager:
        if self._manager is None:
            self._manager = BackupManager(
                load_backup_config(self.config_path), passphrase=self.passphrase
            )
        return self._manager

    @property
    def recovery(self) -> RecoveryManager:
        return RecoveryManager(self.manager)


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
    """Print one JSON document on stdout."""
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def _json_option(func: _F) -> _F:
    """``--json`` and ``--password-file`` on every command (also accepted before the
    command name)."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Context).as_json = True  # type: ignore[union-attr]

    def set_password_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.find_object(Context).password_file = value  # type: ignore[union-attr]

    func = click.option(
        "--password-file",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=set_password_file,
        is_eager=True,
        help="Read the passphrase of an encrypted repository from this file.",
    )(func)
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        is_eager=True,
        help="Print machine-readable JSON.",
    )(func)


@contextmanager
def delayed_progress(ctx: Context, description: str) -> Iterator[Callable[[int], None]]:
    """A progress callback that shows a spinner with bytes done once work exceeds a second."""
    started = time.monotonic()
    done = 0
    progress: Progress | None = None
    task = None
    show = not ctx.as_json and stderr.is_terminal

    def update(amount: int) -> None:
        nonlocal done, progress, task
        done += amount
        if not show:
            return
        if progress is None and time.monotonic() - started > 1.0:
            progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=stderr,
                transient=True,
            )
            progress.start()
            task = progress.add_task(description)
        if progress is not None and task is not None:
            progress.update(task, description=f"{description} ({human_size(done)})")

    try:
        yield update
    finally:
        if progress is not None:
            progress.stop()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="peak-backup")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $PEAK_TRADE_CONFIG_PATH, ./config.toml, ./config/config.toml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the passphrase of an encrypted repository from this file (first line).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also log what each step does.")
@click.option("--log-json", is_flag=True, help="Write log lines as JSON objects (on stderr).")
@click.pass_context
def main(
    ctx: click.Context,
    config_path: str | None,
    as_json: bool,
    password_file: str | None,
    verbose: bool,
    log_json: bool,
) -> None:
    """Peak-Trade backup and recovery."""
    configure_logging(logging.INFO if verbose else logging.WARNING, json_format=log_json)
    ctx.obj = Context(config_path, as_json, password_file)


def _parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--tag {item!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


@main.command()
@click.option(
    "--type",
    "backup_type",
    default="manual",
    show_default=True,
    help="Backup type (e.g. manual, pre_trade, scheduled).",
)
@click.option(
    "--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Attach a tag (repeatable)."
)
@click.option("--note", default=None, help="A free-text note.")
@_json_option
@click.pass_obj
def create(ctx: Context, backup_type: str, tags: tuple[str, ...], note: str | None) -> None:
    """Back up the configured sources ([backup] sources)."""
    manager = ctx.manager
    if not manager.config.has_file_sources:
        raise InvalidInputError(
            "nothing to back up: no [backup] sources are configured "
            '(add e.g. sources = ["config.toml", "live_runs/"] to config.toml)'
        )
    with delayed_progress(ctx, "backing up") as progress:
        backup_id = manager.create_backup(
            None,
            backup_type,
            tags=_parse_tags(tags),
            note=note,
            include_files=True,
            progress=progress,
        )
    info = manager.get_backup_info(backup_id)
    if ctx.as_json:
        emit_json(info_json(info))
    else:
        stdout.print(
            f"Backup created: [bold]{backup_id}[/bold] ({len(info.files)} files, "
            f"{human_size(info.logical_bytes)}, {human_size(info.added_bytes)} new)"
        )
    if info.warnings:
        # Each warning was logged on stderr as it happened; say what they mean for the backup.
        stderr.print(
            f"[yellow]warning:[/yellow] backup {backup_id} was made with "
            f"{len(info.warnings)} warning(s): "
            + "; ".join(info.warnings[:3])
            + (" ..." if len(info.warnings) > 3 else ""),
            highlight=False,
        )
        raise SystemExit(EXIT_WARNINGS)


@main.command(name="list")
@click.option("--type", "backup_type", default=None, help="Only backups of this type.")
@click.option(
    "--since",
    default=None,
    metavar="TIME",
    help="Only backups taken at or after TIME ('2025-12-17 10:00', ISO; local time unless "
    "a zone is given).",
)
@click.option(
    "--until",
    default=None,
    metavar="TIME",
    help="Only backups taken at or before TIME (inclusive: a time to the second covers that "
    "second, a date alone its whole day).",
)
@_json_option
@click.pass_obj
def list_command(
    ctx: Context, backup_type: str | None, since: str | None, until: str | None
) -> None:
    """List backups, newest first."""
    backups = select_between(ctx.manager.list_backups(backup_type), since, until)
    if ctx.as_json:
        emit_json([info_json(info) for info in backups])
        return
    if not backups:
        within = " in that time range" if since or until else ""
        stdout.print(f"No backups{within} in {ctx.manager.config.repository_location}")
        return
    table = Table(title=f"Backups in {ctx.manager.config.repository_location}")
    # Ids and times never wrap, so they can be copied even at 80 columns; the rest may.
    id_width = max(len(info.backup_id) for info in backups)
    table.add_column("ID", no_wrap=True, min_width=id_width)
    table.add_column("Type", overflow="fold")
    table.add_column("Time (local)", no_wrap=True)
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("New", justify="right")
    table.add_column("Entries", justify="right")
    with_tags = any(info.tags for info in backups)
    if with_tags:
        table.add_column("Tags", overflow="fold")
    for info in backups:
        table.add_row(
            info.backup_id,
            info.backup_type,
            f"{info.timestamp:%Y-%m-%d %H:%M:%S}",
            human_size(info.size_bytes),
            human_size(info.added_bytes),
            str(len(info.files)),
            *([", ".join(f"{k}={v}" for k, v in info.tags.items())] if with_tags else []),
        )
    stdout.print(table)


@main.command()
@click.argument("backup_id")
@_json_option
@click.pass_obj
def show(ctx: Context, backup_id: str) -> None:
    """Show a backup's metadata and entries."""
    manifest = ctx.manager.repository.read_manifest(backup_id)
    info = BackupInfo.from_manifest(manifest)
    entries = [
        {
            "name": e.name,
            "kind": e.kind,
            "size": e.size,
            "path": e.path,
            "mode": oct(e.mode) if e.mode is not None else None,
            "mtime": datetime.fromtimestamp(e.mtime_ns / 1e9).isoformat() if e.mtime_ns else None,
            "target": e.target,
            "origin": e.origin,
            "database": e.origin == "sqlite",
            "changed": e.changed,
            "uid": e.uid,
            "gid": e.gid,
        }
        for e in manifest.entries
    ]
    if ctx.as_json:
        emit_json(
            {
                **info_json(info),
                "parent": manifest.parent,
                "compression": manifest.compression,
                "entries": entries,
            }
        )
        return
    stdout.print(f"[bold]{info.backup_id}[/bold]  type {info.backup_type}  host {info.host}")
    stdout.print(
        f"time      {info.timestamp:%Y-%m-%d %H:%M:%S} local ({info.timestamp_utc.isoformat()})"
    )
    stdout.print(
        f"size      {human_size(info.logical_bytes)} restored, "
        f"{human_size(info.size_bytes)} stored, {human_size(info.added_bytes)} new "
        f"({manifest.compression})"
    )
    if info.tags:
        stdout.print("tags      " + ", ".join(f"{k}={v}" for k, v in info.tags.items()))
    if info.note:
        stdout.print(f"note      {info.note}")
    for warning in info.warnings:
        stdout.print(f"warning   {warning}", highlight=False)
    table = Table()
    for column in ("Entry", "Kind", "Size", "Mode", "Modified", "Notes"):
        table.add_column(column)
    for entry in manifest.entries:
        modified = (
            f"{datetime.fromtimestamp(entry.mtime_ns / 1e9):%Y-%m-%d %H:%M:%S}"
            if entry.mtime_ns
            else ""
        )
        mode = oct(entry.mode) if entry.mode is not None else ""
        table.add_row(
            entry.name, entry.kind, human_size(entry.size), mode, modified, _entry_notes(entry)
        )
    stdout.print(table)


def _entry_notes(entry: Entry) -> str:
    """What ``show`` says about an entry beyond its size and times."""
    notes = []
    if entry.origin == "sqlite":
        notes.append("database (SQLite online-backup copy)")
    elif entry.origin == "command":
        notes.append("command output")
    if entry.kind == "symlink":
        notes.append(f"-> {entry.target}")
    elif entry.kind == "hardlink":
        notes.append(f"hard link to {entry.target}")
    if entry.changed:
        notes.append("changed while read: may mix two versions")
    return ", ".join(notes)


@main.command()
@click.argument("backup_id", required=False)
@click.option(
    "--target",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory to restore into (default: ./restore/<backup_id>).",
)
@click.option(
    "--verify",
    "verify_after",
    is_flag=True,
    help="Read the restored files back and check them against the backup.",
)
@click.option(
    "--at",
    "at",
    default=None,
    metavar="TIME",
    help="Restore the newest backup taken at or before TIME ('2025-12-17 10:00', ISO; local "
    "time unless a zone is given).",
)
@click.option(
    "--type",
    "backup_type",
    default=None,
    help="With --at or without an id: only consider backups of this type.",
)
@click.option(
    "--in-place",
    is_flag=True,
    help="Write the files back where they came from (after a pre_restore backup of what "
    "changes); data entries are skipped.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --in-place: list what would be created, overwritten, left alone or deleted.",
)
@click.option(
    "--overwrite",
    type=click.Choice(OVERWRITE_CHOICES),
    default=None,
    help="With --in-place: replace existing files always, if-changed (default: size or "
    "content hash differs) or never.",
)
@click.option(
    "--delete",
    "delete_extra",
    is_flag=True,
    help="With --in-place: remove files the sources select, in directories the backup has "
    "files in, that the backup does not have.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="PATTERN",
    help="With --in-place: only entries whose path (or a directory above it) matches "
    "(fnmatch; repeatable).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="With --in-place: leave out entries whose path (or a directory above it) matches "
    "(fnmatch; repeatable).",
)
@_json_option
@click.pass_obj
def restore(
    ctx: Context,
    backup_id: str | None,
    target: str | None,
    verify_after: bool,
    at: str | None,
    backup_type: str | None,
    in_place: bool,
    dry_run: bool,
    overwrite: str | None,
    delete_extra: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
) -> None:
    """Restore a backup (default: the newest that verifies; --at: the newest at or before a
    time) into a directory, or with --in-place where its files came from."""
    if backup_id and at:
        raise click.UsageError("give a backup id or --at, not both")
    if backup_id and backup_type:
        raise click.UsageError("--type selects a backup with --at or without an id")
    if in_place and target:
        raise click.UsageError("--in-place writes where the files came from: no --target")
    in_place_only = {
        "--dry-run": dry_run,
        "--overwrite": overwrite is not None,
        "--delete": delete_extra,
        "--include": bool(include),
        "--exclude": bool(exclude),
    }
    given = [name for name, used in in_place_only.items() if used]
    if given and not in_place:
        raise click.UsageError(f"{', '.join(given)} only apply with --in-place")
    recovery = ctx.recovery
    if at is not None:
        backup_id = recovery.get_backup_at(at, backup_type)
    elif backup_id is None:
        backup_id = _latest_good(recovery, backup_type)
    if in_place:
        _restore_in_place(
            ctx,
            recovery,
            backup_id,
            dry_run=dry_run,
            overwrite=overwrite or "if-changed",
            delete=delete_extra,
            include=include,
            exclude=exclude,
            verify=verify_after,
        )
        return
    destination = Path(target) if target else Path("restore") / backup_id
    result = recovery.restore_to_directory(backup_id, destination, verify=verify_after)
    if ctx.as_json:
        emit_json(
            {
                "backup_id": backup_id,
                "target": str(result.target),
                "files": [str(p) for p in result.written],
                "bytes": result.bytes_written,
                "verified": result.verified,
            }
        )
    else:
        checked = ", verified against the backup" if result.verified else ""
        stdout.print(
            f"Restored [bold]{backup_id}[/bold] to {result.target} "
            f"({len(result.written)} files, {human_size(result.bytes_written)}{checked})"
        )


_ACTION_LABELS = {
    "create": "created",
    "overwrite": "overwritten",
    "metadata": "mode/mtime set",
    "unchanged": "unchanged",
    "kept": "kept (--overwrite never)",
    "delete": "deleted",
}


def _restore_in_place(
    ctx: Context,
    recovery: RecoveryManager,
    backup_id: str,
    *,
    dry_run: bool,
    overwrite: str,
    delete: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    verify: bool,
) -> None:
    """``restore --in-place``: run it and report every planned action and the undo backup."""
    with delayed_progress(ctx, "restoring in place"):
        result = recovery.restore_in_place(
            backup_id,
            dry_run=dry_run,
            overwrite=overwrite,  # type: ignore[arg-type]  # click.Choice checked it
            delete=delete,
            include=include,
            exclude=exclude,
            verify=verify,
        )
    counts = result.counts
    if ctx.as_json:
        emit_json(
            {
                "backup_id": backup_id,
                "in_place": True,
                "dry_run": result.dry_run,
                "pre_restore_id": result.pre_restore_id,
                "counts": counts,
                "actions": [
                    {
                        "action": a.action,
                        "name": a.name,
                        "path": str(a.path),
                        "size": a.size,
                        "reason": a.reason,
                        "kind": a.kind,
                    }
                    for a in result.actions
                ],
                "skipped_data": result.skipped_data,
                "notes": result.notes,
                "filtered": result.filtered,
                "bytes": result.bytes_written,
                "verified": result.verified,
            }
        )
        return
    summary = ", ".join(
        f"{counts[action]} {label}" for action, label in _ACTION_LABELS.items() if counts[action]
    )
    if dry_run:
        stdout.print(
            f"Dry run: restoring [bold]{backup_id}[/bold] in place would write nothing now; "
            f"planned: {summary or 'nothing'}"
        )
        for a in result.actions:
            size = f" ({human_size(a.size)})" if a.size else ""
            stdout.print(f"  {a.action:<9} {a.path}{size}  [dim]{a.reason}[/dim]", highlight=False)
    else:
        written = human_size(result.bytes_written)
        checked = ", verified against the backup" if result.verified else ""
        stdout.print(
            f"Restored [bold]{backup_id}[/bold] in place: {summary or 'no files'} "
            f"({written} written{checked})"
        )
        if result.pre_restore_id:
            stdout.print(
                f"The files as they were are in backup [bold]{result.pre_restore_id}[/bold]; "
                f"undo with: peak-backup restore {result.pre_restore_id} --in-place"
            )
        else:
            stdout.print("Nothing was changed, so no pre_restore backup was needed.")
    if result.filtered:
        stdout.print(f"{result.filtered} file entries left out by --include/--exclude.")
    if result.skipped_data:
        stdout.print(
            f"Skipped {len(result.skipped_data)} data entries (values and command output, not "
            f"files; restore them with --target or the Python API): "
            f"{', '.join(result.skipped_data)}"
        )
    for note in result.notes:
        stdout.print(f"Note: {note}", highlight=False)


def _latest_good(recovery: RecoveryManager, backup_type: str | None = None) -> str:
    backups = recovery.manager.list_backups(backup_type)
    if not backups:
        kind = f" of type {backup_type!r}" if backup_type else ""
        raise BackupNotFoundError(f"no backup{kind} to restore")
    for info in backups:
        if recovery.verify_backup(info.backup_id):
            return info.backup_id
        stderr.print(f"[yellow]warning:[/yellow] skipping damaged backup {info.backup_id}")
    raise BackupError("no backup could be restored: all are damaged")


@main.command()
@click.argument("backup_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Also delete the last good backup.")
@_json_option
@click.pass_obj
def delete(ctx: Context, backup_id: str, yes: bool, force: bool) -> None:
    """Delete a backup (asks for confirmation on stdin unless --yes)."""
    manager = ctx.manager
    try:
        info = manager.get_backup_info(backup_id)
        what = f"{info.backup_id} ({info.backup_type}, {info.timestamp:%Y-%m-%d %H:%M:%S})"
    except IntegrityError as exc:  # a damaged backup must stay deletable
        what = f"{backup_id} (damaged: {exc})"
    if not yes:
        stderr.print(f"Delete backup {what}? [y/N] ", end="", highlight=False)
        answer = sys.stdin.readline().strip().lower() if sys.stdin else ""
        if answer not in ("y", "yes"):
            stderr.print("Not deleted. Answer 'y', or pass --yes to delete without asking.")
            if ctx.as_json:
                emit_json({"deleted": False, "backup_id": backup_id})
            raise SystemExit(EXIT_CANCELLED)
    manager.delete_backup(backup_id, force=force)
    if ctx.as_json:
        emit_json({"deleted": True, "backup_id": backup_id})
    else:
        stdout.print(f"Deleted backup {backup_id}")


@main.command()
@click.argument("backup_id", required=False)
@click.option("--all", "verify_all", is_flag=True, help="Verify every backup.")
@click.option("--structure", is_flag=True, help="Only check that every chunk exists.")
@click.option(
    "--decode", is_flag=True, help="Also decode every data entry as a value (like a restore)."
)
@click.option(
    "--read-data-subset",
    "subset",
    metavar="n/m|P%|SIZE",
    default=None,
    help="Read a deterministic slice of all chunks (1/10, 10%, 50M); every chunk is read "
    "within a cycle of daily runs.",
)
@_json_option
@click.pass_obj
def verify(
    ctx: Context,
    backup_id: str | None,
    verify_all: bool,
    structure: bool,
    decode: bool,
    subset: str | None,
) -> None:
    """Verify a backup (default: the newest) by reading and checking every chunk."""
    if backup_id and verify_all:
        raise click.UsageError("give a backup id or --all, not both")
    if subset is not None:
        if backup_id or structure:
            raise click.UsageError("--read-data-subset covers all backups: no id, no --structure")
        _print_check(ctx, ctx.manager.check(read_data=True, subset=subset))
        return
    recovery = ctx.recovery
    if verify_all:
        ids = [info.backup_id for info in ctx.manager.list_backups()]
        ids += sorted(ctx.manager.repository.damaged_snapshots())
    elif backup_id:
        ctx.manager.repository.read_manifest(backup_id)  # unknown id: exit code 3
        ids = [backup_id]
    else:
        latest = recovery.get_latest_backup()
        if latest is None:
            raise BackupNotFoundError("no backup to verify")
        ids = [latest]
    reports = []
    with delayed_progress(ctx, "verifying") as progress:
        for bid in ids:
            report = recovery.verify_backup_report(bid, read_data=not structure, decode=decode)
            reports.append(report)
            progress(report.checked_bytes)
    if ctx.as_json:
        emit_json(
            [
                {
                    "backup_id": r.backup_id,
                    "ok": r.ok,
                    "chunks": r.checked_chunks,
                    "bytes": r.checked_bytes,
                    "problems": r.problems,
                }
                for r in reports
            ]
        )
    else:
        for r in reports:
            if r.ok:
                stdout.print(
                    f"[green]OK[/green]       {r.backup_id} ({r.checked_chunks} chunks, "
                    f"{human_size(r.checked_bytes)})"
                )
            else:
                stdout.print(f"[red]DAMAGED[/red]  {r.backup_id}: " + "; ".join(r.problems))
    if not all(r.ok for r in reports):
        raise SystemExit(EXIT_INTEGRITY)


@main.command()
@click.option("--no-read-data", is_flag=True, help="Only check that chunks exist (fast).")
@_json_option
@click.pass_obj
def check(ctx: Context, no_read_data: bool) -> None:
    """Check the whole repository: missing, corrupt and orphaned chunks, damaged manifests,
    temp leftovers, and which backups each damage affects (exit 4 if damaged)."""
    with delayed_progress(ctx, "checking"):
        report = ctx.manager.check(read_data=not no_read_data)
    _print_check(ctx, report)


def _print_check(ctx: Context, report: CheckReport) -> None:
    if ctx.as_json:
        emit_json(report.to_json())
    else:
        state = "[green]clean[/green]" if report.clean else "[red]DAMAGED[/red]"
        stdout.print(
            f"Repository {state}: {report.backups} backups, {report.chunks_checked} chunks "
            f"({human_size(report.bytes_checked)} read)"
        )
        for title, found in (
            ("missing", report.missing_chunks),
            ("corrupt", report.corrupt_chunks),
        ):
            for cid, users in sorted(found.items()):
                stdout.print(f"  {title} chunk {cid[:16]}… used by {', '.join(users)}")
        for bid, why in sorted(report.damaged_manifests.items()):
            stdout.print(f"  damaged manifest {bid}: {why}")
        if report.affected_backups:
            stdout.print("  affected backups: " + ", ".join(report.affected_backups))
        if report.orphaned_chunks:
            stdout.print(
                f"  {report.orphaned_chunks} unreferenced chunks "
                f"({human_size(report.orphaned_bytes)}): `prune` reclaims them"
            )
        if report.temp_leftovers:
            stdout.print(
                f"  {len(report.temp_leftovers)} temp leftovers of interrupted writes: "
                "`prune` removes them"
            )
    if not report.clean:
        raise SystemExit(EXIT_INTEGRITY)


@main.command(name="prune")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only say what retention would forget and what would be collected and freed.",
)
@click.option(
    "--grace",
    default=None,
    metavar="DURATION",
    help="Grace period (default: [backup] prune_grace, 1h).",
)
@click.option(
    "--retry-lock",
    default="0s",
    metavar="DURATION",
    help="Wait this long for another prune to finish instead of failing (exit 5).",
)
@_json_option
@click.pass_obj
def prune_command(ctx: Context, dry_run: bool, grace: str | None, retry_lock: str) -> None:
    """Apply the retention policy (delete the backups it forgets), then remove chunks no backup
    references (two phases with a grace period) and leftovers."""
    try:
        grace_period = parse_duration(grace) if grace is not None else None
        wait = parse_duration(retry_lock).total_seconds()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    decisions = ctx.manager.plan_retention()
    if not dry_run and not all(d.keep for d in decisions):
        ctx.manager.apply_retention(decisions=decisions, auto_prune=False)
    with delayed_progress(ctx, "pruning"):
        report = ctx.manager.prune(dry_run=dry_run, grace=grace_period, lock_wait=wait)
    if ctx.as_json:
        retention = [
            {"backup_id": d.backup_id, "keep": d.keep, "reason": d.reason} for d in decisions
        ]
        emit_json({**asdict(report), "freed_bytes": report.freed_bytes, "retention": retention})
        return
    _print_retention(decisions, dry_run)
    stdout.print(
        f"{'Dry run: ' if dry_run else ''}{report.referenced_chunks} chunks in use; "
        f"{report.fossilized} unreferenced chunks {'would be ' if dry_run else ''}collected "
        f"({human_size(report.fossilized_bytes)}); {report.deleted} deleted"
        f" ({human_size(report.deleted_bytes)}); {report.resurrected} brought back; "
        f"{report.temp_removed} temp leftovers removed ({human_size(report.temp_bytes)})"
    )
    for reason in report.postponed:
        stdout.print(f"  postponed: {reason}")


def _print_retention(decisions: list[Decision], dry_run: bool) -> None:
    """One line per backup (newest first): keep or forget, and the rules that decided it."""
    forgotten = sum(not d.keep for d in decisions)
    stdout.print(
        f"{'Dry run: ' if dry_run else ''}retention: {len(decisions)} backups, "
        f"{len(decisions) - forgotten} kept, {forgotten} "
        f"{'would be forgotten' if dry_run else 'forgotten (deleted)'}",
        markup=False,
    )
    width = max((len(d.backup_id) for d in decisions), default=0)
    for d in decisions:
        action = "keep" if d.keep else "forget"
        stdout.print(f"  {action:<6}  {d.backup_id:<{width}}  {d.reason}", markup=False)


@main.command()
@click.option(
    "--encryption",
    "aead",
    default=None,
    is_flag=False,
    flag_value=DEFAULT_AEAD,
    type=click.Choice(["none", *AEAD_ALGORITHMS]),
    help=f"Encrypt the repository (default AEAD: {DEFAULT_AEAD}); the passphrase comes from "
    "$PEAK_BACKUP_PASSWORD, [backup] password_file, or a prompt.",
)
@_json_option
@click.pass_obj
def init(ctx: Context, aead: str | None) -> None:
    """Create the repository (backups create it too; init lets you choose encryption)."""
    config = ctx.manager.config
    if aead is not None:
        config = replace(config, encryption=aead)
    store = config.open_store()
    if store.exists(REPO_KEY):
        raise BackupError(f"a repository already exists at {store.location}")
    ctx.confirm_new_passphrase = True
    repository = BackupManager(config, passphrase=ctx.passphrase).open_repository(create=True)
    if ctx.as_json:
        emit_json(
            {
                "repository": store.location,
                "encrypted": repository.encrypted,
                "repository_id": repository.config.repository_id,
            }
        )
    else:
        kind = "encrypted " if repository.encrypted else ""
        stdout.print(f"Created {kind}repository at {store.location}")
        if repository.encrypted:
            stdout.print("Keep the passphrase safe: without it the backups cannot be read.")


@main.group()
def key() -> None:
    """Manage the passphrase of an encrypted repository."""


@key.command(name="passwd")
@_json_option
@click.pass_obj
def key_passwd(ctx: Context) -> None:
    """Change the passphrase (the data is not rewritten). The new one comes from
    $PEAK_BACKUP_NEW_PASSWORD or a prompt."""
    repository = ctx.manager.repository
    if not repository.encrypted:
        raise InvalidInputError("the repository is not encrypted: it has no passphrase")
    old = ctx.passphrase()
    new = os.environ.get("PEAK_BACKUP_NEW_PASSWORD") or read_passphrase(
        env={}, password_file=None, confirm=True
    )
    repository.change_passphrase(old, new)
    if ctx.as_json:
        emit_json({"changed": True})
    else:
        stdout.print("Passphrase changed.")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; expected errors never show a traceback."""
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        main.main(args=argv, prog_name="peak-backup", standalone_mode=False)
    except click.exceptions.Abort:
        stderr.print("Aborted.")
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except BackupError as exc:
        code = getattr(exc, "exit_code", EXIT_ERROR)
        if as_json:
            emit_json(
                {"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": code}}
            )
        else:
            stderr.print(f"[red]error:[/red] {exc}", highlight=False)
        return code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except KeyboardInterrupt:
        stderr.print("Interrupted.")
        return 130
    return EXIT_OK


def entry_point() -> None:
    """Console-script entry point (``peak-backup``)."""
    sys.exit(run())


# Command modules register themselves on `main` (diff/cat; export/import).
from src.infra.backup.cli import daemon, inspect, status, transfer  # noqa: E402, F401
