"""``peak-backup check``: check the whole repository."""

from __future__ import annotations

import click

from src.infra.backup.cli.context import EXIT_INTEGRITY, Context, json_option
from src.infra.backup.cli.output import emit_json, human_size, progress_bar, stdout
from src.infra.backup.repository.check import CheckReport


@click.command()
@click.option("--no-read-data", is_flag=True, help="Only check that chunks exist (fast).")
@json_option
@click.pass_obj
def check(ctx: Context, no_read_data: bool) -> None:
    """Check the whole repository: missing, corrupt and orphaned chunks, damaged manifests,
    temp leftovers, and which backups each damage affects (exit 4 if damaged)."""
    with progress_bar(ctx, "check") as progress:
        report = ctx.manager.check(read_data=not no_read_data, progress=progress)
    print_check(ctx, report)


def print_check(ctx: Context, report: CheckReport) -> None:
    if ctx.as_json:
        emit_json(report.to_json())
    else:
        state = "[green]clean[/green]" if report.clean else "[red]DAMAGED[/red]"
        stdout.print(
            f"Repository {state}: {report.backups} backups, {report.chunks_checked} chunks "
            f"({human_size(report.bytes_checked)} read)"
        )
        for title, found in (
            ("missing", report.missing_chunks),
            ("corrupt", report.corrupt_chunks),
        ):
            for cid, users in sorted(found.items()):
                stdout.print(f"  {title} chunk {cid[:16]}… used by {', '.join(users)}")
        for name, why in sorted(report.damaged_packs.items()):
            users = report.damaged_pack_users.get(name, [])
            used = f" (used by {', '.join(users)})" if users else ""
            stdout.print(f"  damaged pack {name}: {why}{used}")
        for bid, why in sorted(report.damaged_manifests.items()):
            stdout.print(f"  damaged manifest {bid}: {why}")
        if report.affected_backups:
            stdout.print("  affected backups: " + ", ".join(report.affected_backups))
        if report.orphaned_chunks:
            stdout.print(
                f"  {report.orphaned_chunks} unreferenced chunks "
                f"({human_size(report.orphaned_bytes)}): `prune` reclaims them"
            )
        if report.temp_leftovers:
            stdout.print(
                f"  {len(report.temp_leftovers)} temp leftovers of interrupted writes: "
                "`prune` removes them"
            )
    if not report.clean:
        raise SystemExit(EXIT_INTEGRITY)
