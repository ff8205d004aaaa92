"""Bad input and damage: each a clear error; other backups unaffected; listing still works."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stored_chunks import Damage, damage_chunk, is_packed, repo_format

from src.infra.backup import (
    BackupConfig,
    BackupError,
    BackupManager,
    BackupNotFoundError,
    CorruptDataError,
    FormatVersionError,
    IntegrityError,
    InvalidInputError,
    RecoveryError,
    RecoveryManager,
    UnsupportedValueError,
)
from src.infra.backup.format.manifest import (
    REPO_FORMAT_VERSION,
    Manifest,
    RepoConfig,
    decode_checked,
    encode_checked,
)
from src.infra.backup.policy.retention import SnapshotRef, apply_retention_days

# -- helpers -----------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path below ``root`` with (mode, mtime_ns, content-or-None): a full fingerprint."""
    found: dict[str, tuple[int, int, bytes | None]] = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        st_ = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        found[str(path.relative_to(root))] = (st_.st_mode, st_.st_mtime_ns, content)
    return found


def state(n: int) -> dict[str, object]:
    """Distinct per ``n``, so no two backups share a chunk."""
    return {
        "portfolio": {
            "n": n,
            "equity": 10000.0 + n,
            "positions": [{"symbol": "BTC/USD", "size": 0.1 * n}],
        },
        "config": {"strategy": f"ma_{n}", "risk_per_trade": 0.01},
    }


def make_backups(manager: BackupManager, count: int) -> list[str]:
    return [manager.create_backup(state(n)) for n in range(count)]


def fresh(manager: BackupManager) -> BackupManager:
    """A new manager on the same repository (no cached manifests)."""
    return BackupManager(manager.config)


def chunk_ids(manager: BackupManager, backup_id: str, entry: str = "portfolio") -> list[str]:
    repository = manager.repository
    manifest = repository.read_manifest(backup_id)
    (found,) = [e for e in manifest.entries if e.name == entry]
    return [ref.id for ref in repository.entry_refs(found)]


def damage(manager: BackupManager, cid: str, how: Damage) -> None:
    """Damage the stored chunk ``cid`` (in a pack, by default; see tests/stored_chunks.py)."""
    damage_chunk(manager.config.repository_path, cid, how, manager.repository)


def flip_byte(path: Path, offset: int | None = None) -> None:
    raw = bytearray(path.read_bytes())
    where = len(raw) // 2 if offset is None else offset
    raw[where] ^= 0x01
    os.chmod(path, 0o600)
    path.write_bytes(bytes(raw))


def ids_of(manager: BackupManager) -> list[str]:
    return [info.backup_id for info in manager.list_backups()]


# -- unsupported values ------------------------------------------------------------------------


class Custom:
    pass


@pytest.mark.parametrize(
    ("data", "path_text"),
    [
        (
            {"portfolio": {"positions": [{"symbol": "BTC/USD", "opened_at": Custom()}]}},
            'data["portfolio"]["positions"][0]["opened_at"]',
        ),
        (
            {"portfolio": {"equity": 1}, "config": {"callbacks": {"on_fill": lambda: 1}}},
            'data["config"]["callbacks"]["on_fill"]',
        ),
        ({"portfolio": Custom()}, 'data["portfolio"]'),
    ],
)
def test_unsupported_value_names_path_and_writes_nothing(
    manager: BackupManager, repo_dir: Path, data: dict[str, object], path_text: str
) -> None:
    first = manager.create_backup(state(1))
    before = tree(repo_dir)
    with pytest.raises(UnsupportedValueError) as info:
        manager.create_backup(data)
    assert path_text in str(info.value)
    assert isinstance(info.value, InvalidInputError)
    assert isinstance(info.value, BackupError)
    assert tree(repo_dir) == before
    assert ids_of(fresh(manager)) == [first]


def test_unsupported_value_on_a_fresh_repository_creates_nothing(
    manager: BackupManager, repo_dir: Path
) -> None:
    with pytest.raises(UnsupportedValueError, match=r'data\["portfolio"\]'):
        manager.create_backup({"portfolio": {"fn": print}})
    assert list(repo_dir.iterdir()) == []


@pytest.mark.parametrize("key", ["", "../x", "a/b", ".hidden", "x\x00y", 5, "a" * 200])
def test_invalid_data_keys_are_refused(manager: BackupManager, repo_dir: Path, key: object) -> None:
    with pytest.raises(InvalidInputError):
        manager.create_backup({key: 1})  # type: ignore[dict-item]
    assert list(repo_dir.iterdir()) == []


