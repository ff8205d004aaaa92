"""``peak-backup verify``: verify backups by reading and checking their chunks."""

from __future__ import annotations

import click

from src.infra.backup.cli.cmd_check import print_check
from src.infra.backup.cli.context import EXIT_INTEGRITY, Context, json_option
from src.infra.backup.cli.output import emit_json, human_size, progress_bar, stdout
from src.infra.backup.errors import (
    BackupNotFoundError,
)


@click.command()
@click.argument("backup_id", required=False)
@click.option("--all", "verify_all", is_flag=True, help="Verify every backup.")
@click.option("--structure", is_flag=True, help="Only check that every chunk exists.")
@click.option(
    "--decode", is_flag=True, help="Also decode every data entry as a value (like a restore)."
)
@click.option(
    "--read-data-subset",
    "subset",
    metavar="n/m|P%|SIZE",
    default=None,
    help="Read a deterministic slice of all chunks (1/10, 10%, 50M); every chunk is read "
    "within a cycle of daily runs.",
)
@json_option
@click.pass_obj
def verify(
    ctx: Context,
    backup_id: str | None,
    verify_all: bool,
    structure: bool,
    decode: bool,
    subset: str | None,
) -> None:
    """Verify a backup (default: the newest) by reading and checking every chunk."""
    if backup_id and verify_all:
        raise click.UsageError("give a backup id or --all, not both")
    if subset is not None:
        if backup_id or structure:
            raise click.UsageError("--read-data-subset covers all backups: no id, no --structure")
        with progress_bar(ctx, "verify") as progress:
            checked = ctx.manager.check(read_data=True, subset=subset, progress=progress)
        print_check(ctx, checked)
        return
    recovery = ctx.recovery
    if verify_all:
        infos = ctx.manager.list_backups()
        ids = [info.backup_id for info in infos]
        ids += sorted(ctx.manager.repository.damaged_snapshots())
        total: int | None = sum(info.logical_bytes for info in infos)
    elif backup_id:
        backup_id = ctx.resolve(backup_id)  # an id or a reference (latest, pre_trade~2...)
        manifest = ctx.manager.repository.read_manifest(backup_id)  # unknown id: exit code 3
        ids = [backup_id]
        total = sum(entry.size for entry in manifest.entries)
    else:
        latest = recovery.get_latest_backup()
        if latest is None:
            raise BackupNotFoundError("no backup to verify")
        ids = [latest]
        total = None
    reports = []
    with progress_bar(ctx, "verify", total=total) as progress:
        for bid in ids:
            report = recovery.verify_backup_report(
                bid, read_data=not structure, decode=decode, progress=progress
            )
            reports.append(report)
    if ctx.as_json:
        emit_json(
            [
                {
                    "backup_id": r.backup_id,
                    "ok": r.ok,
                    "chunks": r.checked_chunks,
                    "bytes": r.checked_bytes,
                    "problems": r.problems,
                }
                for r in reports
            ]
        )
    else:
        for r in reports:
            if r.ok:
                stdout.print(
                    f"[green]OK[/green]       {r.backup_id} ({r.checked_chunks} chunks, "
                    f"{human_size(r.checked_bytes)})"
                )
            else:
                stdout.print(f"[red]DAMAGED[/red]  {r.backup_id}: " + "; ".join(r.problems))
    if not all(r.ok for r in reports):
        raise SystemExit(EXIT_INTEGRITY)
