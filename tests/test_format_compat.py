"""Known-answer test: repositories written by format 1 (commit ad996b9) stay readable.

``tests/data/format1/`` is frozen test data made by ``tests/data/make_format1_fixture.py``
from commit ad996b9 (an unencrypted zstd repository and an ``aes-256-gcm`` one, three backups
each). Every test works on a copy in ``tmp_path``: the committed fixture is never written to.
The current code must list the same backups, load the same values (same types at every
level, NaN and ``-0.0`` included), restore every file byte for byte with its mode and mtime,
verify every backup, and add a new backup to the old repository.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import datetime, time
from decimal import Decimal
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupManager
from src.infra.backup.app.recovery import RecoveryManager

DATA_DIR = Path(__file__).resolve().parent / "data"
FIXTURE_DIR = DATA_DIR / "format1"
EXPECTED: dict[str, Any] = json.loads((FIXTURE_DIR / "expected.json").read_text())
PASSPHRASE = "format-1 fixture passphrase: not a secret"  # as in the generator


def _load_generator() -> ModuleType:
    """The generator module, for :func:`backup_values` (it imports nothing from ``src``)."""
    spec = importlib.util.spec_from_file_location(
        "make_format1_fixture", DATA_DIR / "make_format1_fixture.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()


@pytest.fixture(params=sorted(EXPECTED["repositories"]))
def old_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(name, a copy of that fixture repository in ``tmp_path``)."""
    name: str = request.param
    copy = tmp_path / f"format1-{name}"
    shutil.copytree(FIXTURE_DIR / name, copy)
    yield name, copy


def _manager(name: str, path: Path, **config: Any) -> BackupManager:
    encrypted = EXPECTED["repositories"][name]["encryption"] != "none"
    return BackupManager(
        BackupConfig(backup_path=path, **config), passphrase=PASSPHRASE if encrypted else None
    )


def _backups(name: str) -> list[dict[str, Any]]:
    backups: list[dict[str, Any]] = EXPECTED["repositories"][name]["backups"]
    return backups


def _assert_same_scientific(actual: Any, expected: Any, where: str) -> bool:
    """numpy arrays and scalars, pandas Index, Series and DataFrame: exact values, dtypes,
    names, index kinds and ``freq``. ``False`` if ``expected`` is none of these."""
    np = sys.modules.get("numpy")
    pd = sys.modules.get("pandas")
    if np is not None and isinstance(expected, np.ndarray | np.generic):
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert np.shape(actual) == np.shape(expected), f"{where}: shape"
        nan_ok = expected.dtype.kind in "fcmM"
        assert np.array_equal(actual, expected, equal_nan=nan_ok), f"{where}: {actual!r}"
        assert np.asarray(actual).tobytes() == np.asarray(expected).tobytes(), f"{where}: bytes"
        return True
    if pd is None or not isinstance(expected, pd.Index | pd.Series | pd.DataFrame):
        return False
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected, check_exact=True, check_freq=True)
        _assert_same_index(actual.columns, expected.columns, f"{where}.columns")
        _assert_same_index(actual.index, expected.index, f"{where}.index")
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(actual, expected, check_exact=True, check_freq=True)
        _assert_same_index(actual.index, expected.index, f"{where}.index")
    else:
        _assert_same_index(actual, expected, where)
    return True


def _assert_same_index(actual: Any, expected: Any, where: str) -> None:
    pd = sys.modules["pandas"]
    assert type(actual) is type(expected), f"{where}: {type(actual)} is not {type(expected)}"
    pd.testing.assert_index_equal(actual, expected, exact=True, check_exact=True)
    assert list(actual.names) == list(expected.names), f"{where}: names"
    assert getattr(actual, "freq", None) == getattr(expected, "freq", None), f"{where}: freq"


