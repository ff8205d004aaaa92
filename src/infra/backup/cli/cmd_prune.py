"""``peak-backup prune``: apply the retention policy and collect garbage."""

from __future__ import annotations

from dataclasses import asdict

import click

from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import delayed_progress, emit_json, human_size, stdout
from src.infra.backup.errors import RepositoryNotFoundError
from src.infra.backup.format.durations import parse_duration
from src.infra.backup.policy.retention import Decision
from src.infra.backup.repository.locks import check_deletes_allowed


@click.command(name="prune")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only say what retention would forget and what would be collected and freed.",
)
@click.option(
    "--grace",
    default=None,
    metavar="DURATION",
    help="Grace period (default: [backup] prune_grace, 1h).",
)
@click.option(
    "--retry-lock",
    default="0s",
    metavar="DURATION",
    help="Wait this long for another prune to finish instead of failing (exit 5).",
)
@json_option
@click.pass_obj
def prune_command(ctx: Context, dry_run: bool, grace: str | None, retry_lock: str) -> None:
    """Apply the retention policy (delete the backups it forgets), then remove chunks no backup
    references (two phases with a grace period) and leftovers."""
    try:
        grace_period = parse_duration(grace) if grace is not None else None
        wait = parse_duration(retry_lock).total_seconds()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not dry_run:
        _check_deletes_allowed(ctx)
    decisions = ctx.manager.plan_retention()
    if not dry_run and not all(d.keep for d in decisions):
        ctx.manager.apply_retention(decisions=decisions, auto_prune=False)
    with delayed_progress(ctx, "pruning"):
        report = ctx.manager.prune(dry_run=dry_run, grace=grace_period, lock_wait=wait)
    if ctx.as_json:
        retention = [
            {"backup_id": d.backup_id, "keep": d.keep, "reason": d.reason} for d in decisions
        ]
        emit_json({**asdict(report), "freed_bytes": report.freed_bytes, "retention": retention})
        return
    _print_retention(decisions, dry_run)
    stdout.print(
        f"{'Dry run: ' if dry_run else ''}{report.referenced_chunks} chunks in use; "
        f"{report.fossilized} unreferenced chunks {'would be ' if dry_run else ''}collected "
        f"({human_size(report.fossilized_bytes)}); {report.deleted} deleted"
        f" ({human_size(report.deleted_bytes)}); {report.resurrected} brought back; "
        f"{report.temp_removed} temp leftovers removed ({human_size(report.temp_bytes)})"
    )
    for reason in report.postponed:
        stdout.print(f"  postponed: {reason}")


def _check_deletes_allowed(ctx: Context) -> None:
    """Refuse before retention deletes a backup if these credentials may not delete (a bot
    host's backup-only identity): prune is run from a host with full rights."""
    try:
        store = ctx.manager.repository.store
    except RepositoryNotFoundError:
        return  # nothing to delete: prune reports an empty repository
    check_deletes_allowed(store, "prune")


def _print_retention(decisions: list[Decision], dry_run: bool) -> None:
    """One line per backup (newest first): keep or forget, and the rules that decided it."""
    forgotten = sum(not d.keep for d in decisions)
    stdout.print(
        f"{'Dry run: ' if dry_run else ''}retention: {len(decisions)} backups, "
        f"{len(decisions) - forgotten} kept, {forgotten} "
        f"{'would be forgotten' if dry_run else 'forgotten (deleted)'}",
        markup=False,
    )
    width = max((len(d.backup_id) for d in decisions), default=0)
    for d in decisions:
        action = "keep" if d.keep else "forget"
        stdout.print(f"  {action:<6}  {d.backup_id:<{width}}  {d.reason}", markup=False)
