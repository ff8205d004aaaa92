"""``restore --in-place``: files written back where they came from, undoable, and safe
against hostile manifests (nothing written outside the source roots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from src.infra.backup import BackupConfig, BackupManager, RecoveryError, RecoveryManager
from src.infra.backup.files.in_place import ABSENT_KEY, PRE_RESTORE_TYPE, matches_filters
from src.infra.backup.format.manifest import encode_checked
from tests.factories import write_tree
from tests.helpers import PROJECT_ROOT, run_cli_inline

# name -> (content, mode, mtime_ns)
FILES = {
    "config.toml": (b"[bot]\nstrategy = 'ma'\n", 0o644, 1_690_000_000_555_555_555),
    "live_runs/run_001.json": (b'{"run": 1, "equity": 10000.5}\n', 0o640, 1_700_000_000_1),
    "live_runs/run_002.json": (b'{"run": 2}\n', 0o600, 1_700_000_100_987_654_321),
    "live_runs/sub/trades.jsonl": (
        b"".join(b'{"i": %d}\n' % i for i in range(20000)),
        0o644,
        1_650_000_000_000_000_001,
    ),
    "live_runs/empty.json": (b"", 0o444, 1_600_000_000_000_000_000),
    "live_runs/model.bin": (bytes(range(256)) * 3000, 0o600, 1_640_000_000_000_000_007),
}

Tree = dict[str, tuple[int, int, bytes]]


def fingerprint(root: Path) -> Tree:
    """Every regular file below ``root`` (repository excluded): (mode, mtime_ns, content)."""
    found: Tree = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("repo") or not path.is_file() or path.is_symlink():
            continue
        if relative == "RESTORED_FROM":  # the stamp of the latest restore, not a restored file
            continue
        st = path.lstat()
        found[relative] = (st.st_mode & 0o7777, st.st_mtime_ns, path.read_bytes())
    return found


def make_project(root: Path) -> Path:
    write_tree(root, FILES)
    (root / "live_runs" / ".env").write_bytes(b"API_KEY=secret\n")  # never backed up
    (root / "README.md").write_text("not a source\n")
    return root


def project_manager(root: Path) -> BackupManager:
    config = BackupConfig(
        backup_path=str(root / "repo"),
        sources=["config.toml", "live_runs/"],
        base_dir=str(root),
        retention_days=0,
    )
    return BackupManager(config)


@pytest.fixture
def in_place_project(tmp_path: Path) -> Path:
    """The tree of ``FILES`` (plus a secret and a file that is not a source), the sources of
    ``manager_with_sources``."""
    return make_project(tmp_path / "project")


@pytest.fixture
def manager_with_sources(in_place_project: Path) -> BackupManager:
    """A manager backing up ``in_place_project`` (config.toml, live_runs/) into its ``repo``."""
    return project_manager(in_place_project)


def change_tree(root: Path) -> None:
    """Edits after the backup: changed, deleted, touched (same content), added files."""
    (root / "live_runs" / "run_001.json").write_bytes(b'{"run": 1, "equity": 0}\n')
    (root / "live_runs" / "sub" / "trades.jsonl").unlink()
    os.chmod(root / "live_runs" / "run_002.json", 0o666)
    os.utime(root / "live_runs" / "run_002.json", ns=(5, 5))
    (root / "live_runs" / "extra.json").write_bytes(b"{}\n")
    (root / "live_runs" / "newdir").mkdir()
    (root / "live_runs" / "newdir" / "x.json").write_bytes(b"[]\n")
    with open(root / "config.toml", "ab") as handle:  # same size would not be enough
        handle.write(b"# edited\n")


def test_restore_in_place_restores_changed_files_byte_identical(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    before = fingerprint(in_place_project)
    backup_id = manager_with_sources.create_backup({"state": {"equity": 1}}, include_files=True)
    change_tree(in_place_project)
    result = RecoveryManager(manager_with_sources).restore_in_place(backup_id)
    after = fingerprint(in_place_project)
    for name in FILES:
        assert after[name] == before[name], name
    assert "live_runs/extra.json" in after  # no --delete: extra files stay
    counts = result.counts
    assert counts["create"] == 1 and counts["overwrite"] == 2 and counts["metadata"] == 1
    assert counts["unchanged"] == 2 + 2 and counts["delete"] == 0  # and the two directories
    assert result.skipped_data == ["state"]
    assert result.bytes_written == (
        len(FILES["live_runs/sub/trades.jsonl"][0])
        + len(FILES["config.toml"][0])
        + len(FILES["live_runs/run_001.json"][0])
    )
    assert result.pre_restore_id is not None
    info = manager_with_sources.get_backup_info(result.pre_restore_id)
    assert info.backup_type == PRE_RESTORE_TYPE
    assert info.tags == {"restore_of": backup_id}
    assert sorted(info.file_paths) == [
        "config.toml",
        "live_runs/run_001.json",
        "live_runs/run_002.json",
    ]
    assert info.data_keys == [ABSENT_KEY]
    assert manager_with_sources.load_backup(result.pre_restore_id)[ABSENT_KEY] == [
        "live_runs/sub/trades.jsonl"
    ]


@pytest.mark.parametrize("delete", [False, True])
def test_undo_through_pre_restore_backup_is_byte_identical(
    in_place_project: Path, manager_with_sources: BackupManager, delete: bool
) -> None:
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    change_tree(in_place_project)
    edited = fingerprint(in_place_project)
    recovery = RecoveryManager(manager_with_sources)
    result = recovery.restore_in_place(backup_id, delete=delete)
    assert fingerprint(in_place_project) != edited
    assert result.pre_restore_id is not None
    undo = recovery.restore_in_place(result.pre_restore_id)
    assert fingerprint(in_place_project) == edited  # content, mode and mtime of every file
    assert undo.pre_restore_id is not None  # the undo can itself be undone


def test_redo_after_undo_equals_the_restore(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    change_tree(in_place_project)
    recovery = RecoveryManager(manager_with_sources)
    first = recovery.restore_in_place(backup_id, delete=True)
    restored = fingerprint(in_place_project)
    assert first.pre_restore_id is not None
    undo = recovery.restore_in_place(first.pre_restore_id)
    assert undo.pre_restore_id is not None
    recovery.restore_in_place(undo.pre_restore_id)
    assert fingerprint(in_place_project) == restored


def test_delete_removes_only_sourced_files_in_backed_up_directories(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    change_tree(in_place_project)
    (in_place_project / "notes.txt").write_text("root files are not sources\n")
    result = RecoveryManager(manager_with_sources).restore_in_place(backup_id, delete=True)
    assert result.paths("delete") == [in_place_project / "live_runs" / "extra.json"]
    assert not (in_place_project / "live_runs" / "extra.json").exists()
    assert (in_place_project / "live_runs" / ".env").exists()  # a secret: never a source
    # no backed-up file in newdir/: nothing there is deleted
    assert (in_place_project / "live_runs" / "newdir" / "x.json").exists()
    assert (in_place_project / "notes.txt").exists() and (in_place_project / "README.md").exists()
    assert result.pre_restore_id is not None
    saved = manager_with_sources.get_backup_info(result.pre_restore_id).file_paths
    assert "live_runs/extra.json" in saved


def test_delete_with_a_pre_restore_backup_stays_within_what_it_covers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``restore <pre_restore> --in-place --delete`` deletes only among the files the partial
    pre_restore backup covers (its files and its absent list), never a file the restore it
    undoes did not touch."""
    root = tmp_path / "bot"
    state = root / "state"
    state.mkdir(parents=True)
    manager = BackupManager(
        BackupConfig(
            backup_path=str(root / "repo"),
            sources=["state/"],
            base_dir=str(root),
            retention_days=0,
        )
    )
    (state / "a.txt").write_bytes(b"A as backed up\n")
    (state / "b.txt").write_bytes(b"B as backed up\n")
    (state / "d.txt").write_bytes(b"D as backed up\n")
    backup_x = manager.create_backup(None, "manual", include_files=True)
    (state / "a.txt").write_bytes(b"A edited after the backup\n")
    (state / "d.txt").unlink()
    (state / "c.txt").write_bytes(b"C, new after the backup\n")
    edited = fingerprint(root)

    recovery = RecoveryManager(manager)
    restore = recovery.restore_in_place(backup_x)  # overwrites A, creates D, leaves B and C
    assert restore.counts["overwrite"] == 1 and restore.counts["create"] == 1
    pre_p = restore.pre_restore_id
    assert pre_p is not None
    assert manager.get_backup_info(pre_p).file_paths == ["state/a.txt"]
    assert manager.load_backup(pre_p)[ABSENT_KEY] == ["state/d.txt"]

    caplog.set_level("WARNING", logger="src.infra.backup.files.in_place")
    plan = recovery.restore_in_place(pre_p, delete=True, dry_run=True)
    assert plan.paths("delete") == [state / "d.txt"]  # the absent file only
    assert plan.notes and "pre_restore" in plan.notes[0]
    undo = recovery.restore_in_place(pre_p, delete=True)
    assert undo.paths("delete") == [state / "d.txt"]
    assert undo.notes == plan.notes
    assert any("deletes nothing more" in r.getMessage() for r in caplog.records)
    # B (held by X, untouched) and C (never in any backup) are still there: the undo with
    # --delete gives exactly the tree as it was before the restore.
    assert fingerprint(root) == edited
    assert (state / "b.txt").read_bytes() == b"B as backed up\n"
    assert (state / "c.txt").read_bytes() == b"C, new after the backup\n"

    # --delete keeps its meaning for a full backup: C is not in X, so it goes.
    again = recovery.restore_in_place(backup_x, delete=True)
    assert again.paths("delete") == [state / "c.txt"] and not again.notes
    assert not (state / "c.txt").exists() and (state / "b.txt").exists()


