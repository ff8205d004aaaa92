"""The ``peak-backup`` command line: create, list, show, restore, delete, verify.

Every command takes ``--json`` for scripts. Exit codes: 0 ok, 1 error, 2 usage, 3 not found,
4 integrity failure, 5 repository busy, 6 configuration error, 7 cancelled (no confirmation),
8 wrong or missing passphrase, 9 stale or failing (``status``), 10 backup made with warnings.

The top layer: one module per command (``cmd_<name>.py``) over ``context.py`` and
``output.py``; below it everything is usable without a terminal. Nothing imports the CLI.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click
from rich.markup import escape

from src.infra.backup._version import __version__
from src.infra.backup.cli.context import EXIT_ERROR, EXIT_OK, EXIT_USAGE, Context
from src.infra.backup.cli.output import emit_json, stderr
from src.infra.backup.errors import BackupError
from src.infra.backup.monitoring.logging_setup import configure_logging

# Every command, registered explicitly: its name -> (module of this package, the click command
# in it). One module per command, as restic's cmd_<name>.go; a command's module is imported
# only when that command runs (or help lists them all), so starting the CLI stays cheap.
COMMANDS: dict[str, tuple[str, str]] = {
    "create": ("cmd_create", "create"),
    "list": ("cmd_list", "list_command"),
    "show": ("cmd_show", "show"),
    "restore": ("cmd_restore", "restore"),
    "delete": ("cmd_delete", "delete"),
    "verify": ("cmd_verify", "verify"),
    "check": ("cmd_check", "check"),
    "prune": ("cmd_prune", "prune_command"),
    "migrate": ("cmd_migrate", "migrate_command"),
    "init": ("cmd_init", "init"),
    "key": ("cmd_key", "key"),
    "diff": ("cmd_diff", "diff"),
    "cat": ("cmd_cat", "cat"),
    "export": ("cmd_export", "export_command"),
    "import": ("cmd_import", "import_command"),
    "sync": ("cmd_sync", "sync_command"),
    "run": ("cmd_run", "run_command"),
    "status": ("cmd_status", "status"),
    "alert": ("cmd_alert", "alert"),
    "pin": ("cmd_pin", "pin"),
    "unpin": ("cmd_pin", "unpin"),
}


class CommandTable(click.Group):
    """The ``peak-backup`` group: its commands come from :data:`COMMANDS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=CommandTable, context_settings={"help_option_names": ["-h", "--help"]})
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
    ctx.call_on_close(ctx.obj.close)  # an S3 store's threads end with the command


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
            # escaped: a config error names keys such as [backup.s3], not markup
            stderr.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
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