@pytest.mark.parametrize("backup_type", ["Pre Trade", "../x", "", "a" * 65, "x/y", "-x", None])
def test_bad_backup_type_is_refused(
    manager: BackupManager, repo_dir: Path, backup_type: object
) -> None:
    manager.create_backup(state(0))
    before = tree(repo_dir)
    with pytest.raises(InvalidInputError):
        manager.create_backup(state(1), backup_type=backup_type)  # type: ignore[arg-type]
    assert tree(repo_dir) == before


def test_longest_valid_type_is_accepted(manager: BackupManager) -> None:
    backup_type = "a" * 64
    backup_id = manager.create_backup(state(0), backup_type=backup_type)
    assert backup_id.startswith(backup_type + "_")
    assert manager.load_backup(backup_id) == state(0)


# -- traversal ids -----------------------------------------------------------------------------

BAD_IDS = [
    "../x",
    "/etc/passwd",
    "a/b",
    "x\x00y",
    "..",
    ".",
    "",
    "../../etc/passwd",
    "snapshots/../repo",
    "MANUAL_20250101_000000",
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_traversal_ids_are_not_found_and_touch_nothing(
    manager: BackupManager, tmp_path: Path, bad_id: str
) -> None:
    good = manager.create_backup(state(0))
    # Decoys where a naive implementation would look.
    (tmp_path / "x.json").write_text("{}")
    (manager.config.repository_path / "x.json").write_text("{}")
    target = tmp_path / "restore-target"
    before = tree(tmp_path)
    recovery = RecoveryManager(manager)

    with pytest.raises(BackupNotFoundError) as info:
        manager.load_backup(bad_id)
    assert isinstance(info.value, RecoveryError)
    with pytest.raises(BackupNotFoundError):
        manager.delete_backup(bad_id)
    with pytest.raises(BackupNotFoundError):
        manager.delete_backup(bad_id, force=True)
    with pytest.raises(BackupNotFoundError):
        manager.get_backup_info(bad_id)
    with pytest.raises(BackupNotFoundError):
        recovery.restore_backup(bad_id)
    with pytest.raises(BackupNotFoundError):
        recovery.restore_to_directory(bad_id, target)
    assert recovery.verify_backup(bad_id) is False
    assert recovery.verify_backup_report(bad_id).ok is False

    assert tree(tmp_path) == before
    assert not target.exists()
    assert ids_of(fresh(manager)) == [good]


def test_unknown_but_valid_id(manager: BackupManager) -> None:
    manager.create_backup(state(0))
    with pytest.raises(BackupNotFoundError, match="manual_20000101_000000"):
        manager.load_backup("manual_20000101_000000")
    assert RecoveryManager(manager).verify_backup("manual_20000101_000000") is False


# -- a corrupt manifest ------------------------------------------------------------------------


def test_corrupt_manifest(manager: BackupManager, repo_dir: Path) -> None:
    a, b, c = make_backups(manager, 3)
    flip_byte(repo_dir / "snapshots" / f"{b}.json")
    manager = fresh(manager)
    with pytest.raises(IntegrityError) as info:
        manager.load_backup(b)
    assert isinstance(info.value, CorruptDataError)
    assert isinstance(info.value, RecoveryError)
    assert b in str(info.value)
    assert sorted(ids_of(manager)) == sorted([a, c])
    assert RecoveryManager(manager).verify_backup(b) is False
    assert RecoveryManager(manager).verify_backup(a) is True
    assert manager.load_backup(a) == state(0)
    assert manager.load_backup(c) == state(2)
    with pytest.raises(RecoveryError):
        RecoveryManager(manager).restore_backup(b)


@pytest.mark.parametrize("where", ["start", "checksum", "end", "truncate", "empty", "garbage"])
def test_manifest_damage_variants(manager: BackupManager, repo_dir: Path, where: str) -> None:
    a, b = make_backups(manager, 2)
    path = repo_dir / "snapshots" / f"{b}.json"
    raw = path.read_bytes()
    os.chmod(path, 0o600)
    if where == "start":
        flip_byte(path, 0)
    elif where == "checksum":
        flip_byte(path, len(raw) - 10)
    elif where == "end":
        flip_byte(path, len(raw) - 1)
    elif where == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif where == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x00\xff not json at all")
    manager = fresh(manager)
    with pytest.raises(CorruptDataError):
        manager.load_backup(b)
    assert ids_of(manager) == [a]
    assert RecoveryManager(manager).verify_backup(b) is False
    assert RecoveryManager(manager).restore_latest_backup() == state(0)


def test_manifest_swapped_between_ids(manager: BackupManager, repo_dir: Path) -> None:
    """A valid manifest under another backup's name is damage, not that other backup."""
    a, b = make_backups(manager, 2)
    (repo_dir / "snapshots" / f"{b}.json").unlink()
    os.link(repo_dir / "snapshots" / f"{a}.json", repo_dir / "snapshots" / f"{b}.json")
    manager = fresh(manager)
    with pytest.raises(CorruptDataError):
        manager.load_backup(b)
    assert ids_of(manager) == [a]


# -- damaged chunks ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "flip_header", "truncate", "missing", "empty"])
def test_damaged_chunk(
    manager: BackupManager, how: Damage, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = make_backups(manager, 3)
    assert is_packed(manager.config.repository_path)  # the default format
    (cid,) = chunk_ids(manager, c)
    damage(manager, cid, how)
    manager = fresh(manager)
    recovery = RecoveryManager(manager)

    with pytest.raises(IntegrityError) as info:
        manager.load_backup(c)
    assert isinstance(info.value, RecoveryError)
    assert cid in str(info.value)
    with pytest.raises(IntegrityError):
        recovery.restore_backup(c)
    assert recovery.verify_backup(c) is False
    report = recovery.verify_backup_report(c)
    assert report.ok is False and report.problems
    assert recovery.verify_backup(a) is True
    assert recovery.verify_backup(b) is True
    assert ids_of(manager) == [c, b, a]  # the manifest is fine: it is still listed

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert recovery.restore_latest_backup() == state(1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(c in message for message in warnings), warnings


def test_seed_troubleshooting_fallback_with_damaged_latest(manager: BackupManager) -> None:
    """The seed's "Wiederherstellung fehlgeschlagen" snippet, run as written: when restoring
    the newest backup fails, ``get_latest_backup()`` must lead to one that restores."""
    _a, _b, c = make_backups(manager, 3)
    (cid,) = chunk_ids(manager, c)
    damage(manager, cid, "flip")
    recovery = RecoveryManager(fresh(manager))
    backup_id = c
    try:
        data = recovery.restore_backup(backup_id)
    except RecoveryError:
        # Versuche älteres Backup
        backup_id = recovery.get_latest_backup()
        data = recovery.restore_backup(backup_id)
    assert data == state(1)


def test_structure_verify_detects_missing_chunk_only(manager: BackupManager) -> None:
    _a, b = make_backups(manager, 2)
    (cid,) = chunk_ids(manager, b)
    damage(manager, cid, "flip")
    recovery = RecoveryManager(fresh(manager))
    assert recovery.verify_backup_report(b, read_data=False).ok is True  # exists
    assert recovery.verify_backup_report(b, read_data=True).ok is False
    damage(manager, cid, "missing")
    assert RecoveryManager(fresh(manager)).verify_backup_report(b, read_data=False).ok is False
    assert recovery.verify_backup_report(b, read_data=False).ok is False  # also a running one


def test_all_damaged_restore_latest_raises_recovery_error(manager: BackupManager) -> None:
    a, b = make_backups(manager, 2)
    for backup_id in (a, b):
        for cid in chunk_ids(manager, backup_id):
            damage(manager, cid, "missing")
    with pytest.raises(RecoveryError) as info:
        RecoveryManager(fresh(manager)).restore_latest_backup()
    assert a in str(info.value) and b in str(info.value)


def test_restore_latest_on_empty_repository(manager: BackupManager) -> None:
    with pytest.raises(BackupNotFoundError):
        RecoveryManager(manager).restore_latest_backup()
    assert RecoveryManager(manager).get_latest_backup() is None
    assert manager.list_backups() == []


def test_damaged_large_entry_chunk_list(manager: BackupManager) -> None:
    """A big entry is stored through chunk-list blobs; damage to one is an IntegrityError."""
    big = {
        "history": {"trades": [{"i": i, "p": i * 1.5, "s": f"sym{i % 97}"} for i in range(60_000)]}
    }
    first = manager.create_backup({"x": 1})
    backup_id = manager.create_backup(big)
    assert manager.load_backup(backup_id) == big
    manifest = manager.repository.read_manifest(backup_id)
    (entry,) = manifest.entries
    target = entry.lists[0].id if entry.lists else entry.chunks[len(entry.chunks) // 2].id
    damage(manager, target, "flip")
    manager = fresh(manager)
    with pytest.raises(IntegrityError):
        manager.load_backup(backup_id)
    assert RecoveryManager(manager).verify_backup(backup_id) is False
    assert RecoveryManager(manager).verify_backup(first) is True


# -- format version ----------------------------------------------------------------------------


def rewrite_checked(path: Path, kind: type, **changes: object) -> None:
    """Rewrite a manifest or repo.json as a newer writer would: changed, with a valid checksum."""
    document = decode_checked(path.read_bytes(), kind, str(path))
    os.chmod(path, 0o600)
    path.write_bytes(encode_checked(msgspec.structs.replace(document, **changes)))


def test_repository_with_newer_format_is_refused(manager: BackupManager, repo_dir: Path) -> None:
    manager.create_backup(state(0))
    rewrite_checked(repo_dir / "repo.json", RepoConfig, format=99)
    before = tree(repo_dir)
    manager = fresh(manager)
    with pytest.raises(FormatVersionError) as info:
        manager.list_backups()
    message = str(info.value)
    assert "99" in message
    assert "repo.json" in message
    assert "upgrade" in message.lower()
    with pytest.raises(FormatVersionError):
        manager.create_backup(state(1))
    assert tree(repo_dir) == before


def test_repo_json_edited_without_checksum_is_corrupt(
    manager: BackupManager, repo_dir: Path
) -> None:
    manager.create_backup(state(0))
    path = repo_dir / "repo.json"
    raw = path.read_bytes()
    assert repo_format(repo_dir) == REPO_FORMAT_VERSION
    declared = f'"format":{REPO_FORMAT_VERSION}'.encode()
    assert declared in raw
    os.chmod(path, 0o600)
    path.write_bytes(raw.replace(declared, b'"format":9'))
    with pytest.raises((CorruptDataError, FormatVersionError)) as info:
        fresh(manager).list_backups()
    assert "repo.json" in str(info.value)


def test_manifest_with_newer_format(manager: BackupManager, repo_dir: Path) -> None:
    a, b = make_backups(manager, 2)
    rewrite_checked(repo_dir / "snapshots" / f"{b}.json", Manifest, format=99)
    manager = fresh(manager)
    with pytest.raises(FormatVersionError, match="99"):
        manager.load_backup(b)
    assert ids_of(manager) == [a]
    assert RecoveryManager(manager).verify_backup(b) is False


def test_damaged_repo_json_is_a_clear_error(manager: BackupManager, repo_dir: Path) -> None:
    manager.create_backup(state(0))
    path = repo_dir / "repo.json"
    os.chmod(path, 0o600)
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptDataError, match=r"repo\.json"):
        fresh(manager).list_backups()


# -- delete ------------------------------------------------------------------------------------


def test_delete_last_good_backup_refused_unless_forced(manager: BackupManager) -> None:
    (only,) = make_backups(manager, 1)
    with pytest.raises(BackupError, match="last good"):
        manager.delete_backup(only)
    assert ids_of(fresh(manager)) == [only]
    manager.delete_backup(only, force=True)
    assert ids_of(fresh(manager)) == []
    with pytest.raises(BackupNotFoundError):
        manager.load_backup(only)


def test_delete_last_good_when_the_others_are_damaged(manager: BackupManager) -> None:
    a, b = make_backups(manager, 2)
    for cid in chunk_ids(manager, a):
        damage(manager, cid, "missing")
    manager = fresh(manager)
    with pytest.raises(BackupError, match="last good"):
        manager.delete_backup(b)
    manager.delete_backup(a)  # deleting a damaged one while a good one stays is fine
    assert ids_of(manager) == [b]


def test_delete_one_of_many_leaves_the_others(manager: BackupManager) -> None:
    a, b, c = make_backups(manager, 3)
    manager.delete_backup(b)
    manager = fresh(manager)
    assert ids_of(manager) == [c, a]
    assert manager.load_backup(a) == state(0)
    assert manager.load_backup(c) == state(2)
    with pytest.raises(BackupNotFoundError):
        manager.delete_backup(b)


# -- retention ---------------------------------------------------------------------------------

NOW = datetime(2025, 12, 17, 12, 0, tzinfo=timezone.utc)


def ref(backup_id: str, backup_type: str, days_ago: float) -> SnapshotRef:
    return SnapshotRef(backup_id, backup_type, NOW - timedelta(days=days_ago))


def test_retention_days_keeps_newest_per_type_and_protected() -> None:
    snapshots = [
        ref("manual_old", "manual", 40),
        ref("manual_older", "manual", 50),
        ref("pre_trade_only", "pre_trade", 90),  # newest of its type: kept
        ref("automatic_new", "automatic", 0.5),
        ref("automatic_old", "automatic", 2),
        ref("automatic_edge", "automatic", 1),  # exactly at the cutoff: kept
        ref("scheduled_future", "scheduled", -3),  # dated in the future
        ref("scheduled_old", "scheduled", 10),
        ref("protected_old", "manual", 100),
    ]
    decisions = {
        d.backup_id: d for d in apply_retention_days(snapshots, 1, NOW, protect=["protected_old"])
    }
    assert set(decisions) == {s.backup_id for s in snapshots}
    kept = {i for i, d in decisions.items() if d.keep}
    assert kept == {
        "manual_old",
        "pre_trade_only",
        "automatic_new",
        "automatic_edge",
        "scheduled_future",
        "protected_old",
    }
    for decision in decisions.values():
        assert decision.reason
    assert "newest" in decisions["pre_trade_only"].reason
    assert "protect" in decisions["protected_old"].reason


def test_retention_off_keeps_everything() -> None:
    snapshots = [ref(f"manual_{i}", "manual", 1000 + i) for i in range(5)]
    for days in (0, -1):
        assert all(d.keep for d in apply_retention_days(snapshots, days, NOW))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["manual", "pre_trade", "automatic"]),
            st.floats(min_value=-5, max_value=400, allow_nan=False),
        ),
        max_size=30,
    ),
    st.integers(min_value=-2, max_value=60),
    st.data(),
)
def test_retention_properties(
    items: list[tuple[str, float]], days: int, data: st.DataObject
) -> None:
    snapshots = [ref(f"{t}_{i}", t, age) for i, (t, age) in enumerate(items)]
    protect = data.draw(st.lists(st.sampled_from([s.backup_id for s in snapshots] or ["none"])))
    decisions = apply_retention_days(snapshots, days, NOW, protect=protect)
    assert [d.backup_id for d in decisions] == [s.backup_id for s in snapshots]
    kept = {d.backup_id for d in decisions if d.keep}
    for backup_type in {s.backup_type for s in snapshots}:
        newest = max(
            (s for s in snapshots if s.backup_type == backup_type),
            key=lambda s: (s.time_utc, s.backup_id),
        )
        assert newest.backup_id in kept
    assert set(protect) & {s.backup_id for s in snapshots} <= kept
    for snap in snapshots:
        if days <= 0 or snap.time_utc >= NOW - timedelta(days=days):
            assert snap.backup_id in kept


