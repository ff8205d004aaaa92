"""Backups off the trading path: ``start_backup`` captures the state at the call and stores it
in the background (a forked child encodes it; see ``app/background.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import (
    BackupConfig,
    BackupManager,
    InvalidInputError,
    RecoveryManager,
    UnsupportedValueError,
)
from src.infra.backup.app import background
from src.infra.backup.repository.history import current_host, read_status
from tests.helpers import PROJECT_ROOT


def _manager(path: Path) -> BackupManager:
    return BackupManager(BackupConfig(backup_path=str(path / "repo"), retention_days=0))


def _state(trades: int = 2_000) -> dict[str, Any]:
    return {
        "portfolio": {"positions": [{"symbol": "BTC", "size": Decimal("0.5")}], "equity": 10_000},
        "history": {
            "trades": [{"id": n, "price": Decimal(f"{100 + n}.25")} for n in range(trades)]
        },
    }


def test_the_backup_holds_the_state_as_it_was_at_the_call(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    state = _state()
    expected = _state()
    handle = manager.start_backup(state, "pre_trade", tags={"order": "42"})
    # The bot goes on at once: in place and deep inside.
    state["history"]["trades"][3]["price"] = Decimal("1")
    state["portfolio"]["positions"][0]["size"] = Decimal("9")
    state["history"]["trades"].append({"id": -1, "price": Decimal("0")})
    state["new"] = "later"
    backup_id = handle.result(timeout=60)
    assert handle.done()
    assert backup_id.startswith("pre_trade_")
    assert _manager(tmp_path).load_backup(backup_id) == expected
    info = manager.get_backup_info(backup_id)
    assert info.tags == {"order": "42"}


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Background backups wait for their capture until this event is set."""
    event = threading.Event()
    payloads = background.Capture.payloads

    def gated(self: background.Capture) -> list[tuple[str, bytes | memoryview]]:
        assert event.wait(30)
        return payloads(self)

    monkeypatch.setattr(background.Capture, "payloads", gated)
    return event


def test_backups_are_stored_in_call_order_with_the_time_of_the_call(
    tmp_path: Path, gate: threading.Event
) -> None:
    manager = _manager(tmp_path)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    handles = [manager.start_backup({"n": n}, "pre_trade") for n in range(5)]
    called = datetime.now(timezone.utc)
    time.sleep(1.1)  # held back: the commits come a second or more after the calls
    gate.set()
    assert manager.wait_for_backups(timeout=60)
    ids = [h.result() for h in handles]
    assert len(set(ids)) == 5
    assert [i.backup_id for i in manager.list_backups()] == list(reversed(ids))  # newest first
    assert [manager.load_backup(i) for i in ids] == [{"n": n} for n in range(5)]
    for backup_id in ids:  # the time of the call, not of the commit
        assert before <= manager.get_backup_info(backup_id).timestamp_utc <= called


def test_load_backup_of_a_pending_backup_waits_for_it(
    tmp_path: Path, gate: threading.Event
) -> None:
    manager = _manager(tmp_path)
    manager.create_backup({"n": 0}, "daily")  # the repository exists
    before = datetime.now().astimezone()
    handle = manager.start_backup({"n": 1}, "pre_trade")
    after = datetime.now().astimezone()
    if f"{before:%Y%m%d_%H%M%S}" != f"{after:%Y%m%d_%H%M%S}":
        pytest.skip("the call spanned a second boundary: its id is not known in advance")
    pending_id = f"pre_trade_{before:%Y%m%d_%H%M%S}"
    assert not handle.done()
    threading.Timer(0.2, gate.set).start()
    assert manager.load_backup(pending_id) == {"n": 1}  # waited for the background backup
    assert handle.result(timeout=30) == pending_id
    assert RecoveryManager(manager).restore_backup(pending_id) == {"n": 1}


