"""``peak-backup import``: import an export, or a seed-style backup folder."""

from __future__ import annotations

import click

from src.infra.backup.app.export import (
    import_backup,
)
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import delayed_progress, emit_json, info_json, stdout


@click.command(name="import")
@click.argument("source", type=click.Path(exists=False))
@json_option
@click.pass_obj
def import_command(ctx: Context, source: str) -> None:
    """Import an export (folder or .tar.gz) or a seed-style backup folder, keeping its id
    and timestamp."""
    manager = ctx.manager
    with delayed_progress(ctx, "importing") as progress:
        backup_id = import_backup(manager, source, progress=progress)
    info = manager.get_backup_info(backup_id)
    if ctx.as_json:
        emit_json({"imported": True, "source": source, **info_json(info)})
    else:
        stdout.print(
            f"Imported {backup_id} ({info.timestamp:%Y-%m-%d %H:%M:%S}, "
            f"{len(info.files)} entries) from {source}"
        )