def assert_same(actual: Any, expected: Any, where: str = "value") -> None:
    """``actual`` equals ``expected`` with the same type at every level; NaN equals NaN,
    ``-0.0`` is not ``0.0``, Decimals compare by their text, dict and set order is checked
    where the codec keeps it (dicts), zones and ``fold`` of times are compared; numpy and
    pandas values are compared exactly, with their dtypes, names and index kinds."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} is not {type(expected)}"
    if _assert_same_scientific(actual, expected, where):
        return
    if isinstance(expected, float):
        if math.isnan(expected):
            assert math.isnan(actual), f"{where}: {actual!r} is not NaN"
        else:
            assert actual == expected, f"{where}: {actual!r} != {expected!r}"
            assert math.copysign(1, actual) == math.copysign(1, expected), f"{where}: sign"
    elif isinstance(expected, complex):
        assert_same(actual.real, expected.real, f"{where}.real")
        assert_same(actual.imag, expected.imag, f"{where}.imag")
    elif isinstance(expected, Decimal):
        assert str(actual) == str(expected), f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, Enum):
        assert actual is expected, f"{where}: {actual!r} is not {expected!r}"
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for index, (key_a, key_e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(key_a, key_e, f"{where}<key {index}>")
            assert_same(actual[key_a], expected[key_e], f"{where}[{key_e!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for index, (item_a, item_e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(item_a, item_e, f"{where}[{index}]")
    elif isinstance(expected, set | frozenset):
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
        key = repr
        assert sorted(map(key, actual)) == sorted(map(key, expected)), f"{where}: member types"
    elif isinstance(expected, datetime | time):
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
        assert actual.fold == expected.fold, f"{where}: fold"
        assert repr(actual.tzinfo) == repr(expected.tzinfo), f"{where}: zone"
        assert actual.utcoffset() == expected.utcoffset(), f"{where}: offset"
        assert actual.tzname() == expected.tzname(), f"{where}: zone name"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_the_fixture_is_as_generated() -> None:
    """The committed data is complete: both repositories, three backups each, chunk lists."""
    assert EXPECTED["format"] == 1 and EXPECTED["generated_from_commit"] == "ad996b9"
    for name, repository in EXPECTED["repositories"].items():
        assert (FIXTURE_DIR / name / "repo.json").is_file()
        assert len(repository["backups"]) == 3
        for backup in repository["backups"]:
            assert (FIXTURE_DIR / name / "snapshots" / f"{backup['id']}.json").is_file()
            assert backup["chunk_lists"], "the fixture must exercise chunk-list blobs"
    assert not list(FIXTURE_DIR.rglob(".tmp-*"))


def test_lists_the_same_backups(old_repo: tuple[str, Path]) -> None:
    name, path = old_repo
    infos = _manager(name, path).list_backups()
    assert sorted(info.backup_id for info in infos) == sorted(b["id"] for b in _backups(name))
    types = {info.backup_id: info.backup_type for info in infos}
    assert types == {b["id"]: b["type"] for b in _backups(name)}


def test_loads_the_same_values(old_repo: tuple[str, Path]) -> None:
    name, path = old_repo
    manager = _manager(name, path)
    for backup in _backups(name):
        loaded = manager.load_backup(backup["id"])
        assert_same(loaded, GENERATOR.backup_values(backup["values_step"]), backup["id"])
        # The stored value bytes are exactly those written by format 1.
        repository = manager.repository
        manifest = repository.read_manifest(backup["id"])
        payloads = {
            entry.name: hashlib.sha256(repository.read_entry(entry)).hexdigest()
            for entry in manifest.entries
            if entry.kind == "data"
        }
        assert payloads == backup["data_sha256"]


def test_restores_the_same_files(old_repo: tuple[str, Path], tmp_path: Path) -> None:
    name, path = old_repo
    recovery = RecoveryManager(_manager(name, path))
    for backup in _backups(name):
        target = tmp_path / "restored" / backup["id"]
        result = recovery.restore_to_directory(backup["id"], target, verify=True)
        assert result.verified
        restored = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
        data_files = {f"{key}.json" for key in backup["data_sha256"]}
        assert restored == set(backup["files"]) | data_files | {"RESTORED_FROM"}
        for file_name, facts in backup["files"].items():
            restored_path = target / file_name
            st = restored_path.stat()
            assert hashlib.sha256(restored_path.read_bytes()).hexdigest() == facts["sha256"]
            assert st.st_size == facts["size"], file_name
            assert st.st_mode & 0o7777 == facts["mode"], file_name
            assert st.st_mtime_ns == facts["mtime_ns"], file_name


def test_verifies_every_backup(old_repo: tuple[str, Path]) -> None:
    name, path = old_repo
    manager = _manager(name, path)
    recovery = RecoveryManager(manager)
    for backup in _backups(name):
        assert recovery.verify_backup(backup["id"])
        assert recovery.verify_backup(backup["id"], decode=True)
    assert manager.check().clean


def test_a_new_backup_joins_the_old_repository(old_repo: tuple[str, Path], tmp_path: Path) -> None:
    """A backup made now (values and files, sharing chunks with the old ones) restores, and
    the old backups stay intact. Retention is off: the old backups are older than 30 days."""
    name, path = old_repo
    base = tmp_path / "bot"
    (base / "state").mkdir(parents=True)
    newest_files = _backups(name)[-1]["files"]
    # The old big file plus a few more lines: its old chunks are reused.
    recovery = RecoveryManager(_manager(name, path))
    recovery.restore_to_directory(_backups(name)[-1]["id"], base)
    for data_file in base.glob("*.json"):
        data_file.unlink()
    big = base / GENERATOR.BIG_FILE
    with big.open("ab") as handle:
        handle.write(b"1765999999999,BTC/USD,buy,51000.0,3\n")
    os.utime(big, ns=(1_766_000_000_000_000_000, 1_766_000_000_000_000_000))
    manager = _manager(name, path, retention_days=0, sources=["state"], base_dir=base)
    values = GENERATOR.backup_values(3)
    values["trades"].append(dict(values["trades"][-1], id=len(values["trades"])))
    values["new"] = {"after": "format 1", "when": datetime(2026, 1, 1, 12, 0)}
    new_id = manager.create_backup(values, "manual")
    assert new_id not in {b["id"] for b in _backups(name)}
    info = manager.get_backup_info(new_id)
    assert info.added_bytes < info.size_bytes / 4, "the new backup should share old chunks"

    reader = _manager(name, path)
    recovery = RecoveryManager(reader)
    assert_same(reader.load_backup(new_id), values, new_id)
    assert recovery.verify_backup(new_id, decode=True)
    target = tmp_path / "restored-new"
    recovery.restore_to_directory(new_id, target, verify=True)
    for file_name in newest_files:
        original = base / file_name
        restored = target / file_name
        assert restored.read_bytes() == original.read_bytes(), file_name
        assert restored.stat().st_mtime_ns == original.stat().st_mtime_ns, file_name
        assert restored.stat().st_mode & 0o7777 == original.stat().st_mode & 0o7777, file_name
    for backup in _backups(name):
        assert recovery.verify_backup(backup["id"])
    ids = {info.backup_id for info in reader.list_backups()}
    assert ids == {b["id"] for b in _backups(name)} | {new_id}


def test_a_manifest_with_run_statistics_reads_in_a_schema_without_them(tmp_path: Path) -> None:
    """``run`` (since 0.3) needs no new manifest format: a reader whose schema lacks it
    (0.2.0's) parses the manifest as before, checksum included (it covers the bytes)."""
    import msgspec

    from src.infra.backup.format.manifest import Manifest, decode_checked

    manager = BackupManager(BackupConfig(backup_path=str(tmp_path / "repo"), retention_days=0))
    backup_id = manager.create_backup({"a": 1}, "daily")
    raw = (tmp_path / "repo" / "snapshots" / f"{backup_id}.json").read_bytes()
    assert b'"run":{' in raw

    def spec(f: msgspec.structs.FieldInfo) -> tuple[Any, ...]:
        if f.default_factory is not msgspec.NODEFAULT:
            return (f.name, f.type, msgspec.field(default_factory=f.default_factory))
        return (f.name, f.type) if f.default is msgspec.NODEFAULT else (f.name, f.type, f.default)

    fields = [spec(f) for f in msgspec.structs.fields(Manifest) if f.name != "run"]
    older = msgspec.defstruct("ManifestOf020", fields, kw_only=True, frozen=True)
    old = decode_checked(raw, older, backup_id)
    new = decode_checked(raw, Manifest, backup_id)
    assert old.entries == new.entries and old.stats == new.stats and new.run is not None
