"""``export`` / ``import``: plain-file exports, seed-style folders, archives and tar-slip."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import math
import stat
import sys
import tarfile
import types
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from src.infra.backup import BackupConfig, BackupError, BackupManager, RecoveryManager
from src.infra.backup.app.export import export_backup, import_backup, tar_safety
from src.infra.backup.errors import BackupExistsError, InvalidExportError, UnsafeArchiveError
from tests.factories import write_file, write_tree
from tests.helpers import PROJECT_ROOT, run_cli_inline

PLAIN_DATA = {
    "portfolio": {
        "equity": 10000.5,
        "positions": [{"symbol": "BTC/USD", "size": 0.1, "entry_price": 50000}],
        "cash": 5000,
        "open": True,
        "closed_at": None,
    },
    "config": {"strategy": "ma_crossover", "risk_per_trade": 0.01, "tags": ["a", "b"]},
}

# relative name -> (content, mode, mtime_ns)
FILES = {
    "config.toml": (b"[backup]\n", 0o644, 1_690_000_000_555_555_555),
    "live_runs/run_001.json": (b'{"run": 1}\n', 0o640, 1_700_000_000_123_456_789),
    "live_runs/sub/trades.jsonl": (
        b"".join(b'{"i": %d}\n' % i for i in range(20000)),
        0o600,
        1_650_000_000_000_000_001,
    ),
    "live_runs/empty.json": (b"", 0o444, 1_600_000_000_000_000_000),
}
OUTSIDE = (b"outside the project\n", 0o604, 1_680_000_000_000_000_007)


def _load_naive() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_naive", PROJECT_ROOT / "bench" / "naive.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_naive"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def file_tree(tmp_path: Path) -> Path:
    """``FILES`` below ``tmp_path/project``, and one file outside it (``outside/notes.txt``)."""
    root = write_tree(tmp_path / "project", FILES)
    write_file(tmp_path / "outside" / "notes.txt", *OUTSIDE)
    return root


def _manager(path: Path, project: Path | None = None) -> BackupManager:
    sources = []
    if project is not None:
        sources = ["config.toml", "live_runs/", str(project.parent / "outside" / "notes.txt")]
    return BackupManager(
        BackupConfig(
            backup_path=path,
            retention_days=0,
            sources=sources,
            base_dir=project,
        )
    )


def _entries(manager: BackupManager, backup_id: str) -> list[tuple[Any, ...]]:
    manifest = manager.repository.read_manifest(backup_id)
    return [(e.name, e.kind, e.size, e.mode, e.mtime_ns) for e in manifest.entries]


def _assert_same_backup(source: BackupManager, copy: BackupManager, backup_id: str) -> None:
    original, imported = source.get_backup_info(backup_id), copy.get_backup_info(backup_id)
    assert imported.backup_id == original.backup_id
    assert imported.backup_type == original.backup_type
    assert imported.timestamp == original.timestamp
    assert imported.timestamp_utc == original.timestamp_utc
    assert imported.files == original.files
    assert imported.tags == original.tags
    assert imported.note == original.note
    assert copy.load_backup(backup_id) == source.load_backup(backup_id)
    assert _entries(copy, backup_id) == _entries(source, backup_id)
    assert RecoveryManager(copy).verify_backup(backup_id)


def _assert_restored_files(manager: BackupManager, backup_id: str, target: Path) -> None:
    RecoveryManager(manager).restore_to_directory(backup_id, target, verify=True)
    for name, (content, mode, mtime_ns) in FILES.items():
        path = target / name
        assert path.read_bytes() == content
        assert stat.S_IMODE(path.stat().st_mode) == mode
        assert path.stat().st_mtime_ns == mtime_ns


# --------------------------------------------------------------------------- round trips


def test_export_dir_and_import_round_trip(tmp_path: Path, file_tree: Path) -> None:
    source = _manager(tmp_path / "repo", file_tree)
    backup_id = source.create_backup(
        PLAIN_DATA, "pre_trade", tags={"order": "42"}, note="before BTC buy"
    )
    exported = export_backup(source, backup_id, tmp_path / "out")
    assert exported == (tmp_path / "out" / backup_id).absolute()

    # plain files, readable by any tool
    assert json.loads((exported / "portfolio.json").read_text()) == PLAIN_DATA["portfolio"]
    assert json.loads((exported / "config.json").read_text()) == PLAIN_DATA["config"]
    assert (exported / ".portfolio.msgpack").is_file()
    for name, (content, mode, mtime_ns) in FILES.items():
        path = exported / name
        assert path.read_bytes() == content
        assert stat.S_IMODE(path.stat().st_mode) == mode
        assert path.stat().st_mtime_ns == mtime_ns
    outside = file_tree.parent / "outside" / "notes.txt"
    exported_outside = exported / "_root" / outside.relative_to("/")
    assert exported_outside.read_bytes() == OUTSIDE[0]
    assert exported_outside.stat().st_mtime_ns == OUTSIDE[2]

    meta = json.loads((exported / "metadata.json").read_text())
    info = source.get_backup_info(backup_id)
    assert meta["backup_id"] == backup_id
    assert meta["backup_type"] == "pre_trade"
    assert datetime.fromisoformat(meta["timestamp"]) == info.timestamp
    assert meta["tags"] == {"order": "42"} and meta["note"] == "before BTC buy"
    assert meta["host"] == info.host
    assert meta["compressed"] is False
    assert meta["encoding"] == {"portfolio": "json", "config": "json"}
    assert meta["files"][:2] == ["portfolio.json", "config.json"]
    assert set(FILES) <= set(meta["files"])
    assert meta["size_bytes"] == sum((exported / name).stat().st_size for name in meta["files"])

    target = _manager(tmp_path / "repo2")
    assert import_backup(target, exported) == backup_id
    _assert_same_backup(source, target, backup_id)
    _assert_restored_files(target, backup_id, tmp_path / "restored")
    name = outside.as_posix()
    assert name in target.get_backup_info(backup_id).file_paths

    # the export folder is left as it was (nothing modified in place)
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        [
            ".config.msgpack",
            ".portfolio.msgpack",
            "_root",
            "config.json",
            "config.toml",
            "live_runs",
            "metadata.json",
            "portfolio.json",
        ]
    )


def test_export_tar_gz_with_gzip_round_trip(tmp_path: Path, file_tree: Path) -> None:
    source = _manager(tmp_path / "repo", file_tree)
    backup_id = source.create_backup(PLAIN_DATA, "manual")
    archive = export_backup(source, backup_id, tmp_path / "out", fmt="tar.gz", gzip=True)
    assert archive == (tmp_path / "out" / f"{backup_id}.tar.gz").absolute()
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name]  # no leftovers
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert all(n == backup_id or n.startswith(backup_id + "/") for n in names)
        assert all(m.isfile() or m.isdir() for m in members)
        data = tar.extractfile(f"{backup_id}/portfolio.json.gz")
        assert data is not None
        assert json.loads(gzip.decompress(data.read())) == PLAIN_DATA["portfolio"]
        meta_file = tar.extractfile(f"{backup_id}/metadata.json")
        assert meta_file is not None
        assert json.loads(meta_file.read())["compressed"] is True

    target = _manager(tmp_path / "repo2")
    assert import_backup(target, archive) == backup_id
    _assert_same_backup(source, target, backup_id)
    _assert_restored_files(target, backup_id, tmp_path / "restored")


def test_typed_values_survive_through_the_sidecar(tmp_path: Path) -> None:
    typed = {
        "portfolio": {
            "equity": Decimal("10000.12345678901234567890"),
            "opened_at": datetime(2025, 12, 17, 21, 40, 30, 123456, tzinfo=timezone.utc),
            "naive": datetime(2025, 1, 2, 3, 4, 5),
            "hold": timedelta(hours=3),
            "pair": ("BTC", "USD"),
            "symbols": {"BTC", "ETH"},
            "raw": b"\x00\xff",
            "nan": math.inf,
            "keys": {1: "int key", (2, 3): "tuple key"},
        }
    }
    source = _manager(tmp_path / "repo")
    backup_id = source.create_backup(typed, "manual")
    for fmt, use_gzip in (("dir", False), ("dir", True), ("tar.gz", False)):
        out = tmp_path / f"out-{fmt}-{use_gzip}"
        exported = export_backup(source, backup_id, out, fmt=fmt, gzip=use_gzip)  # type: ignore[arg-type]
        target = _manager(tmp_path / f"repo-{fmt}-{use_gzip}")
        assert import_backup(target, exported) == backup_id
        restored = target.load_backup(backup_id)
        assert restored == typed
        value = restored["portfolio"]
        assert isinstance(value["equity"], Decimal)
        assert value["opened_at"].tzinfo is not None
        assert isinstance(value["pair"], tuple) and isinstance(value["symbols"], set)
        assert (2, 3) in value["keys"]


def test_without_sidecar_json_is_imported_as_plain_json(tmp_path: Path) -> None:
    source = _manager(tmp_path / "repo")
    backup_id = source.create_backup({"p": {"equity": Decimal("1.5"), "n": [1, 2]}}, "manual")
    exported = export_backup(source, backup_id, tmp_path / "out")
    (exported / ".p.msgpack").unlink()
    target = _manager(tmp_path / "repo2")
    import_backup(target, exported)
    assert target.load_backup(backup_id) == {"p": {"equity": "1.5", "n": [1, 2]}}


def test_edited_json_with_stale_sidecar_is_refused(tmp_path: Path) -> None:
    source = _manager(tmp_path / "repo")
    backup_id = source.create_backup({"p": {"equity": 1}}, "manual")
    exported = export_backup(source, backup_id, tmp_path / "out")
    (exported / "p.json").write_text('{"equity": 2}\n')
    target = _manager(tmp_path / "repo2")
    with pytest.raises(InvalidExportError, match=r"p\.json was changed.*delete \.p\.msgpack"):
        import_backup(target, exported)
    assert target.list_backups() == []
    (exported / ".p.msgpack").unlink()
    import_backup(target, exported)
    assert target.load_backup(backup_id) == {"p": {"equity": 2}}


def test_seed_style_folder_from_naive_manager_is_imported(tmp_path: Path) -> None:
    naive_module = _load_naive()
    naive = naive_module.NaiveBackupManager(tmp_path / "naive")
    backup_id = naive.create_backup(PLAIN_DATA, backup_type="pre_trade")
    second = naive.create_backup({"history": {"trades": [1, 2, 3]}}, backup_type="pre_trade")
    folder = tmp_path / "naive" / backup_id
    meta = json.loads((folder / "metadata.json").read_text())

    target = _manager(tmp_path / "repo")
    assert import_backup(target, folder) == backup_id
    info = target.get_backup_info(backup_id)
    assert info.backup_type == "pre_trade"
    assert info.timestamp == datetime.fromisoformat(meta["timestamp"])
    assert target.load_backup(backup_id) == naive.load_backup(backup_id)
    assert info.files == ["portfolio.json", "config.json"]

    # the second one too (its id may carry a _2 suffix)
    assert import_backup(target, tmp_path / "naive" / second) == second
    assert target.load_backup(second) == {"history": {"trades": [1, 2, 3]}}
    assert target.list_backups()[0].backup_id == second


def test_folder_holding_one_backup_is_accepted_several_are_not(tmp_path: Path) -> None:
    source = _manager(tmp_path / "repo")
    backup_id = source.create_backup({"a": 1}, "manual")
    export_backup(source, backup_id, tmp_path / "out")
    target = _manager(tmp_path / "repo2")
    assert import_backup(target, tmp_path / "out") == backup_id
    other = source.create_backup({"a": 2}, "daily")
    export_backup(source, other, tmp_path / "out")
    with pytest.raises(InvalidExportError, match="several backups"):
        import_backup(_manager(tmp_path / "repo3"), tmp_path / "out")


def test_seed_s3_snippet_finds_the_exported_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's upload_to_s3 (verbatim but for the folder and blank-line whitespace), with
    a boto3 that records each upload."""
    uploaded: dict[str, bytes] = {}

    class FakeS3:
        def upload_file(self, filename: str, bucket: str, key: str) -> None:
            assert bucket == "peak-trade-backups"
            uploaded[key] = Path(filename).read_bytes()  # fails on a directory

    fake_boto3 = types.ModuleType("boto3")
    fake_boto3.client = lambda name: FakeS3()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "boto3", fake_boto3)

    manager = _manager(tmp_path / "repo")
    backup_id = manager.create_backup(PLAIN_DATA)
    export_backup(manager, backup_id, "./backups-export", gzip=True)

    snippet = """
import boto3
from pathlib import Path

def upload_to_s3(backup_id: str):
    s3 = boto3.client("s3")
    bucket = "peak-trade-backups"

    backup_dir = Path(f"./backups-export/{backup_id}")
    for file_path in backup_dir.glob("*"):
        s3_key = f"{backup_id}/{file_path.name}"
        s3.upload_file(str(file_path), bucket, s3_key)

    print(f"Uploaded {backup_id} to S3")
"""
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    namespace["upload_to_s3"](backup_id)
    assert set(uploaded) == {
        f"{backup_id}/{name}"
        for name in (
            "metadata.json",
            "portfolio.json.gz",
            "config.json.gz",
            ".portfolio.msgpack",
            ".config.msgpack",
        )
    }
    meta = json.loads(uploaded[f"{backup_id}/metadata.json"])
    assert meta["backup_id"] == backup_id
    assert (
        json.loads(gzip.decompress(uploaded[f"{backup_id}/config.json.gz"])) == PLAIN_DATA["config"]
    )


