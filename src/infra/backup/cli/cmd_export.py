"""``peak-backup export``: write a backup as plain files (a folder or a .tar.gz)."""

from __future__ import annotations

from typing import cast

import click

from src.infra.backup.app.export import (
    EXPORT_FORMATS,
    ExportFormat,
    export_backup,
)
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, progress_bar, stdout


@click.command(name="export")
@click.argument("backup_id")
@click.option(
    "--to",
    "to_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Write the export to DIR/<backup_id>/ (or DIR/<backup_id>.tar.gz).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(EXPORT_FORMATS)),
    default="dir",
    show_default=True,
    help="A folder of plain files, or one tar.gz archive of that folder.",
)
@click.option("--gzip", "use_gzip", is_flag=True, help="Write data entries as <key>.json.gz.")
@json_option
@click.pass_obj
def export_command(ctx: Context, backup_id: str, to_dir: str, fmt: str, use_gzip: bool) -> None:
    """Write a backup as plain files: <key>.json per data entry (plus a hidden lossless
    .<key>.msgpack), file sources under their paths, and metadata.json."""
    backup_id = ctx.resolve(backup_id)  # an id or a reference (latest, pre_trade~2...)
    with progress_bar(ctx, "export") as progress:
        path = export_backup(
            ctx.manager,
            backup_id,
            to_dir,
            fmt=cast(ExportFormat, fmt),
            gzip=use_gzip,
            progress=progress,
        )
    if ctx.as_json:
        emit_json(
            {
                "exported": True,
                "backup_id": backup_id,
                "path": str(path),
                "format": fmt,
                "gzip": use_gzip,
            }
        )
    else:
        stdout.print(f"Exported {backup_id} to {path}")
