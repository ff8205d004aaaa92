"""``peak-backup migrate``: upgrade the repository to the current format, in place."""

from __future__ import annotations

from dataclasses import asdict

import click

from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import delayed_progress, emit_json, human_size, stdout
from src.infra.backup.format.durations import parse_duration
from src.infra.backup.repository.migrate import migrate_repository


@click.command(name="migrate")
@click.option(
    "--retry-lock",
    default="0s",
    metavar="DURATION",
    help="Wait this long for a running prune to finish instead of failing (exit 5).",
)
@json_option
@click.pass_obj
def migrate_command(ctx: Context, retry_lock: str) -> None:
    """Upgrade a format-1 repository (one file per chunk) to format 2 (packs), in place and
    crash-safely: used chunks are verified and copied into packs, then repo.json switches.
    The loose copies are reclaimed by the next prunes. Rerun after an interruption."""
    try:
        wait = parse_duration(retry_lock).total_seconds()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with delayed_progress(ctx, "migrating"):
        report = migrate_repository(ctx.manager.repository, lock_wait=wait)
    if ctx.as_json:
        emit_json(asdict(report))
        return
    if report.format_before == report.format_after and not report.chunks_packed:
        stdout.print(f"The repository is already in format {report.format_after}.")
    else:
        stdout.print(
            f"Repository format {report.format_before} -> {report.format_after}: "
            f"{report.chunks_packed} chunks ({human_size(report.bytes_packed)}) packed into "
            f"{report.packs_written} packs; `prune` reclaims the loose copies."
        )
    for cid, why in sorted(report.damaged.items()):
        stdout.print(f"  damaged chunk {cid[:16]}… left loose: {why}")
