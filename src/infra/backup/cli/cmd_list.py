"""``peak-backup list``: list backups, newest first."""

from __future__ import annotations

import click

from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, human_size, info_json, stdout, text_table
from src.infra.backup.format.ids import tag_problem
from src.infra.backup.policy.point_in_time import select_between

# A rich table costs about a third of a millisecond per row; longer listings are plain text.
RICH_TABLE_MAX_ROWS = 1_000


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
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="K=V",
    help="Only backups with this tag (K=V, or K for any value); repeatable, all must match.",
)
@json_option
@click.pass_obj
def list_command(
    ctx: Context,
    backup_type: str | None,
    since: str | None,
    until: str | None,
    tags: tuple[str, ...],
) -> None:
    """List backups, newest first (pinned ones are marked)."""
    wanted = [_tag_filter(tag) for tag in tags]
    backups = [
        info
        for info in select_between(ctx.manager.list_backups(backup_type), since, until)
        if all(
            (key in info.tags) if value is None else info.tags.get(key) == value
            for key, value in wanted
        )
    ]
    # One listing of pins/ (list_backups itself costs no request per backup, nor does this).
    pinned = ctx.manager.pinned() & {info.backup_id for info in backups} if backups else set()
    if ctx.as_json:
        emit_json([{**info_json(info), "pinned": info.backup_id in pinned} for info in backups])
        return
    if not backups:
        within = " in that time range" if since or until else ""
        within += " with those tags" if tags else ""
        stdout.print(f"No backups{within} in {ctx.manager.config.repository_location}")
        return
    with_tags = any(info.tags for info in backups)
    rows = [
        [
            info.backup_id,
            info.backup_type,
            info.timestamp.isoformat(" ", "seconds"),
            human_size(info.size_bytes),
            human_size(info.added_bytes),
            str(info.file_count),
            *(["pinned" if info.backup_id in pinned else ""] if pinned else []),
            *([", ".join(f"{k}={v}" for k, v in info.tags.items())] if with_tags else []),
        ]
        for info in backups
    ]
    title = f"Backups in {ctx.manager.config.repository_location}"
    headers = ["ID", "Type", "Time (local)", "Size", "New", "Entries"]
    headers += ["Pinned"] if pinned else []
    if len(rows) > RICH_TABLE_MAX_ROWS:
        headers += ["Tags"] if with_tags else []
        click.echo(
            text_table(title, headers, rows, right=frozenset({3, 4, 5}))
            + f"\n{len(rows):,} backups"
        )
        return
    from rich.table import Table  # imported on use: rich is slow to import

    table = Table(title=title)
    # Ids and times never wrap, so they can be copied even at 80 columns; the rest may.
    table.add_column("ID", no_wrap=True, min_width=max(len(row[0]) for row in rows))
    table.add_column("Type", overflow="fold")
    table.add_column("Time (local)", no_wrap=True)
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("New", justify="right")
    table.add_column("Entries", justify="right")
    if pinned:
        table.add_column("Pinned", no_wrap=True)
    if with_tags:
        table.add_column("Tags", overflow="fold")
    for row in rows:
        table.add_row(*row)
    stdout.print(table)


def _tag_filter(text: str) -> tuple[str, str | None]:
    """``--tag K=V`` as ``(K, V)``, ``--tag K`` as ``(K, None)`` (any value)."""
    key, sep, value = text.partition("=")
    problem = tag_problem(key, value)
    if problem:
        raise click.BadParameter(problem, param_hint="--tag")
    return key, value if sep else None
