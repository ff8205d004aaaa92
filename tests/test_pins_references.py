"""Issue 17, parts 2 and 3: pinned backups (``pin`` / ``unpin``, kept by retention, refused by
``delete`` unless forced, marked by ``list`` and ``show``) and backup references (``latest``,
``latest~N``, ``TYPE@latest``, ``TYPE~N``, ``@TIME``, ``TYPE@TIME``) wherever an id is taken,
plus ``list --tag``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryManager
from src.infra.backup.app.pins import decode_pin
from src.infra.backup.errors import BackupError, BackupNotFoundError, InvalidInputError
from src.infra.backup.format.ids import new_backup_id
from src.infra.backup.format.layout import pin_key
from src.infra.backup.repository.snapshot_writer import DataInput
from tests.helpers import run_cli_inline

CONFIG = """\
[backup]
backup_path = "repo"
retention_days = 0
"""


def local(text: str) -> datetime:
    """A local wall-clock time (January: far from any daylight saving change) as aware."""
    return datetime.fromisoformat(text).astimezone()


def made(
    manager: BackupManager, backup_type: str, when: datetime, tags: dict[str, str] | None = None
) -> str:
    """A backup of ``backup_type`` taken at ``when``, holding ``state`` = its id."""
    backup_id = new_backup_id(backup_type, f"{when.astimezone():%Y%m%d_%H%M%S}")
    repository = manager.open_repository(create=True)
    data = DataInput.from_value("state", {"id": backup_id})
    repository.create_snapshot_as(backup_id, when, backup_type, [data], tags=tags)
    return backup_id


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "config.toml").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def manager(cwd: Path) -> BackupManager:
    return BackupManager(BackupConfig(backup_path=cwd / "repo", retention_days=0))


@pytest.fixture
def ids(manager: BackupManager) -> dict[str, str]:
    """Five backups of two types on two days, newest last in this dict's order."""
    return {
        "daily_10": made(manager, "daily", local("2025-01-10 12:00:00")),
        "pre_10_13": made(manager, "pre_trade", local("2025-01-10 13:00:00"), {"order": "41"}),
        "pre_10_14": made(manager, "pre_trade", local("2025-01-10 14:00:00"), {"order": "42"}),
        "pre_11_09": made(manager, "pre_trade", local("2025-01-11 09:00:00"), {"order": "43"}),
        "daily_11": made(manager, "daily", local("2025-01-11 12:00:00"), {"release": "1.0"}),
    }


