"""Generate the frozen format-2 repositories under ``tests/data/format2/``.

**The fixture is frozen: never regenerate it to make a test pass.** It captures the repository
format as one commit writes it, so ``tests/test_format2_fixture.py`` can prove that later code
still reads it. Rebuilding it with changed code would test nothing. If it must ever be rebuilt
(for instance to add a case), export a clean commit and run the generator against that export,
with ``src`` imported from the export rather than from the working tree::

    rm -rf /tmp/format2-src && mkdir /tmp/format2-src
    git archive <commit> src | tar -x -C /tmp/format2-src
    cd /tmp && PYTHONPATH=/tmp/format2-src /work/main/.venv/bin/python \\
        /work/main/tools/make_format2_fixture.py --commit <commit> [--force]

``--commit`` is recorded in ``expected.json``. The generator refuses to run when ``src`` comes
from a git checkout with local changes.

It writes two repositories:

- ``plain/``: zstd, unencrypted;
- ``encrypted/``: ``chacha20-poly1305``, with the passphrase in the test module.

It also writes ``expected.json``: per repository, the backups (id, type, manifest format, which
values they hold, the SHA-256 of each data entry's stored bytes, the number of chunk lists per
entry, the SHA-256 of the database copy), and the chunk ids left in ``fossils/``. The values,
the source tree and the passphrase are defined in ``tests/test_format2_fixture.py`` and
imported from there, so the test holds the known answers.

The fourth backup of each repository is taken in the middle of a garbage collection. A
``scratch`` backup of the ``ledger`` value is committed first. Then an ``automatic`` backup of
the same value starts; it takes its lease and learns the scratch backup's chunks as its
parent's. While it runs, an entry source of this module:

1. deletes the scratch backup;
2. dates its chunks two hours back;
3. runs ``prune`` (grace 1 hour), which moves them to ``fossils/`` under a pending record in
   ``gc/``.

The backup then reuses those chunks, as its lease allows, and commits. The fixture keeps that
state: a committed backup whose chunks are in ``fossils/``, and a collection that a later
prune completes by bringing them back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = PROJECT_ROOT / "tests"
FIXTURE_DIR = TESTS_DIR / "data" / "format2"
HOST = "format2-fixture"  # recorded in manifests instead of this machine's name


def _test_module() -> ModuleType:
    """``tests/test_format2_fixture.py``: the values, the source tree and the passphrase."""
    sys.path.insert(0, str(TESTS_DIR))  # it imports test_format_compat
    spec = importlib.util.spec_from_file_location(
        "test_format2_fixture", TESTS_DIR / "test_format2_fixture.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CollectTheParent:
    """An entry source that stores nothing. It runs while the backup holds its lease and
    already counts its parent's chunks as known: it deletes the parent, dates the parent's
    blobs two hours back, and runs a prune that moves them to ``fossils/``."""

    name = "collect-the-parent"

    def __init__(self, repository: Any, parent_id: str, root: Path) -> None:
        self.repository = repository
        self.parent_id = parent_id
        self.root = root
        self.collected: list[str] = []

    def store(self, writer: Any) -> None:
        from src.infra.backup.repository.gc import prune

        repository = self.repository
        blobs = sorted(repository.blob_sizes(repository.read_manifest(self.parent_id)))
        repository.delete_snapshot(self.parent_id)
        old = time.time() - 2 * 3600
        for cid in blobs:
            os.utime(self.root / "chunks" / cid[:2] / cid, (old, old))
        report = prune(repository, grace=timedelta(hours=1))
        assert report.fossilized == len(blobs) and report.deleted == 0, report
        self.collected = blobs
        return None


def _build(name: str, encryption: str, work: Path, tests: ModuleType) -> dict[str, Any]:
    from src.infra.backup import BackupConfig, BackupManager
    from src.infra.backup.repository.snapshot_writer import DataInput

    target = FIXTURE_DIR / name
    if target.exists():
        shutil.rmtree(target)
    base = work / name
    base.mkdir(parents=True)
    tests.make_source_tree(base)
    config = BackupConfig(
        backup_path=target,
        retention_days=0,
        auto_prune=False,
        compression="zstd",
        encryption=encryption,
        sources=[tests.SOURCE_DIR],
        base_dir=base,
    )
    manager = BackupManager(config, passphrase=tests.PASSPHRASE if encryption != "none" else None)
    made: list[tuple[str, str, str]] = []  # (type, id, values)
    tags = {"fixture": "format2"}
    made.append(
        (
            "manual",
            manager.create_backup(
                tests.backup_values("files"), "manual", tags=tags, note="every kind of entry"
            ),
            "files",
        )
    )
    for kind in ("pre_trade", "science"):
        values = tests.backup_values(kind)
        made.append((kind, manager.create_backup(values, kind, include_files=False), kind))
    ledger = tests.backup_values("ledger")
    scratch = manager.create_backup(ledger, "scratch", tags=tags, include_files=False)
    repository = manager.repository
    collect = CollectTheParent(repository, scratch, target)
    manifest = repository.create_snapshot(
        "automatic",
        [collect, *(DataInput.from_value(key, value) for key, value in ledger.items())],
        tags=tags,
        note="committed while a prune collected its parent",
    )
    assert manifest.parent == scratch and collect.collected
    made.append(("automatic", manifest.backup_id, "ledger"))

    backups = []
    for kind, backup_id, values_name in made:
        manifest = repository.read_manifest(backup_id)
        data, lists, database = {}, {}, None
        for entry in manifest.entries:
            if entry.lists:
                lists[entry.name] = len(entry.lists)
            if entry.kind == "data":
                data[entry.name] = hashlib.sha256(repository.read_entry(entry)).hexdigest()
            if entry.origin == "sqlite":
                database = hashlib.sha256(repository.read_entry(entry)).hexdigest()
        backup: dict[str, Any] = {
            "id": backup_id,
            "type": kind,
            "format": manifest.format,
            "values": values_name,
            "data_sha256": data,
            "chunk_lists": lists,
            "parent_deleted": kind == "automatic",
        }
        if database is not None:
            backup["database_sha256"] = database
        # What is frozen must be right: every value reads back as it was given.
        tests.assert_same(manager.load_backup(backup_id), tests.backup_values(values_name))
        backups.append(backup)
        assert not manifest.warnings, manifest.warnings
    _check_source_entries(repository.read_manifest(made[0][1]), tests)
    fossils = sorted(p.name for p in (target / "fossils").rglob("*") if p.is_file())
    assert fossils == collect.collected
    # status/ holds the generating host's run history: not part of the format.
    shutil.rmtree(target / "status", ignore_errors=True)
    # git keeps no empty directories: store the repository as a checkout will have it.
    for directory in sorted(target.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    leftovers = list(target.rglob(".*"))
    assert not leftovers, leftovers
    return {"encryption": encryption, "backups": backups, "fossils": fossils}


def _check_source_entries(manifest: Any, tests: ModuleType) -> None:
    """The ``manual`` backup recorded the source tree as the test module describes it."""
    entries = {entry.name: entry for entry in manifest.entries}
    for name, (mode, mtime_ns) in tests.DIRS.items():
        assert (entries[name].kind, entries[name].mode, entries[name].mtime_ns) == (
            "dir",
            mode,
            mtime_ns,
        ), name
    for name, (content, mode, mtime_ns) in tests.FILES.items():
        entry = entries[name]
        assert (entry.kind, entry.size, entry.mode, entry.mtime_ns) == (
            "file",
            len(content),
            mode,
            mtime_ns,
        ), name
    for name, primary in tests.HARDLINKS.items():
        assert (entries[name].kind, entries[name].target) == ("hardlink", primary), name
    for name, (text, mtime_ns) in tests.SYMLINKS.items():
        assert (entries[name].kind, entries[name].target, entries[name].mtime_ns) == (
            "symlink",
            text,
            mtime_ns,
        ), name
    database = entries[tests.DATABASE]
    assert database.origin == "sqlite" and database.mode == tests.DATABASE_MODE
    assert len(entries["state/history/ticks.csv"].chunks) > 1
    assert entries["history"].lists


def _check_source(commit: str) -> None:
    """Refuse to run on ``src`` from a git checkout with local changes (an export of
    ``commit`` has no ``.git`` and is taken as it is)."""
    import src

    checkout = Path(src.__file__).resolve().parents[1]
    if not commit or len(commit) < 7:
        raise SystemExit("give --commit <the commit src was exported from>")
    inside = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    if inside.returncode != 0:
        return  # an export (git archive): no checkout to inspect
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if dirty or not head.startswith(commit):
        raise SystemExit(
            f"src is imported from {checkout} at {head}{' with local changes' if dirty else ''}: "
            "export a clean commit and run with PYTHONPATH=<the export> (see the docstring)"
        )


def main(argv: list[str] | None = None) -> int:
    """Build both repositories and ``expected.json`` (refuses to overwrite the frozen
    fixture unless ``--force`` is given)."""
    args = sys.argv[1:] if argv is None else argv
    commit = args[args.index("--commit") + 1] if "--commit" in args else ""
    os.environ["PEAK_BACKUP_HOST"] = HOST  # read when src.infra.backup is imported
    _check_source(commit)
    expected_path = FIXTURE_DIR / "expected.json"
    if expected_path.exists() and "--force" not in args:
        print(f"{expected_path} exists: the fixture is frozen (pass --force to rebuild it)")
        return 1
    tests = _test_module()
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="format2-") as work:
        repositories = {
            name: _build(name, encryption, Path(work), tests)
            for name, encryption in tests.REPOSITORIES.items()
        }
    import numpy
    import pandas

    expected = {
        "format": 2,
        "generated_from_commit": commit,
        "generator": "tools/make_format2_fixture.py",
        "versions": {"numpy": numpy.__version__, "pandas": pandas.__version__},
        "repositories": repositories,
    }
    expected_path.write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {FIXTURE_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
