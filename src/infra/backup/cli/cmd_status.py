"""``peak-backup status``: the run history for people, cron and monitors.

Exit code 9 ("stale or failing") when the newest successful backup is older than the
threshold (``--max-age``, default twice ``interval_hours``), there is no backup at all, or the
last run of a type failed (a failure newer than that type's last success).
"""

from __future__ import annotations

from datetime import timedelta

import click

from src.infra.backup.cli.context import Context, json_option
from src.infra.backup.cli.output import emit_json, human_size, stdout
from src.infra.backup.format.durations import parse_duration
from src.infra.backup.monitoring.status import StatusSummary, collect_status, stale_threshold
from src.infra.backup.storage.requests import measure, ordered, total_requests

EXIT_STALE = 9


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def evaluate(summary: StatusSummary, threshold: timedelta) -> tuple[bool, list[str]]:
    """Whether the repository is healthy enough for exit 0, and the problems if not."""
    problems = []
    newest = summary.newest_success
    if newest is None:
        problems.append("no successful backup")
    elif summary.age(newest.time) > threshold:
        problems.append(
            f"stale: newest backup {newest.backup_id} is {_age(summary.age(newest.time))} old "
            f"(threshold {_age(threshold)})"
        )
    for name in summary.failing_types:
        failure = summary.types[name].last_failure
        problems.append(f"failing: last {name} backup failed: {failure.error if failure else ''}")
    for problem in (summary.offsite_problem, summary.fallback_problem):
        if problem:
            problems.append(problem)
    return not problems, problems


@click.command()
@click.option(
    "--max-age",
    default=None,
    metavar="DURATION",
    help="Stale when the newest backup is older than this (default: 2 x interval_hours).",
)
@json_option
@click.pass_obj
def status(ctx: Context, max_age: str | None) -> None:
    """Last success, failure and verify per backup type; exit 9 if stale or failing."""
    try:
        limit = parse_duration(max_age) if max_age is not None else None
    except ValueError as exc:
        raise click.UsageError(f"--max-age: {exc}") from None
    threshold = stale_threshold(ctx.manager, limit)
    with measure() as seen:  # what this command asks of the stores
        summary = collect_status(ctx.manager)
    ok, problems = evaluate(summary, threshold)
    if ctx.as_json:
        document = summary.to_json()
        asked = ordered(seen.snapshot())
        document["requests"]["this_command"] = {"by_op": asked, "total": total_requests(asked)}
        emit_json(
            {
                **document,
                "stale_after_seconds": threshold.total_seconds(),
                "ok": ok,
                "problems": problems,
            }
        )
    else:
        _print_status(summary, problems)
    if not ok:
        raise SystemExit(EXIT_STALE)


def _print_status(summary: StatusSummary, problems: list[str]) -> None:
    if not summary.repository_exists:
        stdout.print("No repository yet.", highlight=False)
    if summary.types:
        from rich.table import Table  # imported on use: rich is slow to import

        table = Table("type", "last success", "age", "size", "duration", "last failure")
        for name, entry in sorted(summary.types.items()):
            success = entry.last_success
            failure = entry.last_failure
            table.add_row(
                name,
                success.backup_id if success else "-",
                _age(summary.age(success.time)) if success else "-",
                human_size(success.size_bytes)
                if success and success.size_bytes is not None
                else "-",
                f"{success.duration_seconds * 1000:.0f} ms"
                if success and success.duration_seconds is not None
                else "-",
                f"{_age(summary.age(failure.time))} ago: {failure.error}"
                + (" [red](last run)[/red]" if entry.failing else "")
                if failure
                else "-",
            )
        stdout.print(table)
    stdout.print(f"Repository size: {human_size(summary.repository_size_bytes)}", highlight=False)
    verify = summary.last_verify
    if verify is None:
        stdout.print("Last verify: none recorded", highlight=False)
    else:
        verdict = "[green]ok[/green]" if verify.ok else "[red]FAILED[/red]"
        stdout.print(
            f"Last verify: {verdict} ({verify.backup_id}, {_age(summary.age(verify.time))} ago)",
            highlight=False,
        )
    measured = summary.requests_json()
    if measured is not None:
        by_op = measured["by_op"]
        stdout.print(
            f"Store requests of {measured['backup_id']}: {measured['total']} ("
            + (", ".join(f"{n} {op}" for op, n in by_op.items()) or "none")
            + ")",
            highlight=False,
        )
    if summary.offsite is not None:
        lag = summary.offsite
        age = lag.age(summary.now)
        stdout.print(
            f"Off-site ({lag.location}): "
            + (
                f"{len(lag.pending)} backups pending, oldest {_age(age)} old"
                if lag.pending and age is not None
                else "up to date"
            )
            + (f"; {lag.error}" if lag.error else ""),
            highlight=False,
        )
    if summary.fallback is not None and (summary.fallback.pending or summary.fallback.error):
        stdout.print(
            f"Fallback ({summary.fallback.location}): {len(summary.fallback.pending)} backups "
            "not yet synced back",
            highlight=False,
        )
    if problems:
        for problem in problems:
            stdout.print(f"[red]{problem}[/red]", highlight=False)
    else:
        stdout.print("[green]OK[/green]")
