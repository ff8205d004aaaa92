"""``peak-backup diff``: what changed between two backups, or since a backup."""

from __future__ import annotations

import click

from src.infra.backup.app.diff import (
    DEFAULT_MAX_CHANGES,
    DiffResult,
    diff_against_sources,
    diff_backups,
)
from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, stderr, stdout


@click.command()
@click.argument("backup_id")
@click.argument("other_id", required=False)
@click.option(
    "--max",
    "max_changes",
    type=click.IntRange(min=0),
    default=None,
    help=f"Show at most N changes (default {DEFAULT_MAX_CHANGES}; with --json all); 0 shows all.",
)
@json_option
@click.pass_obj
def diff(ctx: Context, backup_id: str, other_id: str | None, max_changes: int | None) -> None:
    """Show what changed from BACKUP_ID to OTHER_ID, or, without OTHER_ID, from BACKUP_ID to
    the configured sources on disk now (files only).

    Data entries are compared value by value (portfolio.equity: 10000 -> 9500); files by
    their chunk ids, with their sizes.
    """
    if max_changes is None:
        limit: int | None = None if ctx.as_json else DEFAULT_MAX_CHANGES
    else:
        limit = max_changes or None
    backup_id = ctx.resolve(backup_id)  # ids or references (latest~1 latest, pre_trade~2...)
    other_id = ctx.resolve(other_id) if other_id is not None else None
    if other_id is None:
        result = diff_against_sources(ctx.manager, backup_id, max_changes=limit)
    else:
        result = diff_backups(ctx.manager, backup_id, other_id, max_changes=limit)
    if ctx.as_json:
        emit_json(result.to_json())
        if result.omitted:
            stderr.print(
                f"... {result.omitted} more changes not shown (--max 0 shows all)",
                highlight=False,
            )
        return
    _print_diff(result)


def _print_diff(result: DiffResult) -> None:
    against = "the sources on disk" if result.new == "sources" else result.new
    counts = result.counts
    summary = (
        f"{result.old} -> {against}: {counts['added']} added, {counts['removed']} removed, "
        f"{counts['changed']} changed"
    )
    stdout.print(
        summary if result.total else f"{result.old} -> {against}: no changes",
        markup=False,
        highlight=False,
    )
    for line in result.lines():
        stdout.print(line, markup=False, highlight=False)
    if result.skipped:
        stdout.print(
            "data entries not compared (only files exist on disk): " + ", ".join(result.skipped),
            markup=False,
            highlight=False,
        )