def test_bad_input_fails_at_the_call_and_writes_nothing(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    with pytest.raises(InvalidInputError):
        manager.start_backup({"a": 1}, "Not A Type")
    with pytest.raises(InvalidInputError):
        manager.start_backup({"bad key/": 1})
    # A small state is encoded at the call: an unsupported value fails there, with the path.
    with pytest.raises(UnsupportedValueError) as info:
        manager.start_backup({"portfolio": {"positions": [object()]}}, "pre_trade")
    assert 'data["portfolio"]["positions"][0]' in str(info.value)
    assert not (tmp_path / "repo").exists()  # nothing written
    assert manager.wait_for_backups(timeout=0)  # nothing queued


def test_a_large_state_with_an_unsupported_value_fails_from_result_and_in_status(
    tmp_path: Path,
) -> None:
    manager = _manager(tmp_path)
    first = manager.create_backup({"a": 1})
    state = _state()
    state["portfolio"]["positions"].append(object())
    assert not background.is_small_state(state)  # captured by a forked child
    handle = manager.start_backup(state, "pre_trade")
    with pytest.raises(UnsupportedValueError) as info:
        handle.result(timeout=60)
    assert 'data["portfolio"]["positions"][1]' in str(info.value)
    status = read_status(manager.open_repository(create=True).store, current_host())
    assert status.types["pre_trade"].last_failure is not None  # recorded, never lost silently
    assert [i.backup_id for i in manager.list_backups()] == [first]


@dataclass
class _Position:
    symbol: str
    sizes: list[int]


def test_small_state_bounds() -> None:
    limit = background.SMALL_STATE_OBJECTS
    assert background.is_small_state({})
    assert background.is_small_state({"trades": list(range(limit - 1))})
    assert not background.is_small_state({"trades": list(range(limit))})
    assert not background.is_small_state({"a": [[0] * 100 for _ in range(100)]})  # nested
    assert not background.is_small_state({"blob": b"x" * (background.SMALL_STATE_BYTES + 1)})
    assert background.is_small_state({"p": _Position("BTC", [1, 2])})  # fields are walked
    assert not background.is_small_state({"p": _Position("BTC", list(range(limit)))})
    cycle: list[Any] = []
    cycle.append(cycle)
    assert not background.is_small_state({"c": cycle})  # the walk is bounded


def test_small_states_are_encoded_at_the_call_and_large_ones_by_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks = 0
    real_fork = os.fork

    def counting_fork() -> int:
        nonlocal forks
        forks += 1
        return real_fork()

    monkeypatch.setattr(os, "fork", counting_fork)
    manager = _manager(tmp_path)
    small = manager.start_backup({"n": 1})
    assert forks == 0
    large = manager.start_backup(_state())
    assert forks == 1
    assert manager.load_backup(small.result(timeout=60)) == {"n": 1}
    assert manager.load_backup(large.result(timeout=60)) == _state()


def test_without_fork_the_values_are_encoded_in_the_calling_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "fork")
    manager = _manager(tmp_path)
    state = _state(10)
    handle = manager.start_backup(state)
    state["history"]["trades"].clear()
    assert manager.load_backup(handle.result(timeout=60)) == _state(10)


async def _astart(manager: BackupManager, state: dict[str, Any]) -> str:
    import asyncio

    handle = await manager.astart_backup(state, "pre_trade")
    return await asyncio.wrap_future(handle)


def test_astart_backup(tmp_path: Path) -> None:
    import asyncio

    manager = _manager(tmp_path)
    backup_id = asyncio.run(_astart(manager, {"a": 1}))
    assert manager.load_backup(backup_id) == {"a": 1}


EXITING = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from src.infra.backup import BackupConfig, BackupManager
    manager = BackupManager(BackupConfig(backup_path=sys.argv[1], retention_days=0))
    manager.create_backup({"n": 0})
    state = {"trades": list(range(int(sys.argv[3])))}
    manager.start_backup(state, "pre_trade")
    print("started", flush=True)
    if sys.argv[4] == "wait":
        sys.stdin.read()
    """
)


def test_pending_backups_are_stored_at_interpreter_exit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    done = subprocess.run(
        [sys.executable, "-c", EXITING, str(repo), str(PROJECT_ROOT), "1000", "exit"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    manager = BackupManager(BackupConfig(backup_path=str(repo)))
    assert sorted(i.backup_type for i in manager.list_backups()) == ["manual", "pre_trade"]


def test_sigkill_while_a_backup_is_pending_leaves_the_repository_clean(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    process = subprocess.Popen(
        [sys.executable, "-c", EXITING, str(repo), str(PROJECT_ROOT), "3000000", "wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGKILL)  # between the call and durability (most likely)
    process.wait(timeout=30)
    manager = BackupManager(BackupConfig(backup_path=str(repo)))
    ids = [i.backup_id for i in manager.list_backups()]
    assert ids[-1].startswith("manual_") and manager.load_backup(ids[-1]) == {"n": 0}
    assert len(ids) <= 2  # the pending one is lost, or (rarely) it was durable already
    report = manager.check()
    assert report.clean, report.to_json()
    manager.prune(grace=timedelta(0))  # leftovers of the killed writer
    assert manager.check().clean