def test_manager_retention_keeps_recent_backups(repo_dir: Path) -> None:
    manager = BackupManager(BackupConfig(backup_path=repo_dir, retention_days=1))
    ids = [
        manager.create_backup(state(n), backup_type=t)
        for n, t in enumerate(["manual", "pre_trade", "manual"])
    ]
    assert sorted(ids_of(manager)) == sorted(ids)
    assert manager.apply_retention() == []


def test_backup_with_corrupt_manifest_can_be_deleted(
    manager: BackupManager, repo_dir: Path
) -> None:
    """A damaged backup is skipped by list and reported by verify; the user must be able to
    get rid of it (at least with force=True) without editing the repository by hand."""
    a, b = make_backups(manager, 2)
    flip_byte(repo_dir / "snapshots" / f"{b}.json")
    manager = fresh(manager)
    assert ids_of(manager) == [a]
    manager.delete_backup(b, force=True)
    assert not (repo_dir / "snapshots" / f"{b}.json").exists()
    assert ids_of(fresh(manager)) == [a]
    assert fresh(manager).load_backup(a) == state(0)


def test_repository_permissions(manager: BackupManager, repo_dir: Path) -> None:
    """Files 0600, directories 0700 (DESIGN.md, Security)."""
    make_backups(manager, 2)
    for path in repo_dir.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