# --------------------------------------------------------------------------- refusals


def test_import_of_an_existing_id_is_refused(tmp_path: Path) -> None:
    source = _manager(tmp_path / "repo")
    backup_id = source.create_backup({"a": 1}, "manual")
    exported = export_backup(source, backup_id, tmp_path / "out")
    with pytest.raises(BackupExistsError, match=f"backup {backup_id} already exists"):
        import_backup(source, exported)
    assert [i.backup_id for i in source.list_backups()] == [backup_id]


def test_commit_with_a_taken_id_never_gets_a_suffix(tmp_path: Path) -> None:
    source = _manager(tmp_path / "repo")
    backup_id = source.create_backup({"a": 1}, "manual")
    repository = source.repository
    moment = source.get_backup_info(backup_id).timestamp_utc
    with pytest.raises(BackupError, match=f"backup {backup_id} already exists"):
        repository.create_snapshot_as(backup_id, moment, "manual", [])
    assert repository.snapshot_ids() == [backup_id]


def test_export_refuses_an_existing_target_and_colliding_names(tmp_path: Path) -> None:
    source = _manager(tmp_path / "repo")
    backup_id = source.create_backup({"a": 1}, "manual")
    export_backup(source, backup_id, tmp_path / "out")
    with pytest.raises(BackupError, match="already exists"):
        export_backup(source, backup_id, tmp_path / "out")
    clash = source.create_backup({"metadata": {"x": 1}}, "other")
    with pytest.raises(BackupError, match=r"metadata\.json"):
        export_backup(source, clash, tmp_path / "out2")
    assert not (tmp_path / "out2" / clash).exists()


