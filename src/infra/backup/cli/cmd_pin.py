"""``peak-backup pin`` / ``unpin``: protect a backup from retention and ``delete``."""

from __future__ import annotations

import click

from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, stdout


@click.command()
@click.argument("backup_id", metavar="ID")
@click.option("--note", default=None, help="Why it is pinned (stored with the pin).")
@json_option
@click.pass_obj
def pin(ctx: Context, backup_id: str, note: str | None) -> None:
    """Pin a backup: retention never deletes it, delete refuses it without --force.

    ID is a backup id or a reference (latest, pre_trade~2, @TIME...). Pinning twice is
    harmless; the backup itself is not changed.
    """
    pinned = ctx.manager.pin(backup_id, note=note)
    if ctx.as_json:
        emit_json({"pinned": True, "backup_id": pinned})
    else:
        stdout.print(f"Pinned backup {pinned}", highlight=False)


@click.command()
@click.argument("backup_id", metavar="ID")
@json_option
@click.pass_obj
def unpin(ctx: Context, backup_id: str) -> None:
    """Remove a backup's pin (retention and delete treat it as any other backup again)."""
    resolved = ctx.resolve(backup_id)
    removed = ctx.manager.unpin(resolved)
    if ctx.as_json:
        emit_json({"pinned": False, "backup_id": resolved, "was_pinned": removed})
    elif removed:
        stdout.print(f"Unpinned backup {resolved}", highlight=False)
    else:
        stdout.print(f"Backup {resolved} was not pinned", highlight=False)
