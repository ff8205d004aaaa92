"""``peak-backup create``: back up the configured sources."""

from __future__ import annotations

import click

from src.infra.backup.cli.context import EXIT_WARNINGS, Context, json_option
from src.infra.backup.cli.output import (
    emit_json,
    human_size,
    info_json,
    progress_bar,
    stderr,
    stdout,
)
from src.infra.backup.errors import (
    InvalidInputError,
)


def _parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--tag {item!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


@click.command()
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
@json_option
@click.pass_obj
def create(ctx: Context, backup_type: str, tags: tuple[str, ...], note: str | None) -> None:
    """Back up the configured sources ([backup] sources)."""
    manager = ctx.manager
    if not manager.config.has_file_sources:
        raise InvalidInputError(
            "nothing to back up: no [backup] sources are configured "
            '(add e.g. sources = ["config.toml", "live_runs/"] to config.toml)'
        )
    with progress_bar(ctx, "create") as progress:
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
