"""The seed's "Rollback nach Fehler" as ``rollback_on_error``, and the asyncio API
(``acreate_backup``, ``arestore_backup``, ``arestore_latest_backup``)."""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import src.infra.backup.app.manager as manager_module
from src.infra.backup import (
    BackupConfig,
    BackupManager,
    BackupNotFoundError,
    RecoveryManager,
    UnsupportedValueError,
)
from src.infra.backup.app.rollback import RollbackGuard, rollback_on_error


class TradeFailedError(Exception):
    pass


class Bot:
    """A stand-in for the bot's portfolio: state(), restore() and a trade that may fail."""

    def __init__(self) -> None:
        self.portfolio: dict[str, Any] = {
            "equity": Decimal("10000"),
            "positions": [{"symbol": "BTC/USD", "size": Decimal("0.1")}],
        }
        self.restored: list[Any] = []

    def state(self) -> dict[str, Any]:
        return self.portfolio

    def restore(self, state: Any) -> None:
        self.restored.append(state)
        self.portfolio = state

    def execute_trade(self, fail: bool) -> None:
        self.portfolio["equity"] -= Decimal("500")
        self.portfolio["positions"][0]["size"] = Decimal("0.2")
        if fail:
            raise TradeFailedError("exchange rejected the order")


BEFORE = {"equity": Decimal("10000"), "positions": [{"symbol": "BTC/USD", "size": Decimal("0.1")}]}


# --------------------------------------------------------------------------- rollback


def test_success_keeps_the_trade_and_the_backup(manager: BackupManager) -> None:
    bot = Bot()
    with rollback_on_error(state=bot.state, restore=bot.restore, manager=manager) as guard:
        assert isinstance(guard, RollbackGuard) and guard.backup_id is not None
        bot.execute_trade(fail=False)
    assert not guard.rolled_back and bot.restored == []
    assert bot.portfolio["equity"] == Decimal("9500")
    assert manager.load_backup(guard.backup_id) == {"portfolio": BEFORE}
    assert manager.get_backup_info(guard.backup_id).backup_type == "pre_trade"


def test_error_restores_the_backed_up_state_and_reraises(manager: BackupManager) -> None:
    bot = Bot()
    guard = rollback_on_error(state=bot.state, restore=bot.restore, manager=manager)
    with pytest.raises(TradeFailedError) as raised, guard:
        bot.execute_trade(fail=True)
    assert str(raised.value) == "exchange rejected the order"
    assert guard.rolled_back and guard.rollback_error is None
    assert bot.restored == [BEFORE]  # the state as it was on entry, not as the trade left it
    assert bot.portfolio == BEFORE


