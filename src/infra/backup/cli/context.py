"""State and conventions every command shares: the invocation's Context (config, output mode,
passphrase, managers), the exit codes, and the options every command accepts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from src.infra.backup.app.config import load_backup_config
from src.infra.backup.app.manager import BackupManager
from src.infra.backup.app.passphrase import read_passphrase

if TYPE_CHECKING:
    from src.infra.backup.app.recovery import RecoveryManager

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTEGRITY = 4
EXIT_BUSY = 5
EXIT_CONFIG = 6
EXIT_CANCELLED = 7
EXIT_PASSPHRASE = 8
EXIT_WARNINGS = 10  # the backup was made, with warnings (restic uses 3, which is "not found" here)


class Context:
    """Shared state of one invocation: the config file and the output mode."""

    def __init__(
        self, config_path: str | None, as_json: bool, password_file: str | None = None
    ) -> None:
        self.config_path = config_path
        self.password_file = password_file
        self.as_json = as_json
        self.confirm_new_passphrase = False
        self._manager: BackupManager | None = None
        self._passphrase: str | None = None

    def passphrase(self) -> str:
        """The repository passphrase, read once (environment, password file, or prompt)."""
        if self._passphrase is None:
            config = self.manager.config
            self._passphrase = read_passphrase(
                password_file=self.password_file or config.password_file,
                confirm=self.confirm_new_passphrase,
            )
        return self._passphrase

    @property
    def manager(self) -> BackupManager:
        if self._manager is None:
            self._manager = BackupManager(
                load_backup_config(self.config_path), passphrase=self.passphrase
            )
        return self._manager

    def close(self) -> None:
        """At the end of the command: stop what the repository's store holds open."""
        if self._manager is not None:
            self._manager.close()

    def resolve(self, reference: str) -> str:
        """The backup id ``reference`` names (an id, ``latest``, ``pre_trade~2``, ``@TIME``...):
        every command that takes an id resolves it here (exit 3 if unknown or ambiguous)."""
        return self.manager.resolve(reference)

    @property
    def recovery(self) -> RecoveryManager:
        from src.infra.backup.app.recovery import RecoveryManager  # restore commands only

        return RecoveryManager(self.manager)


_F = TypeVar("_F", bound=Callable[..., Any])


def json_option(func: _F) -> _F:
    """``--json`` and ``--password-file`` on every command (also accepted before the
    command name)."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Context).as_json = True  # type: ignore[union-attr]

    def set_password_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.find_object(Context).password_file = value  # type: ignore[union-attr]

    func = click.option(
        "--password-file",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=set_password_file,
        is_eager=True,
        help="Read the passphrase of an encrypted repository from this file.",
    )(func)
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        is_eager=True,
        help="Print machine-readable JSON.",
    )(func)
