"""``peak-backup delete``: delete a backup (never the last good one unless forced)."""

from __future__ import annotations

import sys

import click

from src.infra.backup.cli.context import EXIT_CANCELLED, Context, json_option
from src.infra.backup.cli.output import emit_json, stderr, stdout
from src.infra.backup.errors import (
    IntegrityError,
)


@click.command()
@click.argument("backup_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Also delete the last good backup.")
@json_option
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