@pytest.mark.parametrize(
    "bad_id",
    ["../manual_20250101_000000", "manual", "Manual_20250101_000000", "manual_2025_01"],
)
def test_invalid_ids_in_metadata_are_refused(tmp_path: Path, bad_id: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "metadata.json").write_text(
        json.dumps({"backup_id": bad_id, "timestamp": "2025-01-01T00:00:00", "files": []})
    )
    with pytest.raises(InvalidExportError, match="backup_id"):
        import_backup(_manager(tmp_path / "repo"), folder)


def test_symlink_inside_an_export_folder_is_refused(tmp_path: Path, file_tree: Path) -> None:
    source = _manager(tmp_path / "repo", file_tree)
    backup_id = source.create_backup({"a": 1}, "manual")
    exported = export_backup(source, backup_id, tmp_path / "out")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (exported / "live_runs" / "run_001.json").unlink()
    (exported / "live_runs" / "run_001.json").symlink_to(secret)
    target = _manager(tmp_path / "repo2")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        import_backup(target, exported)
    assert target.list_backups() == []


def _valid_export_archive(tmp_path: Path) -> tuple[str, Path]:
    source = _manager(tmp_path / "src-repo")
    backup_id = source.create_backup({"a": 1}, "manual")
    folder = export_backup(source, backup_id, tmp_path / "src-out")
    return backup_id, folder


