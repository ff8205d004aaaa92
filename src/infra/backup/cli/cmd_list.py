"""``peak-backup list``: list backups, newest first."""

from __future__ import annotations

import click

from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, human_size, info_json, stdout
from src.infra.backup.policy.point_in_time import select_between


@click.command(name="list")
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
@json_option
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
    from rich.table import Table  # imported on use: rich is slow to import

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
