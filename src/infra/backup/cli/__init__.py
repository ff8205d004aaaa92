"""The ``peak-backup`` command line: create, list, show, restore, delete, verify.

Every command takes ``--json`` for scripts. Exit codes: 0 ok, 1 error, 2 usage, 3 not found,
4 integrity failure, 5 repository busy, 6 configuration error, 7 cancelled (no confirmation),
8 wrong or missing passphrase, 9 stale or failing (``status``).
"""

from __future__ import annotations

import logging
import sys

import click

from src.infra.backup._version import __version__
from src.infra.backup.cli import (
    cmd_cat,
    cmd_check,
    cmd_create,
    cmd_delete,
    cmd_diff,
    cmd_export,
    cmd_import,
    cmd_init,
    cmd_key,
    cmd_list,
    cmd_prune,
    cmd_restore,
    cmd_run,
    cmd_show,
    cmd_status,
    cmd_sync,
    cmd_verify,
)
from src.infra.backup.cli.context import EXIT_ERROR, EXIT_OK, EXIT_USAGE, Context
from src.infra.backup.cli.output import emit_json, stderr
from src.infra.backup.errors import BackupError
from src.infra.backup.monitoring.logging_setup import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="peak-backup")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $PEAK_TRADE_CONFIG_PATH, ./config.toml, ./config/config.toml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the passphrase of an encrypted repository from this file (first line).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also log what each step does.")
@click.option("--log-json", is_flag=True, help="Write log lines as JSON objects (on stderr).")
@click.pass_context
def main(
    ctx: click.Context,
    config_path: str | None,
    as_json: bool,
    password_file: str | None,
    verbose: bool,
    log_json: bool,
) -> None:
    """Peak-Trade backup and recovery."""
    configure_logging(logging.INFO if verbose else logging.WARNING, json_format=log_json)
    ctx.obj = Context(config_path, as_json, password_file)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; expected errors never show a traceback."""
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        main.main(args=argv, prog_name="peak-backup", standalone_mode=False)
    except click.exceptions.Abort:
        stderr.print("Aborted.")
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except BackupError as exc:
        code = getattr(exc, "exit_code", EXIT_ERROR)
        if as_json:
            emit_json(
                {"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": code}}
            )
        else:
            stderr.print(f"[red]error:[/red] {exc}", highlight=False)
        return code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except KeyboardInterrupt:
        stderr.print("Interrupted.")
        return 130
    return EXIT_OK


def entry_point() -> None:
    """Console-script entry point (``peak-backup``)."""
    sys.exit(run())


# Every command, registered explicitly (one module per command, as restic's cmd_<name>.go).
for _command in (
    cmd_create.create,
    cmd_list.list_command,
    cmd_show.show,
    cmd_restore.restore,
    cmd_delete.delete,
    cmd_verify.verify,
    cmd_check.check,
    cmd_prune.prune_command,
    cmd_init.init,
    cmd_key.key,
    cmd_diff.diff,
    cmd_cat.cat,
    cmd_export.export_command,
    cmd_import.import_command,
    cmd_sync.sync_command,
    cmd_run.run_command,
    cmd_status.status,
):
    main.add_command(_command)
