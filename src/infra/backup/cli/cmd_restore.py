"""``peak-backup restore``: restore a backup into a folder, or in place."""

from __future__ import annotations

from pathlib import Path

import click

from src.infra.backup.app.recovery import RecoveryManager
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, human_size, progress_bar, stderr, stdout
from src.infra.backup.errors import (
    BackupError,
    BackupNotFoundError,
)
from src.infra.backup.files.in_place import OVERWRITE_CHOICES


@click.command()
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
@click.option(
    "--force",
    is_flag=True,
    help="With --in-place: restore even while the bot named in [backup] bot_pidfile runs.",
)
@json_option
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
    force: bool = False,
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
        "--force": force,
    }
    given = [name for name, used in in_place_only.items() if used]
    if given and not in_place:
        raise click.UsageError(f"{', '.join(given)} only apply with --in-place")
    recovery = ctx.recovery
    if at is not None:
        backup_id = recovery.get_backup_at(at, backup_type)
    elif backup_id is None:
        backup_id = _latest_good(recovery, backup_type)
    else:
        backup_id = ctx.resolve(backup_id)  # an id, or a reference (latest, pre_trade~2...)
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
            force=force,
        )
        return
    destination = Path(target) if target else Path("restore") / backup_id
    with progress_bar(ctx, "restore") as progress:
        result = recovery.restore_to_directory(
            backup_id, destination, verify=verify_after, progress=progress
        )
    if ctx.as_json:
        emit_json(
            {
                "backup_id": backup_id,
                "target": str(result.target),
                "files": [str(p) for p in result.written],
                "bytes": result.bytes_written,
                "verified": result.verified,
                "stamp": str(result.stamp) if result.stamp else None,
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
    force: bool,
) -> None:
    """``restore --in-place``: run it and report every planned action and the undo backup."""
    with progress_bar(ctx, "restore") as progress:
        result = recovery.restore_in_place(
            backup_id,
            dry_run=dry_run,
            overwrite=overwrite,  # type: ignore[arg-type]  # click.Choice checked it
            delete=delete,
            include=include,
            exclude=exclude,
            verify=verify,
            force=force,
            progress=progress,
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
                "stamp": str(result.stamp) if result.stamp else None,
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