def test_options_key_type_tags_note(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    manager = BackupManager(
        BackupConfig(
            backup_path=tmp_path / "repo", retention_days=0, sources=["f.txt"], base_dir=tmp_path
        )
    )
    recovery = RecoveryManager(manager)
    seen: list[Any] = []
    with (
        pytest.raises(ValueError, match="boom"),
        rollback_on_error(
            state=lambda: [1, 2],
            restore=seen.append,
            manager=manager,
            recovery=recovery,
            key="orders",
            backup_type="pre_session",
            tags={"order": "42"},
            note="before open",
            include_files=False,
        ) as guard,
    ):
        raise ValueError("boom")
    assert seen == [[1, 2]]
    info = manager.get_backup_info(guard.backup_id or "")
    assert (info.backup_type, info.tags, info.note) == (
        "pre_session",
        {"order": "42"},
        "before open",
    )
    assert info.files == ["orders.json"]  # include_files=False: no file sources
    with rollback_on_error(state=lambda: 1, restore=seen.append, manager=manager) as guard2:
        pass
    assert "f.txt" in manager.get_backup_info(guard2.backup_id or "").files  # seed default


def test_default_manager_comes_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text('[backup]\nbackup_path = "./bk"\nretention_days = 0\n')
    monkeypatch.setattr(manager_module, "_default_manager", None)
    with rollback_on_error(state=lambda: {"a": 1}, restore=lambda _: None) as guard:
        pass
    assert (tmp_path / "bk" / "snapshots" / f"{guard.backup_id}.json").exists()


def test_failed_backup_means_no_trade(manager: BackupManager) -> None:
    ran = []
    with (
        pytest.raises(UnsupportedValueError, match=r'data\["portfolio"\]\["lock"\]'),
        rollback_on_error(
            state=lambda: {"lock": threading.Lock()}, restore=ran.append, manager=manager
        ),
    ):
        ran.append("trade")
    assert ran == [] and manager.list_backups() == []


def test_base_exceptions_are_not_rolled_back_unless_asked(manager: BackupManager) -> None:
    restored: list[Any] = []
    with (
        pytest.raises(KeyboardInterrupt),
        rollback_on_error(state=lambda: 1, restore=restored.append, manager=manager),
    ):
        raise KeyboardInterrupt
    assert restored == []
    with (
        pytest.raises(KeyboardInterrupt),
        rollback_on_error(
            state=lambda: 2,
            restore=restored.append,
            manager=manager,
            exceptions=(BaseException,),
        ),
    ):
        raise KeyboardInterrupt
    assert restored == [2]
    with (
        pytest.raises(TradeFailedError),
        rollback_on_error(
            state=lambda: 3, restore=restored.append, manager=manager, exceptions=(KeyError,)
        ),
    ):
        raise TradeFailedError
    assert restored == [2]


def test_failed_rollback_still_raises_the_original(
    manager: BackupManager, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_restore(_: Any) -> None:
        raise OSError("disk gone")

    guard = rollback_on_error(state=lambda: 1, restore=broken_restore, manager=manager)
    with pytest.raises(TradeFailedError) as raised, guard:
        raise TradeFailedError("order failed")
    assert not guard.rolled_back
    assert isinstance(guard.rollback_error, OSError)
    assert "ROLLBACK FAILED" in caplog.text
    if sys.version_info >= (3, 11):
        assert any("disk gone" in note for note in raised.value.__notes__)

    # A backup deleted meanwhile: the restore fails the same way.
    def delete_then_fail() -> None:
        manager.delete_backup(guard2.backup_id or "", force=True)
        raise TradeFailedError("again")

    guard2 = rollback_on_error(state=lambda: 1, restore=lambda _: None, manager=manager)
    with pytest.raises(TradeFailedError), guard2:
        delete_then_fail()
    assert isinstance(guard2.rollback_error, BackupNotFoundError)


def test_decorator_takes_a_backup_per_call(manager: BackupManager) -> None:
    bot = Bot()

    @rollback_on_error(state=bot.state, restore=bot.restore, manager=manager)
    def risky_operation(fail: bool) -> str:
        bot.execute_trade(fail)
        return "done"

    assert risky_operation(False) == "done"
    assert bot.portfolio["equity"] == Decimal("9500")
    with pytest.raises(TradeFailedError):
        risky_operation(True)
    assert bot.portfolio["equity"] == Decimal("9500")  # back to the state before the 2nd call
    assert len(manager.list_backups("pre_trade")) == 2
    assert risky_operation.__name__ == "risky_operation"


# --------------------------------------------------------------------------- asyncio


def test_async_signatures_match() -> None:
    assert inspect.iscoroutinefunction(BackupManager.acreate_backup)
    assert (
        inspect.signature(BackupManager.acreate_backup).parameters
        == inspect.signature(BackupManager.create_backup).parameters
    )
    assert inspect.signature(RecoveryManager.arestore_latest_backup).parameters.keys() == {
        "self",
        "backup_type",
    }


def test_async_create_and_restore(manager: BackupManager) -> None:
    recovery = RecoveryManager(manager)
    threads: list[int] = []

    async def run() -> None:
        first = await manager.acreate_backup({"portfolio": BEFORE}, "pre_trade")
        second = await manager.acreate_backup(
            {"portfolio": {"equity": 1}},
            backup_type="scheduled",
            tags={"k": "v"},
            note="n",
            include_files=False,
            progress=lambda _: threads.append(threading.get_ident()),
        )
        info = manager.get_backup_info(second)
        assert (info.backup_type, info.tags, info.note) == ("scheduled", {"k": "v"}, "n")
        assert await recovery.arestore_backup(first) == {"portfolio": BEFORE}
        assert await recovery.arestore_latest_backup() == {"portfolio": {"equity": 1}}
        assert await recovery.arestore_latest_backup("pre_trade") == {"portfolio": BEFORE}
        assert await recovery.arestore_latest_backup(backup_type="scheduled") == {
            "portfolio": {"equity": 1}
        }
        with pytest.raises(BackupNotFoundError):
            await recovery.arestore_backup("manual_20000101_000000")
        with pytest.raises(BackupNotFoundError):
            await recovery.arestore_latest_backup("daily")
        with pytest.raises(UnsupportedValueError):
            await manager.acreate_backup({"x": object()})

    asyncio.run(run())
    assert threads and threading.get_ident() not in threads  # worked off the loop's thread


def test_async_rollback_guard(manager: BackupManager) -> None:
    bot = Bot()
    restored: list[Any] = []

    async def restore_async(state: Any) -> None:
        await asyncio.sleep(0)
        restored.append(state)

    async def run() -> None:
        async with rollback_on_error(state=bot.state, restore=bot.restore, manager=manager) as g:
            bot.execute_trade(fail=False)
        assert not g.rolled_back and g.backup_id
        guard = rollback_on_error(state=bot.state, restore=restore_async, manager=manager)
        with pytest.raises(TradeFailedError):
            async with guard:
                bot.execute_trade(fail=True)
        assert guard.rolled_back and restored[0]["equity"] == Decimal("9500")

        @rollback_on_error(state=bot.state, restore=bot.restore, manager=manager)
        async def trade_async(fail: bool) -> int:
            await asyncio.sleep(0)
            bot.execute_trade(fail)
            return 7

        assert await trade_async(False) == 7
        equity = bot.portfolio["equity"]
        with pytest.raises(TradeFailedError):
            await trade_async(True)
        assert bot.portfolio["equity"] == equity

    asyncio.run(run())


def _trades(count: int) -> list[dict[str, Any]]:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return [
        {
            "id": i,
            "symbol": ("BTC/USD", "ETH/USD", "SOL/USD")[i % 3],
            "side": "buy" if i % 2 else "sell",
            "price": 40000.5 + i,
            "size": Decimal(i % 7) / 100,
            "opened_at": start + timedelta(seconds=i),
            "note": f"trade {i}",
        }
        for i in range(count)
    ]


async def _backup_with_a_paused_phase(
    manager: BackupManager, state: dict[str, Any], ticks_wanted: int
) -> tuple[str, bool, list[str], int]:
    """Run ``acreate_backup`` and hold the backup in the middle (its first progress call:
    values encoded and chunked, nothing committed) until the event loop has run
    ``ticks_wanted`` turns of this task. Returns (backup id, whether the backup was still
    running after those turns, the backups listed then, the worker thread's id)."""
    reached, resume = threading.Event(), threading.Event()
    worker: list[int] = []

    def hold(_size: int) -> None:
        if reached.is_set():
            return
        worker.append(threading.get_ident())
        reached.set()
        # On the loop's thread this would block the loop: the ticks never come, and it fails.
        if not resume.wait(10):
            raise TimeoutError("the event loop did not run while the backup was held")

    backup = asyncio.create_task(manager.acreate_backup(state, "pre_trade", progress=hold))
    while not reached.is_set():
        await asyncio.sleep(0.001)
    ticks = 0
    while ticks < ticks_wanted:  # the controlled phase: the backup is held mid-way
        await asyncio.sleep(0)
        ticks += 1
    still_running = not backup.done()
    listed = [info.backup_id for info in BackupManager(manager.config).list_backups()]
    resume.set()
    return await backup, still_running, listed, worker[0]


@pytest.mark.parametrize("typed", [True, False], ids=["typed-trades", "plain-trades"])
def test_event_loop_keeps_ticking_during_a_large_backup(
    manager: BackupManager, typed: bool
) -> None:
    """The whole backup runs off the loop's thread: while a backup is held in the middle
    (encoded and chunked, not committed) the loop keeps running other tasks, and the backup
    then completes. Both encodings: typed values (Decimal, datetime) and plain ones."""
    trades = _trades(5_000)
    if not typed:  # only str/int/float: ormsgpack packs it in one call that holds the GIL
        trades = [{k: v for k, v in t.items() if k not in ("size", "opened_at")} for t in trades]
    warm_up = manager.create_backup({"warm_up": 1})
    backup_id, still_running, listed, worker = asyncio.run(
        _backup_with_a_paused_phase(manager, {"history": trades}, ticks_wanted=50)
    )
    assert still_running, "the loop only ran once the backup was over"
    assert listed == [warm_up], "the held backup was already committed"
    assert worker != threading.get_ident()
    assert manager.load_backup(backup_id) == {"history": trades}
