"""``export`` and ``import``: move backups out of and into the repository as plain files.

Registered on the ``peak-backup`` group by importing this module (``cli.py`` does that at its
end), so the commands share ``--json``, ``--config``, exit codes and error handling.
"""

from __future__ import annotations

from typing import cast

import click

from src.infra.backup.cli import (
    Context,
    _json_option,
    delayed_progress,
    emit_json,
    info_json,
    main,
    stdout,
)
from src.infra.backup.exporting import (
    EXPORT_FORMATS,
    ExportFormat,
    export_backup,
    import_backup,
)


@main.command(name="export")
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
@_json_option
@click.pass_obj
def export_command(ctx: Context, backup_id: str, to_dir: str, fmt: str, use_gzip: bool) -> None:
    """Write a backup as plain files: <key>.json per data entry (plus a hidden lossless
    .<key>.msgpack), file sources under their paths, and metadata.json."""
    with delayed_progress(ctx, "exporting"):
        path = export_backup(
            ctx.manager, backup_id, to_dir, fmt=cast(ExportFormat, fmt), gzip=use_gzip
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


@main.command(name="import")
@click.argument("source", type=click.Path(exists=False))
@_json_option
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