def _evil_archive(
    path: Path, folder: Path, backup_id: str, evil: Callable[[tarfile.TarFile], None]
) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=backup_id)
        evil(tar)
    return path


def _file_member(name: str, content: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, io.BytesIO(content)


@pytest.mark.parametrize(
    "kind", ["dotdot", "nested_dotdot", "absolute", "symlink", "hardlink", "device", "fifo"]
)
def test_tar_slip_is_refused_before_anything_is_written(tmp_path: Path, kind: str) -> None:
    backup_id, folder = _valid_export_archive(tmp_path)
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()

    def evil(tar: tarfile.TarFile) -> None:
        if kind == "dotdot":
            tar.addfile(*_file_member("../evil"))
        elif kind == "nested_dotdot":
            tar.addfile(*_file_member(f"{backup_id}/../../../../{victim_dir.name}/evil"))
        elif kind == "absolute":
            tar.addfile(*_file_member(str(victim_dir / "evil")))
        elif kind == "symlink":
            link = tarfile.TarInfo(f"{backup_id}/link")
            link.type = tarfile.SYMTYPE
            link.linkname = str(victim_dir)
            tar.addfile(link)
            tar.addfile(*_file_member(f"{backup_id}/link/evil"))
        elif kind == "hardlink":
            link = tarfile.TarInfo(f"{backup_id}/hard")
            link.type = tarfile.LNKTYPE
            link.linkname = str(victim_dir / "evil")
            tar.addfile(link)
        elif kind == "device":
            dev = tarfile.TarInfo(f"{backup_id}/dev")
            dev.type = tarfile.CHRTYPE
            dev.devmajor, dev.devminor = 1, 3
            tar.addfile(dev)
        else:
            fifo = tarfile.TarInfo(f"{backup_id}/fifo")
            fifo.type = tarfile.FIFOTYPE
            tar.addfile(fifo)

    archive = _evil_archive(tmp_path / "evil.tar.gz", folder, backup_id, evil)
    target = _manager(tmp_path / "repo")
    with pytest.raises(UnsafeArchiveError) as caught:
        import_backup(target, archive)
    message = str(caught.value)
    assert "refused" in message or "only regular files" in message
    assert list(victim_dir.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("evil").exists()
    assert not (tmp_path / "repo" / "repo.json").exists()  # not even a repository was created


def test_archive_size_and_shape_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id, folder = _valid_export_archive(tmp_path)
    archive = _evil_archive(tmp_path / "big.tar.gz", folder, backup_id, lambda tar: None)
    monkeypatch.setattr(tar_safety, "MAX_IMPORT_BYTES", 10)
    with pytest.raises(UnsafeArchiveError, match="more than 10 bytes"):
        import_backup(_manager(tmp_path / "repo"), archive)
    monkeypatch.undo()
    monkeypatch.setattr(tar_safety, "MAX_MEMBERS", 2)
    with pytest.raises(UnsafeArchiveError, match="more than 2 members"):
        import_backup(_manager(tmp_path / "repo"), archive)
    monkeypatch.undo()

    two = tmp_path / "two.tar.gz"
    with tarfile.open(two, "w:gz") as tar:
        tar.add(folder, arcname=backup_id)
        tar.add(folder, arcname="manual_20200101_000000")
    with pytest.raises(InvalidExportError, match="exactly one folder"):
        import_backup(_manager(tmp_path / "repo"), two)

    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_bytes(b"not an archive")
    with pytest.raises(InvalidExportError, match="not a readable tar archive"):
        import_backup(_manager(tmp_path / "repo"), not_tar)
    with pytest.raises(BackupError, match="no such file"):
        import_backup(_manager(tmp_path / "repo"), tmp_path / "missing")


# --------------------------------------------------------------------------- CLI


def test_cli_export_and_import_json(tmp_path: Path, file_tree: Path) -> None:
    config = (
        '[backup]\nbackup_path = "./backups"\nretention_days = 0\n'
        'sources = ["config.toml", "live_runs/"]\n'
    )
    (file_tree / "config.toml").write_text(config)
    created = run_cli_inline("create", "--type", "pre_trade", "--json", cwd=file_tree)
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backup_id"]

    for fmt in ("dir", "tar.gz"):
        result = run_cli_inline(
            "export",
            backup_id,
            "--to",
            f"out-{fmt}",
            "--format",
            fmt,
            "--gzip",
            "--json",
            cwd=file_tree,
        )
        assert result.returncode == 0, result.stderr
        payload = json.loads(result.stdout)
        assert payload["exported"] is True and payload["backup_id"] == backup_id
        assert payload["format"] == fmt and payload["gzip"] is True
        assert Path(payload["path"]).exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text('[backup]\nbackup_path = "./backups"\nretention_days = 0\n')
    archive = file_tree / "out-tar.gz" / f"{backup_id}.tar.gz"
    imported = run_cli_inline("--json", "import", str(archive), cwd=other)
    assert imported.returncode == 0, imported.stderr
    payload = json.loads(imported.stdout)
    assert payload["imported"] is True
    assert payload["backup_id"] == backup_id and payload["backup_type"] == "pre_trade"
    assert "live_runs/run_001.json" in payload["files"]

    again = run_cli_inline("import", str(file_tree / "out-dir" / backup_id), "--json", cwd=other)
    assert again.returncode == 1
    error = json.loads(again.stdout)["error"]
    assert error["type"] == "BackupExistsError" and error["exit_code"] == 1
    assert f"backup {backup_id} already exists" in error["message"]

    plain = run_cli_inline("import", str(file_tree / "out-dir" / backup_id), cwd=other)
    assert plain.returncode == 1
    assert "already exists" in plain.stderr

    missing = run_cli_inline(
        "export", "manual_20000101_000000", "--to", "x", "--json", cwd=file_tree
    )
    assert missing.returncode == 3
