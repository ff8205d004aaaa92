"""The seed's "Rollback nach Fehler" pattern as one context manager (and decorator).

The seed's long form::

    def risky_operation():
        try:
            # Backup vor Operation
            manager = BackupManager()
            backup_id = manager.create_backup(
                {"portfolio": current_portfolio_state()},
                backup_type="pre_trade"
            )

            # Riskante Operation
            execute_trade()

        except Exception as e:
            # Bei Fehler: Rollback
            recovery = RecoveryManager()
            data = recovery.restore_backup(backup_id)
            restore_portfolio_state(data["portfolio"])
            raise

The same with :func:`rollback_on_error`::

    from src.infra.backup.app.rollback import rollback_on_error

    def risky_operation():
        with rollback_on_error(
            state=current_portfolio_state,      # called once, on entry
            restore=restore_portfolio_state,    # called with the backed-up state on error
            key="portfolio",                    # the backup holds {"portfolio": state()}
            backup_type="pre_trade",
        ) as guard:
            execute_trade()
        print("traded; pre-trade backup:", guard.backup_id)

    # or as a decorator (each call takes its own backup):
    @rollback_on_error(state=current_portfolio_state, restore=restore_portfolio_state)
    def risky_operation():
        execute_trade()

    # in an asyncio bot the backup and the restore run in a worker thread:
    async with rollback_on_error(state=..., restore=...) as guard:
        await execute_trade()

Behaviour, precisely:

- On entry the state is backed up (``{key: state()}``, type ``backup_type``); if that fails
  the error propagates and the body never runs: no trade without a backup.
  ``guard.backup_id`` is the new backup's id.
- If the body raises an ``Exception`` (like the seed's ``except Exception``; not
  ``KeyboardInterrupt``/``SystemExit``, unless given in ``exceptions``), the backup is loaded
  again (verified) and ``restore(data[key])`` is called; then the **original exception** is
  re-raised. ``guard.rolled_back`` is then ``True``.
- If the rollback itself fails, that is logged as an error, kept in ``guard.rollback_error``
  and attached as a note to the original exception, which is still the one raised (so
  ``except`` clauses written for the operation keep working).
- ``manager`` defaults to the process-wide :func:`get_backup_manager` (``config.toml``);
  ``include_files`` as in :meth:`BackupManager.create_backup` (the configured file sources
  by default, like the seed; ``False`` for the fastest pre-trade backup).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import ContextDecorator
from types import TracebackType
from typing import Any, Literal, TypeVar

from src.infra.backup.app.manager import BackupManager, get_backup_manager
from src.infra.backup.app.recovery import RecoveryManager

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


class RollbackGuard(ContextDecorator):
    """What :func:`rollback_on_error` returns: a context manager (sync and ``async with``)
    and decorator. See the module docstring for the behaviour."""

    def __init__(
        self,
        *,
        state: Callable[[], Any],
        restore: Callable[[Any], object],
        manager: BackupManager | None = None,
        recovery: RecoveryManager | None = None,
        key: str = "portfolio",
        backup_type: str = "pre_trade",
        tags: Mapping[str, str] | None = None,
        note: str | None = None,
        include_files: bool | None = None,
        exceptions: tuple[type[BaseException], ...] = (Exception,),
    ) -> None:
        self.state = state
        self.restore = restore
        self.manager = manager
        self.recovery = recovery
        self.key = key
        self.backup_type = backup_type
        self.tags = tags
        self.note = note
        self.include_files = include_files
        self.exceptions = exceptions
        self.backup_id: str | None = None
        """The id of the backup taken on entry (``None`` before entry)."""
        self.rolled_back = False
        """Whether the state was restored after an error."""
        self.rollback_error: BaseException | None = None
        """What went wrong while rolling back, if anything."""

    def _recreate_cm(self) -> RollbackGuard:
        """A fresh guard per decorated call, so concurrent calls never share state."""
        return RollbackGuard(
            state=self.state,
            restore=self.restore,
            manager=self.manager,
            recovery=self.recovery,
            key=self.key,
            backup_type=self.backup_type,
            tags=self.tags,
            note=self.note,
            include_files=self.include_files,
            exceptions=self.exceptions,
        )

    def __call__(self, func: _F) -> _F:  # type: ignore[override]
        """Decorate ``func`` (``async def`` too): each call runs inside a fresh guard."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def guarded(*args: Any, **kwargs: Any) -> Any:
                async with self._recreate_cm():
                    return await func(*args, **kwargs)

            return guarded  # type: ignore[return-value]
        return super().__call__(func)  # type: ignore[return-value]

    def _manager(self) -> BackupManager:
        if self.manager is None:
            self.manager = get_backup_manager()
        return self.manager

    def _recovery(self) -> RecoveryManager:
        if self.recovery is None:
            self.recovery = RecoveryManager(self._manager())
        return self.recovery

    # -- sync ----------------------------------------------------------------------------

    def __enter__(self) -> RollbackGuard:
        self.backup_id = self._manager().create_backup(
            {self.key: self.state()},
            self.backup_type,
            tags=self.tags,
            note=self.note,
            include_files=self.include_files,
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is None or not isinstance(exc, self.exceptions) or self.backup_id is None:
            return False
        try:
            data = self._recovery().restore_backup(self.backup_id)
            self.restore(data[self.key])
        except Exception as failure:  # noqa: BLE001 - reported, then the original re-raised
            self._failed(exc, failure)
            return False
        self._done(exc)
        return False  # re-raise the original exception

    # -- async ---------------------------------------------------------------------------

    async def __aenter__(self) -> RollbackGuard:
        self.backup_id = await self._manager().acreate_backup(
            {self.key: self.state()},
            self.backup_type,
            tags=self.tags,
            note=self.note,
            include_files=self.include_files,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is None or not isinstance(exc, self.exceptions) or self.backup_id is None:
            return False
        try:
            data = await self._recovery().arestore_backup(self.backup_id)
            outcome = self.restore(data[self.key])
            if inspect.isawaitable(outcome):  # an ``async def`` restore function
                await _await(outcome)
        except Exception as failure:  # noqa: BLE001 - reported, then the original re-raised
            self._failed(exc, failure)
            return False
        self._done(exc)
        return False

    # -- reporting -----------------------------------------------------------------------

    def _done(self, exc: BaseException) -> None:
        self.rolled_back = True
        log.warning(
            "rolled back %r to backup %s after %s: %s",
            self.key,
            self.backup_id,
            type(exc).__name__,
            exc,
            extra={"backup_id": self.backup_id},
        )

    def _failed(self, exc: BaseException, failure: BaseException) -> None:
        self.rollback_error = failure
        log.error(
            "ROLLBACK FAILED: %r was not restored from backup %s after %s: %s",
            self.key,
            self.backup_id,
            type(exc).__name__,
            failure,
            exc_info=failure,
            extra={"backup_id": self.backup_id},
        )
        add_note = getattr(exc, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(
                f"rollback to backup {self.backup_id} failed: {type(failure).__name__}: {failure}"
            )


async def _await(outcome: Awaitable[object]) -> None:
    await outcome


def rollback_on_error(
    *,
    state: Callable[[], Any],
    restore: Callable[[Any], object],
    manager: BackupManager | None = None,
    recovery: RecoveryManager | None = None,
    key: str = "portfolio",
    backup_type: str = "pre_trade",
    tags: Mapping[str, str] | None = None,
    note: str | None = None,
    include_files: bool | None = None,
    exceptions: tuple[type[BaseException], ...] = (Exception,),
) -> RollbackGuard:
    """Back up ``{key: state()}`` now; if the guarded block raises, restore it and re-raise.

    Usable as ``with``, ``async with`` (backup and restore in a worker thread; ``restore``
    may then be ``async``) and as a decorator. Full description and the seed's long form:
    see :mod:`src.infra.backup.app.rollback`.
    """
    return RollbackGuard(
        state=state,
        restore=restore,
        manager=manager,
        recovery=recovery,
        key=key,
        backup_type=backup_type,
        tags=tags,
        note=note,
        include_files=include_files,
        exceptions=exceptions,
    )


__all__ = ["RollbackGuard", "rollback_on_error"]