def cli_json(cwd: Path, *args: str) -> object:
    result = run_cli_inline(*args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def pins_dir(cwd: Path) -> Path:
    return cwd / "repo" / "pins"


# -- references ------------------------------------------------------------------------------


def test_every_reference_form_resolves(manager: BackupManager, ids: dict[str, str]) -> None:
    """Each form of the grammar against five backups of two types at known local times."""
    utc_1330 = local("2025-01-10 13:30:00").astimezone(timezone.utc)
    expected = {
        "latest": ids["daily_11"],
        "latest~0": ids["daily_11"],
        "latest~1": ids["pre_11_09"],
        "latest~4": ids["daily_10"],
        "pre_trade@latest": ids["pre_11_09"],
        "pre_trade~0": ids["pre_11_09"],
        "pre_trade~2": ids["pre_10_13"],
        "pre_trade@latest~1": ids["pre_10_14"],
        "daily@latest": ids["daily_11"],
        "@2025-01-10 13:30": ids["pre_10_13"],
        "@2025-01-10 13:00": ids["pre_10_13"],  # at or before: the whole second counts
        "@2025-01-10 12:59:59": ids["daily_10"],
        "@2025-01-10T13:30:00": ids["pre_10_13"],
        f"@{utc_1330:%Y-%m-%dT%H:%M:%S}Z": ids["pre_10_13"],  # with an offset (UTC)
        f"@{local('2025-01-10 13:30:00').isoformat()}": ids["pre_10_13"],
        "@2025-01-10": ids["pre_10_14"],  # a date alone: the end of that day
        "@2025-01-10 13:30~1": ids["daily_10"],
        "pre_trade@2025-01-10": ids["pre_10_14"],
        "pre_trade@2025-01-11 08:00": ids["pre_10_14"],
        "daily@2025-01-11 11:59": ids["daily_10"],
        ids["pre_10_13"]: ids["pre_10_13"],  # a plain id is itself
    }
    assert {ref: manager.resolve(ref) for ref in expected} == expected


def test_a_plain_id_resolves_without_a_listing(
    manager: BackupManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_listing(*_args: object) -> list[object]:
        raise AssertionError("listed")

    monkeypatch.setattr(manager, "list_backups", no_listing)
    assert manager.resolve("manual_20250101_000000") == "manual_20250101_000000"
    assert manager.resolve("not-there") == "not-there"  # not found is for the caller to say


@pytest.mark.parametrize(
    ("reference", "words"),
    [
        ("latest~5", ["only 5 backups", "latest~4", "daily_20250110_120000"]),
        ("pre_trade~3", ["only 3 backups of type 'pre_trade'"]),
        ("nosuch@latest", ["no backup of type 'nosuch'", "types: daily, pre_trade"]),
        ("nosuch~1", ["no backup of type 'nosuch'"]),
        ("@2025-01-09", ["no backup taken at or before 2025-01-09"]),
        ("daily@2025-01-10 11:00", ["no backup of type 'daily' taken at or before"]),
    ],
)
def test_unknown_references_are_not_found_exit_3(
    cwd: Path, manager: BackupManager, ids: dict[str, str], reference: str, words: list[str]
) -> None:
    """Out of range, unknown type, nothing that early: exit 3 naming the reference and what
    exists, for the API and for every command."""
    with pytest.raises(BackupNotFoundError) as caught:
        manager.resolve(reference)
    message = str(caught.value)
    assert repr(reference) in message and all(w in message for w in words), message
    result = run_cli_inline("show", reference, cwd=cwd)
    assert result.returncode == 3 and repr(reference) in result.stderr
    doc = json.loads(run_cli_inline("restore", reference, "--json", cwd=cwd).stdout)
    assert doc["error"]["exit_code"] == 3 and doc["error"]["type"] == "BackupNotFoundError"


@pytest.mark.parametrize(
    "reference", ["latest~", "latest~x", "latest~-1", "Pre_Trade~1", "pre trade@latest", "@soon"]
)
def test_malformed_references_are_usage_errors(
    cwd: Path, manager: BackupManager, ids: dict[str, str], reference: str
) -> None:
    with pytest.raises(InvalidInputError, match="invalid backup reference"):
        manager.resolve(reference)
    result = run_cli_inline("show", reference, cwd=cwd)
    assert result.returncode == 2 and "invalid backup reference" in result.stderr


def test_backups_at_the_same_instant_make_a_reference_ambiguous(
    cwd: Path, manager: BackupManager
) -> None:
    """Two imports with the very same time: ``latest`` could be either, so it is an error
    naming both; a type or an id tells them apart."""
    when = local("2025-01-12 10:00:00")
    first, second = made(manager, "alpha", when), made(manager, "beta", when)
    for reference in ("latest", "@2025-01-12 10:00"):
        with pytest.raises(BackupNotFoundError, match="ambiguous") as caught:
            manager.resolve(reference)
        assert first in str(caught.value) and second in str(caught.value)
    assert manager.resolve("beta@latest") == second
    result = run_cli_inline("cat", "latest", "state", cwd=cwd)
    assert result.returncode == 3 and "ambiguous" in result.stderr


def test_a_local_time_a_dst_change_repeats_is_ambiguous(
    manager: BackupManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """02:30 on 2025-10-26 happens twice in Berlin: refused (exit 3), never a guess; with an
    offset it is one instant."""
    made(manager, "daily", datetime(2025, 10, 25, 12, tzinfo=timezone.utc))
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        with pytest.raises(BackupNotFoundError, match=r"ambiguous.*offset"):
            manager.resolve("@2025-10-26 02:30")
        with pytest.raises(BackupNotFoundError, match="ambiguous"):
            manager.resolve("@2025-03-30 02:30")  # skipped by the clock
        assert manager.resolve("@2025-10-26T02:30+01:00").startswith("daily_")
        assert manager.resolve("@2025-10-26 04:00").startswith("daily_")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_every_command_accepts_references(
    cwd: Path, manager: BackupManager, ids: dict[str, str]
) -> None:
    """restore, show, diff (both sides), export, verify, cat, pin and unpin take references."""
    restored = cli_json(cwd, "restore", "pre_trade~1", "--target", str(cwd / "out"))
    assert restored["backup_id"] == ids["pre_10_14"]  # type: ignore[index]
    assert json.loads((cwd / "out" / "state.json").read_text()) == {"id": ids["pre_10_14"]}
    shown = cli_json(cwd, "show", "daily@latest")
    assert shown["backup_id"] == ids["daily_11"]  # type: ignore[index]
    changes = run_cli_inline("diff", "latest~1", "latest", cwd=cwd)
    assert changes.returncode == 0 and f"{ids['pre_11_09']} -> {ids['daily_11']}" in changes.stdout
    exported = cli_json(cwd, "export", "@2025-01-10 13:30", "--to", str(cwd / "exp"))
    assert exported["backup_id"] == ids["pre_10_13"]  # type: ignore[index]
    assert (cwd / "exp" / ids["pre_10_13"] / "state.json").exists()
    verified = cli_json(cwd, "verify", "pre_trade@latest")
    assert [r["backup_id"] for r in verified] == [ids["pre_11_09"]]  # type: ignore[union-attr,index]
    cat = run_cli_inline("cat", "pre_trade@2025-01-10", "state", cwd=cwd)
    assert cat.returncode == 0 and json.loads(cat.stdout) == {"id": ids["pre_10_14"]}
    assert cli_json(cwd, "pin", "latest~4")["backup_id"] == ids["daily_10"]  # type: ignore[index]
    assert cli_json(cwd, "unpin", "daily~1")["was_pinned"] is True  # type: ignore[index]


def test_the_seed_api_takes_references_and_ids_unchanged(
    manager: BackupManager, ids: dict[str, str]
) -> None:
    recovery = RecoveryManager(manager)
    assert recovery.restore_backup(ids["pre_10_13"]) == {"state": {"id": ids["pre_10_13"]}}
    assert recovery.restore_backup("pre_trade~1") == {"state": {"id": ids["pre_10_14"]}}
    assert manager.load_backup("latest") == {"state": {"id": ids["daily_11"]}}
    with pytest.raises(BackupNotFoundError):
        recovery.restore_backup("pre_trade_20990101_000000")
    with pytest.raises(BackupNotFoundError):
        recovery.restore_backup("latest~99")
    # The other RecoveryManager methods that take an id take references too.
    report = recovery.verify_backup_report("pre_trade~1")
    assert report.ok and report.backup_id == ids["pre_10_14"]
    assert recovery.verify_backup("latest") is True
    assert recovery.verify_backup("latest~99") is False  # an unknown one: False, logged
    out = recovery.restore_to_directory("daily@latest", manager.config.source_root / "out")
    assert out.backup_id == ids["daily_11"]
    plan = recovery.restore_in_place("latest", dry_run=True)
    assert plan.backup_id == ids["daily_11"]


def test_list_filters_by_tag_to_find_the_backup_before_an_order(
    cwd: Path, ids: dict[str, str]
) -> None:
    listed = cli_json(cwd, "list", "--tag", "order=42")
    assert [b["backup_id"] for b in listed] == [ids["pre_10_14"]]  # type: ignore[union-attr,index]
    assert listed[0]["tags"] == {"order": "42"}  # type: ignore[index]
    any_order = cli_json(cwd, "list", "--tag", "order")
    assert len(any_order) == 3  # type: ignore[arg-type]
    assert cli_json(cwd, "list", "--tag", "order=42", "--tag", "release=1.0") == []
    both = cli_json(cwd, "list", "--type", "daily", "--tag", "release")
    assert [b["backup_id"] for b in both] == [ids["daily_11"]]  # type: ignore[union-attr,index]
    text = run_cli_inline("list", "--tag", "order=42", cwd=cwd)
    assert text.returncode == 0 and ids["pre_10_14"] in text.stdout
    assert ids["pre_10_13"] not in text.stdout
    none = run_cli_inline("list", "--tag", "order=99", cwd=cwd)
    assert none.returncode == 0 and "No backups with those tags" in none.stdout
    assert run_cli_inline("list", "--tag", "=42", cwd=cwd).returncode == 2


# -- pins ------------------------------------------------------------------------------------


def test_pin_and_unpin_through_the_api(manager: BackupManager, ids: dict[str, str]) -> None:
    """Pinning twice is harmless; the pin records who and when; unpin says whether there was
    one; the backup itself is untouched."""
    before = manager.repository.read_manifest(ids["pre_10_13"])
    assert manager.pinned() == set()
    assert manager.pin(ids["pre_10_13"], note="before order 41") == ids["pre_10_13"]
    assert manager.pin(ids["pre_10_13"], note="before order 41") == ids["pre_10_13"]
    assert manager.pin("latest") == ids["daily_11"]
    assert manager.pinned() == {ids["pre_10_13"], ids["daily_11"]}
    pin = decode_pin(ids["pre_10_13"], manager.repository.store.get(pin_key(ids["pre_10_13"])))
    assert pin.note == "before order 41" and pin.host and pin.pinned_utc is not None
    assert manager.unpin(ids["pre_10_13"]) is True
    assert manager.unpin(ids["pre_10_13"]) is False
    assert manager.pinned() == {ids["daily_11"]}
    assert manager.repository.read_manifest(ids["pre_10_13"]) == before
    assert manager.load_backup(ids["pre_10_13"]) == {"state": {"id": ids["pre_10_13"]}}


def test_pin_of_an_unknown_backup_is_exit_3_and_writes_nothing(
    cwd: Path, manager: BackupManager, ids: dict[str, str]
) -> None:
    for args in (["pin", "daily_20990101_000000"], ["pin", "../x"], ["unpin", "daily_209901"]):
        result = run_cli_inline(*args, cwd=cwd)
        assert result.returncode == 3, result.stderr
        assert "not found" in result.stderr
    with pytest.raises(BackupNotFoundError):
        manager.pin("nosuch_20250101_000000")
    assert not pins_dir(cwd).exists()
    assert manager.pinned() == set()


def test_cli_pin_marks_list_and_show(cwd: Path, ids: dict[str, str]) -> None:
    pinned = run_cli_inline("pin", ids["pre_10_14"], "--note", "before order 42", cwd=cwd)
    assert pinned.returncode == 0 and f"Pinned backup {ids['pre_10_14']}" in pinned.stdout
    listed = {b["backup_id"]: b["pinned"] for b in cli_json(cwd, "list")}  # type: ignore[union-attr,index]
    assert listed == {i: i == ids["pre_10_14"] for i in ids.values()}
    table = run_cli_inline("list", cwd=cwd, env={"COLUMNS": "200"}).stdout
    assert "Pinned" in table
    assert [line for line in table.splitlines() if "pinned" in line.split()] == [
        line for line in table.splitlines() if ids["pre_10_14"] in line
    ]
    shown = cli_json(cwd, "show", ids["pre_10_14"])
    assert shown["pinned"] is True and shown["pin"]["note"] == "before order 42"  # type: ignore[index]
    assert cli_json(cwd, "show", ids["pre_10_13"])["pinned"] is False  # type: ignore[index]
    text = run_cli_inline("show", ids["pre_10_14"], cwd=cwd).stdout
    assert "pinned" in text and "before order 42" in text
    unpinned = run_cli_inline("unpin", ids["pre_10_14"], cwd=cwd)
    assert unpinned.returncode == 0 and "Unpinned" in unpinned.stdout
    again = run_cli_inline("unpin", ids["pre_10_14"], cwd=cwd)
    assert again.returncode == 0 and "was not pinned" in again.stdout
    assert "Pinned" not in run_cli_inline("list", cwd=cwd).stdout


def test_delete_refuses_a_pinned_backup_unless_forced_then_drops_its_pin(
    cwd: Path, manager: BackupManager, ids: dict[str, str]
) -> None:
    target = ids["pre_10_13"]
    manager.pin(target)
    refused = run_cli_inline("delete", target, "--yes", cwd=cwd)
    assert refused.returncode == 1 and "pinned" in refused.stderr
    with pytest.raises(BackupError, match="pinned"):
        manager.delete_backup(target)
    assert target in {b.backup_id for b in manager.list_backups()}
    forced = run_cli_inline("delete", target, "--yes", "--force", cwd=cwd)
    assert forced.returncode == 0, forced.stderr
    assert target not in {b.backup_id for b in manager.list_backups()}
    assert not (pins_dir(cwd) / f"{target}.json").exists()
    assert manager.pinned() == set()
    manager.delete_backup(ids["pre_10_14"])  # an unpinned one goes as before


def test_retention_days_keeps_a_pinned_backup(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    manager = BackupManager(
        BackupConfig(backup_path=tmp_path / "repo", retention_days=1, auto_prune=False)
    )
    old = [made(manager, "daily", now - timedelta(days=days)) for days in (10, 9, 8)]
    manager.pin(old[1])
    plan = {d.backup_id: d for d in manager.plan_retention()}
    assert plan[old[1]].keep and plan[old[1]].reason == "pinned"
    assert not plan[old[0]].keep
    new = manager.create_backup({"x": 1}, backup_type="daily")  # retention runs after it
    assert {b.backup_id for b in manager.list_backups()} == {new, old[1]}
    manager.unpin(old[1])
    assert manager.apply_retention(auto_prune=False) == [old[1]]


def test_a_retention_policy_keeps_a_pinned_backup(cwd: Path) -> None:
    now = datetime.now(timezone.utc)
    config = BackupConfig(
        backup_path=cwd / "repo",
        retention={"keep_last": 1},  # type: ignore[arg-type]
        auto_prune=False,
    )
    manager = BackupManager(config)
    old = [made(manager, "pre_trade", now - timedelta(hours=hours)) for hours in (5, 4, 3, 2)]
    manager.pin(old[0])
    plan = {d.backup_id: d for d in manager.plan_retention()}
    assert plan[old[0]].keep and "pinned" in plan[old[0]].reason
    assert plan[old[3]].keep and "pinned" not in plan[old[3]].reason
    assert [i for i in old if not plan[i].keep] == old[1:3]
    assert sorted(manager.apply_retention(auto_prune=False)) == sorted(old[1:3])
    assert {b.backup_id for b in manager.list_backups()} == {old[0], old[3]}


def test_prune_keeps_a_pinned_backup_and_says_why(tmp_path: Path) -> None:
    """The CLI path: ``prune --dry-run`` shows ``pinned``, ``prune`` deletes the others."""
    (tmp_path / "config.toml").write_text(
        '[backup]\nbackup_path = "repo"\nauto_prune = false\n[backup.retention]\nkeep_last = 1\n'
    )
    manager = BackupManager(BackupConfig(backup_path=tmp_path / "repo", retention_days=0))
    now = datetime.now(timezone.utc)
    old = [made(manager, "daily", now - timedelta(hours=hours)) for hours in (3, 2, 1)]
    assert run_cli_inline("pin", old[0], cwd=tmp_path).returncode == 0
    plan = cli_json(tmp_path, "prune", "--dry-run")["retention"]  # type: ignore[index]
    reasons = {d["backup_id"]: (d["keep"], d["reason"]) for d in plan}
    assert reasons[old[0]] == (True, "pinned") and reasons[old[1]][0] is False
    assert run_cli_inline("prune", cwd=tmp_path).returncode == 0
    assert {b.backup_id for b in manager.list_backups()} == {old[0], old[2]}


def test_retention_skips_a_backup_pinned_after_the_plan(tmp_path: Path) -> None:
    """Each delete checks the pin again: a pin set between plan and delete wins."""
    now = datetime.now(timezone.utc)
    manager = BackupManager(
        BackupConfig(backup_path=tmp_path / "repo", retention_days=1, auto_prune=False)
    )
    old = [made(manager, "daily", now - timedelta(days=days)) for days in (10, 9)]
    decisions = manager.plan_retention()
    manager.pin(old[0])
    assert manager.apply_retention(decisions=decisions, auto_prune=False) == []


@pytest.fixture
def restricted(s3_bucket: object) -> Iterator[object]:
    from tests.test_s3_restricted import deny_deletes_on_seaweedfs

    yield deny_deletes_on_seaweedfs(s3_bucket)  # type: ignore[arg-type]


def test_pins_on_s3_from_a_host_that_cannot_delete(restricted: object) -> None:
    """The bot host (PUT allowed, DELETE denied) can pin; its unpin fails with the clear
    'may not delete' error and the pin stays; the full host sees the pin and can unpin."""
    from tests.test_s3_restricted import Hosts

    assert isinstance(restricted, Hosts)
    bot = BackupManager(restricted.bot.config())
    first = bot.create_backup({"a": 1}, backup_type="pre_trade")
    bot.create_backup({"a": 2}, backup_type="pre_trade")
    assert bot.pin("pre_trade~1") == first
    with pytest.raises(BackupError, match="may not delete"):
        bot.unpin(first)
    full = BackupManager(restricted.full.config())
    assert full.pinned() == {first}
    with pytest.raises(BackupError, match="pinned"):
        full.delete_backup(first)
    assert full.unpin(first) is True
    assert bot.pinned() == set()