def test_dry_run_writes_nothing(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    change_tree(in_place_project)
    edited = fingerprint(in_place_project)
    backups = len(manager_with_sources.list_backups())
    result = RecoveryManager(manager_with_sources).restore_in_place(
        backup_id, dry_run=True, delete=True
    )
    assert fingerprint(in_place_project) == edited
    assert len(manager_with_sources.list_backups()) == backups
    assert result.dry_run and result.pre_restore_id is None and result.bytes_written == 0
    actions = {a.name: a.action for a in result.actions if a.kind != "dir"}
    assert actions == {
        "config.toml": "overwrite",
        "live_runs/empty.json": "unchanged",
        "live_runs/model.bin": "unchanged",
        "live_runs/run_001.json": "overwrite",
        "live_runs/run_002.json": "metadata",
        "live_runs/sub/trades.jsonl": "create",
        "live_runs/extra.json": "delete",
    }


def test_overwrite_never_and_always(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    change_tree(in_place_project)
    edited = (in_place_project / "live_runs" / "run_001.json").read_bytes()
    recovery = RecoveryManager(manager_with_sources)
    never = recovery.restore_in_place(backup_id, overwrite="never")
    assert (in_place_project / "live_runs" / "run_001.json").read_bytes() == edited
    assert (in_place_project / "live_runs" / "sub" / "trades.jsonl").exists()  # missing: created
    assert never.counts["kept"] == 5 and never.counts["create"] == 1
    assert never.counts["overwrite"] == 0
    always = recovery.restore_in_place(backup_id, overwrite="always")
    assert always.counts["overwrite"] == len(FILES)  # identical files rewritten too
    assert fingerprint(in_place_project)["live_runs/run_001.json"] == (
        FILES["live_runs/run_001.json"][1],
        FILES["live_runs/run_001.json"][2],
        FILES["live_runs/run_001.json"][0],
    )
    with pytest.raises(ValueError, match="overwrite must be one of"):
        recovery.restore_in_place(backup_id, overwrite="sometimes")  # type: ignore[arg-type]


def test_if_changed_compares_content_not_mtime(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    path = in_place_project / "live_runs" / "run_002.json"
    mode, mtime_ns = path.stat().st_mode, path.stat().st_mtime_ns
    path.write_bytes(b'{"run": 9}\n')  # same size, other content
    os.utime(path, ns=(mtime_ns, mtime_ns))  # and the same mtime
    os.chmod(path, mode)
    result = RecoveryManager(manager_with_sources).restore_in_place(backup_id)
    assert [a.name for a in result.actions if a.action == "overwrite"] == ["live_runs/run_002.json"]
    assert path.read_bytes() == FILES["live_runs/run_002.json"][0]


def test_include_and_exclude_select_a_partial_restore(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    change_tree(in_place_project)
    recovery = RecoveryManager(manager_with_sources)
    result = recovery.restore_in_place(backup_id, include=["live_runs/sub"], delete=True)
    assert [a.name for a in result.actions if a.kind != "dir"] == ["live_runs/sub/trades.jsonl"]
    assert result.filtered == len(FILES) - 1 + 1  # and the directory live_runs
    assert (in_place_project / "live_runs" / "extra.json").exists()  # outside the selection
    assert (in_place_project / "config.toml").read_bytes() != FILES["config.toml"][0]
    result = recovery.restore_in_place(
        backup_id, include=["live_runs/*.json"], exclude=["*run_001*"], delete=True
    )
    names = {a.name: a.action for a in result.actions}
    assert names["live_runs/extra.json"] == "delete"
    assert "live_runs/run_001.json" not in names and "config.toml" not in names
    run_001 = in_place_project / "live_runs" / "run_001.json"
    assert run_001.read_bytes() != FILES["live_runs/run_001.json"][0]
    with pytest.raises(ValueError, match="sequence of patterns"):
        recovery.restore_in_place(backup_id, include="live_runs")  # type: ignore[arg-type]


def test_matches_filters() -> None:
    assert matches_filters("live_runs/a.json", (), ())
    assert matches_filters("live_runs/sub/a.json", ["live_runs"], ())
    assert matches_filters("live_runs/sub/a.json", ["live_runs/"], ())
    assert not matches_filters("config.toml", ["live_runs"], ())
    assert matches_filters("live_runs/sub/a.json", (), ["sub"])  # whole paths, not names
    assert not matches_filters("live_runs/sub/a.json", (), ["live_runs/sub"])
    assert matches_filters("/srv/x.json", ["/srv/*"], ())


def test_data_only_backup_writes_nothing(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    backup_id = manager_with_sources.create_backup(
        {"portfolio": {"equity": 1}}, include_files=False
    )
    before = fingerprint(in_place_project)
    result = RecoveryManager(manager_with_sources).restore_in_place(backup_id)
    assert result.actions == [] and result.skipped_data == ["portfolio"]
    assert result.pre_restore_id is None
    assert fingerprint(in_place_project) == before


def test_absolute_entries_outside_the_base_directory(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "params.json").write_bytes(b'{"fast": 5}\n')
    config = BackupConfig(
        backup_path=str(project / "repo"),
        sources=["live_runs/", str(shared / "params.json")],
        base_dir=str(project),
        retention_days=0,
    )
    manager = BackupManager(config)
    backup_id = manager.create_backup(None, include_files=True)
    assert str(shared / "params.json") in manager.get_backup_info(backup_id).file_paths
    (shared / "params.json").write_bytes(b'{"fast": 7}\n')
    result = RecoveryManager(manager).restore_in_place(backup_id)
    assert (shared / "params.json").read_bytes() == b'{"fast": 5}\n'
    assert result.counts["overwrite"] == 1
    assert result.pre_restore_id is not None
    assert manager.get_backup_info(result.pre_restore_id).file_paths == [
        str(shared / "params.json")
    ]


# -- hostile and damaged manifests ---------------------------------------------------------


def forge(manager: BackupManager, backup_id: str, new_id: str, **changes: object) -> str:
    """A manifest with a valid checksum, derived from ``backup_id`` with ``changes``:
    ``name`` renames the first file entry (and its path), ``base_dir`` replaces it."""
    repository = manager.repository
    manifest = repository.read_manifest(backup_id)
    entries = list(manifest.entries)
    if "name" in changes:
        index = next(i for i, e in enumerate(entries) if e.kind == "file")
        name = str(changes["name"])
        entries[index] = msgspec.structs.replace(entries[index], name=name, path=name)
    forged = msgspec.structs.replace(manifest, backup_id=new_id, entries=entries)
    if "base_dir" in changes:
        forged = msgspec.structs.replace(forged, base_dir=changes["base_dir"])
    path = manager.config.repository_path / "snapshots" / f"{new_id}.json"
    path.write_bytes(encode_checked(forged))
    return new_id


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "../../x"},
        {"name": "live_runs/../../x"},
        {"name": "/etc/x"},
        {"name": "live_runs/a\0b"},
        {"name": "live_runs//x"},
        {"name": "./x"},
        {"base_dir": "/etc"},
        {"base_dir": "relative/dir"},
    ],
    ids=[
        "dotdot",
        "inner-dotdot",
        "absolute-etc",
        "nul",
        "empty-part",
        "dot",
        "base-etc",
        "base-rel",
    ],
)
def test_hostile_manifest_writes_nothing(
    in_place_project: Path,
    manager_with_sources: BackupManager,
    tmp_path: Path,
    changes: dict[str, object],
) -> None:
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    change_tree(in_place_project)
    before = fingerprint(in_place_project)
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    forged = forge(manager_with_sources, backup_id, "manual_20200101_000000", **changes)
    backups = len(manager_with_sources.list_backups())
    with pytest.raises(RecoveryError, match="cannot be restored in place safely"):
        RecoveryManager(manager_with_sources).restore_in_place(forged, delete=True)
    assert fingerprint(in_place_project) == before  # not even the safe entries were written
    assert len(manager_with_sources.list_backups()) == backups  # no pre_restore backup either
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before
    assert not Path("/etc/x").exists()


def test_symlinked_directory_on_the_way_is_refused(
    in_place_project: Path, manager_with_sources: BackupManager, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (in_place_project / "live_runs" / "sub" / "trades.jsonl").unlink()
    (in_place_project / "live_runs" / "sub").rmdir()
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    forged = forge(
        manager_with_sources, backup_id, "manual_20200101_000000", name="live_runs/sub/evil.json"
    )
    (in_place_project / "live_runs" / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RecoveryError, match="symbolic link"):
        RecoveryManager(manager_with_sources).restore_in_place(forged)
    assert list(outside.iterdir()) == []
    # The same for a link in place of the file itself.
    (in_place_project / "live_runs" / "sub").unlink()
    (in_place_project / "live_runs" / "run_001.json").unlink()
    (in_place_project / "live_runs" / "run_001.json").symlink_to(outside / "target.json")
    with pytest.raises(RecoveryError, match="symbolic link"):
        RecoveryManager(manager_with_sources).restore_in_place(backup_id)
    assert list(outside.iterdir()) == []


def test_absolute_entry_inside_a_source_root_only(
    in_place_project: Path, manager_with_sources: BackupManager
) -> None:
    """An absolute entry is taken as-is only within the configured source roots."""
    backup_id = manager_with_sources.create_backup(None, include_files=True)
    inside = str(in_place_project / "live_runs" / "abs.json")
    forged = forge(manager_with_sources, backup_id, "manual_20200101_000000", name=inside)
    result = RecoveryManager(manager_with_sources).restore_in_place(forged, dry_run=True)
    assert Path(inside) in result.paths("create")
    outside = str(in_place_project.parent / "elsewhere.json")
    forged = forge(manager_with_sources, backup_id, "manual_20200101_000001", name=outside)
    with pytest.raises(RecoveryError, match="outside the source roots"):
        RecoveryManager(manager_with_sources).restore_in_place(forged)
    assert not Path(outside).exists()


# -- command line --------------------------------------------------------------------------


def test_cli_in_place_dry_run_restore_and_undo(in_place_project: Path) -> None:
    (in_place_project / "config.toml").write_text(
        (in_place_project / "config.toml").read_text()
        + '\n[backup]\nbackup_path = "repo"\nretention_days = 0\n'
        'sources = ["live_runs/"]\n'
    )
    created = run_cli_inline("create", cwd=in_place_project)
    assert created.returncode == 0, created.stderr
    change_tree(in_place_project)
    edited = fingerprint(in_place_project)
    dry = run_cli_inline(
        "restore", "--in-place", "--dry-run", "--delete", "--json", cwd=in_place_project
    )
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and plan["pre_restore_id"] is None
    assert plan["counts"]["create"] == 1 and plan["counts"]["delete"] == 1
    assert fingerprint(in_place_project) == edited
    text = run_cli_inline("restore", "--in-place", "--dry-run", cwd=in_place_project)
    assert "create" in text.stdout and "trades.jsonl" in text.stdout
    done = run_cli_inline("restore", "--in-place", "--delete", cwd=in_place_project)
    assert done.returncode == 0, done.stderr
    assert "pre_restore_" in done.stdout and "undo with" in done.stdout
    pre_id = next(w for w in done.stdout.split() if w.startswith("pre_restore_")).rstrip(";")
    assert not (in_place_project / "live_runs" / "extra.json").exists()
    undo = run_cli_inline("restore", pre_id, "--in-place", cwd=in_place_project)
    assert undo.returncode == 0, undo.stderr
    assert fingerprint(in_place_project) == edited


def test_cli_in_place_options_need_in_place(in_place_project: Path) -> None:
    for args in (
        ["--dry-run"],
        ["--delete"],
        ["--overwrite", "never"],
        ["--include", "x"],
        ["--in-place", "--target", "t"],
    ):
        result = run_cli_inline("restore", "manual_20200101_000000", *args, cwd=in_place_project)
        assert result.returncode == 2, (args, result.stderr)
    bad = run_cli_inline(
        "restore", "x", "--in-place", "--overwrite", "sometimes", cwd=in_place_project
    )
    assert bad.returncode == 2


def test_bench_restore_tree_small(tmp_path: Path) -> None:
    """The benchmark generates a mixed tree, backs it up, restores it byte-identical."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.restore_tree", "--size-mb", "5", "--json"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout[result.stdout.index("{") :])
    assert figures["identical"] is True
    assert figures["files"] > 20 and 4.5 < figures["size_mb"] < 5.5
    for key in ("backup_mb_s", "restore_mb_s", "cp_a_mb_s"):
        assert figures[key] > 0


def test_mixed_tree_restored_in_place_byte_identical(tmp_path: Path) -> None:
    from bench.restore_tree import generate_tree

    project = tmp_path / "mixed"
    generate_tree(project / "data", 3 * 1_000_000, seed=7)
    config = BackupConfig(
        backup_path=str(tmp_path / "repo"),
        sources=["data/"],
        base_dir=str(project),
        retention_days=0,
    )
    manager = BackupManager(config)
    before = fingerprint(project)
    backup_id = manager.create_backup(None, include_files=True)
    for path in sorted((project / "data").rglob("*.json"))[::3]:
        path.unlink()
    result = RecoveryManager(manager).restore_in_place(backup_id, verify=True)
    assert result.verified and result.counts["create"] > 0
    assert fingerprint(project) == before
