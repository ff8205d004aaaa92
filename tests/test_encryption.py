"""Encryption at rest, end to end through the public API and the CLI: round trips with both
AEADs, no plaintext on disk, keyed chunk ids, passphrase errors, ``key passwd``, tamper
detection of every object kind, secrets files, and configuration mismatches.

The KDF is the real default (about 85 ms per derivation); unlocked keys are cached per process
and repository, so the repositories are built once per module and copied for tests that change
them (a copy keeps the repository id and header, so it unlocks from the cache).

Some tests reproduced bugs found while writing this file that have since been fixed; they
stay as regression tests, and each docstring says what it guards.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import blake3
import msgspec
import pytest
from layout_helpers import CHUNK_HOLDERS, preserved, write_stored
from stored_chunks import damage_chunk, is_packed, read_stored, stored_chunk_ids

from src.infra.backup import (
    BackupConfig,
    BackupError,
    BackupManager,
    ConfigError,
    FormatVersionError,
    IntegrityError,
    RecoveryManager,
    load_backup_config,
)
from src.infra.backup.errors import PassphraseRequiredError, WrongPassphraseError
from src.infra.backup.format.crypto import AEAD_ALGORITHMS
from src.infra.backup.format.manifest import RepoConfig, decode_checked, encode_checked
from tests.factories import write_file
from tests.helpers import run_cli_inline, run_cli_process

VENV_BIN = Path(sys.executable).parent
PEAK_BACKUP = [str(VENV_BIN / "peak-backup")] if (VENV_BIN / "peak-backup").exists() else None
PW = "correct horse battery staple"
MARKER_DATA = "QZXV-data-marker-7731"
MARKER_FILE = "QZXV-file-marker-4410"
FILE_NAME = "run_marker_0042.json"
FILE_MTIME_NS = 1_700_000_000_123_456_789
PASSWORD_ENV = ("PEAK_BACKUP_PASSWORD", "PEAK_BACKUP_PASSWORD_FILE", "PEAK_BACKUP_NEW_PASSWORD")


@pytest.fixture(autouse=True)
def _no_passphrase_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the API nor CLI children see a passphrase the test did not give them."""
    for name in PASSWORD_ENV:
        monkeypatch.delenv(name, raising=False)


def rich_state() -> dict[str, Any]:
    return {
        "portfolio": {
            "equity": Decimal("10432.1075"),
            "opened": datetime(2025, 3, 4, 5, 6, 7, 890123),
            "opened_utc": datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc),
            "pair": ("BTC", "USDT"),
            "positions": [
                {"qty": Decimal("0.015"), "legs": (1, 2.5, "x"), "at": datetime(2025, 1, 1)},
            ],
        },
        "notes": {"memo": f"remember {MARKER_DATA}", "markers": [MARKER_DATA] * 3},
    }


def make_project(root: Path) -> Path:
    """A bot directory with one run file holding ``MARKER_FILE``."""
    content = (json.dumps({"run": 42, "secret": MARKER_FILE}) + "\n").encode()
    write_file(root / "live_runs" / FILE_NAME, content, 0o640, FILE_MTIME_NS)
    return root


def config_for(repo: Path, project: Path, aead: str = "none", **extra: Any) -> BackupConfig:
    values: dict[str, Any] = {
        "backup_path": repo,
        "retention_days": 0,
        "encryption": aead,
        "sources": ["live_runs/"],
        "base_dir": project,
    }
    values.update(extra)
    return BackupConfig(**values)


@dataclass
class Built:
    """A repository built once per module: its manager, the backup in it, its project."""

    repo: Path
    project: Path
    config: BackupConfig
    backup_id: str

    def manager(
        self, passphrase: str | Callable[[], str] | None = PW, **changes: Any
    ) -> BackupManager:
        """A fresh manager (no caches shared) on this repository."""
        config = (
            self.config
            if not changes
            else config_for(self.repo, self.project, self.config.encryption, **changes)
        )
        return BackupManager(config, passphrase=passphrase)

    def copy(self, target: Path) -> Built:
        shutil.copytree(self.repo, target)
        return Built(
            target,
            self.project,
            config_for(target, self.project, self.config.encryption),
            self.backup_id,
        )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """One encrypted repository per AEAD (chacha: zstd; aes: no compression, so the leak
    test has nothing but the cipher to hide the plaintext), and an unencrypted control
    without compression. Same content everywhere."""
    base = tmp_path_factory.mktemp("encryption")
    project = make_project(base / "project")
    repos = {}
    for name, aead, compress in (
        ("chacha20-poly1305", "chacha20-poly1305", True),
        ("aes-256-gcm", "aes-256-gcm", False),
        ("plain", "none", False),
    ):
        repo = base / f"repo-{name}"
        config = config_for(repo, project, aead, compress=compress)
        manager = BackupManager(config, passphrase=PW if aead != "none" else None)
        backup_id = manager.create_backup(
            rich_state(), tags={"order": MARKER_DATA}, note=f"note {MARKER_DATA}"
        )
        repos[name] = Built(repo, project, config, backup_id)
    return repos


ENCRYPTED = list(AEAD_ALGORITHMS)


def all_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def chunk_ids(built: Built) -> set[str]:
    """Every chunk stored in the repository (loose or packed; an encrypted pack index is read
    with the repository's keys)."""
    encrypted = built.config.encryption != "none"
    return stored_chunk_ids(built.repo, built.manager(PW if encrypted else None).repository.keys)


def tree_state(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


# -- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("aead", ENCRYPTED)
def test_round_trip_list_load_verify_check_restore(
    built: dict[str, Built], aead: str, tmp_path: Path
) -> None:
    repo = built[aead]
    manager = repo.manager()
    assert manager.repository.encrypted
    assert json.loads((repo.repo / "repo.json").read_text())["encryption"]["aead"] == aead
    infos = manager.list_backups()
    assert [i.backup_id for i in infos] == [repo.backup_id]
    assert infos[0].tags == {"order": MARKER_DATA} and infos[0].note == f"note {MARKER_DATA}"
    assert infos[0].files == ["portfolio.json", "notes.json", f"live_runs/{FILE_NAME}"]
    data = manager.load_backup(repo.backup_id)
    assert data == rich_state()
    assert type(data["portfolio"]["equity"]) is Decimal
    assert type(data["portfolio"]["pair"]) is tuple
    assert data["portfolio"]["opened_utc"].tzinfo is not None

    recovery = RecoveryManager(repo.manager())
    assert recovery.verify_backup(repo.backup_id)
    assert recovery.restore_latest_backup() == rich_state()
    assert recovery.get_latest_backup() == repo.backup_id
    report = repo.manager().check()
    assert report.clean and report.orphaned_chunks == 0, report.to_json()

    result = recovery.restore_to_directory(repo.backup_id, tmp_path / "out", verify=True)
    assert result.verified
    restored = tmp_path / "out" / "live_runs" / FILE_NAME
    original = repo.project / "live_runs" / FILE_NAME
    assert restored.read_bytes() == original.read_bytes()
    assert stat.S_IMODE(restored.stat().st_mode) == 0o640
    assert restored.stat().st_mtime_ns == FILE_MTIME_NS
    assert MARKER_DATA in (tmp_path / "out" / "notes.json").read_text()


@pytest.mark.parametrize("aead", ENCRYPTED)
def test_second_backup_deduplicates_and_both_restore(
    built: dict[str, Built], aead: str, tmp_path: Path
) -> None:
    repo = built[aead].copy(tmp_path / "repo")
    manager = repo.manager()
    second_state = rich_state() | {"extra": {"n": 2}}
    second = manager.create_backup(second_state)
    info = manager.get_backup_info(second)
    assert info.added_bytes < info.size_bytes  # the unchanged entries cost nothing
    fresh = repo.manager()
    assert fresh.load_backup(second) == second_state
    assert fresh.load_backup(repo.backup_id) == rich_state()
    assert fresh.check().clean


def test_prune_on_an_encrypted_repository(built: dict[str, Built], tmp_path: Path) -> None:
    """Prune works on keyed chunk ids and sealed manifests: with grace 0 one run collects and
    deletes the deleted backup's chunks; the rest still decrypts and checks clean."""
    repo = built["chacha20-poly1305"].copy(tmp_path / "repo")
    manager = repo.manager()
    doomed = manager.create_backup({"unique": [f"row {i} {MARKER_DATA}" for i in range(5000)]})
    kept_state = rich_state() | {"extra": {"n": 3}}
    kept = manager.create_backup(kept_state)
    manager.delete_backup(doomed)
    first = manager.prune(grace=timedelta(0))
    assert first.fossilized > 0 and first.deleted == first.fossilized, first
    assert first.resurrected == 0 and first.postponed == [], first
    assert [p for p in (repo.repo / "fossils").rglob("*") if p.is_file()] == []
    assert [p for p in (repo.repo / "gc").rglob("*") if p.is_file()] == []
    second = manager.prune(grace=timedelta(0))
    assert (second.fossilized, second.deleted, second.resurrected) == (0, 0, 0), second
    fresh = repo.manager()
    assert fresh.load_backup(repo.backup_id) == rich_state()
    assert fresh.load_backup(kept) == kept_state
    report = fresh.check()
    assert report.clean and report.orphaned_chunks == 0 and report.fossils == 0


# -- confidentiality -----------------------------------------------------------------------------


def test_no_plaintext_anywhere_in_encrypted_repositories(built: dict[str, Built]) -> None:
    needles = [MARKER_DATA.encode(), MARKER_FILE.encode(), FILE_NAME.encode(), b"BTC", b"USDT"]
    # The control proves the search finds plaintext when it is there.
    control = b"".join(all_bytes(built["plain"].repo).values())
    assert all(needle in control for needle in needles[:3])
    searched = 0
    for aead in ENCRYPTED:
        for path, content in all_bytes(built[aead].repo).items():
            searched += 1
            for needle in needles:
                assert needle not in content, f"{needle!r} in {path}"
                assert needle.decode() not in str(path), f"{needle!r} in a file name"
    print(f"\nleak search: {len(needles)} markers, {searched} files, 0 hits")


def test_chunk_ids_are_keyed(built: dict[str, Built]) -> None:
    names = {aead: chunk_ids(built[aead]) for aead in [*ENCRYPTED, "plain"]}
    assert all(is_packed(built[aead].repo) for aead in names)  # the default format
    plaintexts: dict[str, set[str]] = {}
    for aead in ENCRYPTED:
        manager = built[aead].manager()
        repository = manager.repository
        manifest = repository.read_manifest(built[aead].backup_id)
        for entry in manifest.entries:
            for ref in repository.entry_refs(entry):
                plain = repository.read_chunk(ref)
                assert blake3.blake3(plain).hexdigest() != ref.id
                assert repository.keys is not None and repository.keys.chunk_id(plain) == ref.id
                assert ref.id in names[aead]
                plaintexts.setdefault(aead, set()).add(blake3.blake3(plain).hexdigest())
    # Same content, same plaintext chunks, yet no id in common (and none equals the plain id).
    assert plaintexts["chacha20-poly1305"] == plaintexts["aes-256-gcm"]
    assert plaintexts["chacha20-poly1305"] <= names["plain"]
    assert not names["chacha20-poly1305"] & names["aes-256-gcm"]
    assert not (names["chacha20-poly1305"] | names["aes-256-gcm"]) & names["plain"]


def test_same_content_in_two_repositories_with_the_same_aead_gets_different_ids(
    built: dict[str, Built], tmp_path: Path
) -> None:
    config = config_for(tmp_path / "other", built["plain"].project, "chacha20-poly1305")
    other = BackupManager(config, passphrase=PW)  # even the same passphrase
    other.create_backup(rich_state())
    first = chunk_ids(built["chacha20-poly1305"])
    second = chunk_ids(Built(tmp_path / "other", built["plain"].project, config, ""))
    assert len(first) == len(second) > 0
    assert not first & second


# -- passphrases -------------------------------------------------------------------------------


def test_wrong_and_missing_passphrase_api(
    built: dict[str, Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = built["chacha20-poly1305"]
    wrong = repo.manager(passphrase="not the passphrase")
    with pytest.raises(WrongPassphraseError, match="wrong passphrase") as caught:
        wrong.list_backups()
    assert isinstance(caught.value, BackupError) and caught.value.exit_code == 8
    with pytest.raises(WrongPassphraseError):
        repo.manager(passphrase="not the passphrase").load_backup(repo.backup_id)
    assert RecoveryManager(repo.manager(passphrase="nope")).verify_backup(repo.backup_id) is False
    with pytest.raises(WrongPassphraseError):
        repo.manager(passphrase=lambda: "nope").create_backup({"x": 1})
    assert [p.name for p in (repo.repo / "snapshots").iterdir()] == [f"{repo.backup_id}.json"]

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no terminal to ask on
    with pytest.raises(PassphraseRequiredError) as required:
        repo.manager(passphrase=None).list_backups()
    assert required.value.exit_code == 8
    assert "PEAK_BACKUP_PASSWORD" in str(required.value)
    # The environment is the default source.
    monkeypatch.setenv("PEAK_BACKUP_PASSWORD", PW)
    assert repo.manager(passphrase=None).load_backup(repo.backup_id) == rich_state()


def write_cli_config(directory: Path, repo: Path, *extra: str) -> None:
    lines = ["[backup]", f'backup_path = "{repo}"', "retention_days = 0", *extra]
    (directory / "config.toml").write_text("\n".join(lines) + "\n")


def test_cli_wrong_and_missing_passphrase_exit_8(built: dict[str, Built], tmp_path: Path) -> None:
    repo = built["aes-256-gcm"]
    write_cli_config(tmp_path, repo.repo)
    before = tree_state(repo.repo)
    for args in (("list",), ("restore", "--verify"), ("verify",), ("show", repo.backup_id)):
        result = run_cli_inline(*args, cwd=tmp_path, env={"PEAK_BACKUP_PASSWORD": "wrong"})
        assert result.returncode == 8, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == ["error: wrong passphrase for this repository"], (args, lines)
    result = run_cli_inline("--json", "list", cwd=tmp_path, env={"PEAK_BACKUP_PASSWORD": "wrong"})
    assert result.returncode == 8
    error = json.loads(result.stdout)["error"]
    assert error == {
        "type": "WrongPassphraseError",
        "exit_code": 8,
        "message": "wrong passphrase for this repository",
    }

    missing = run_cli_process("list", cwd=tmp_path)  # stdin is an empty pipe, not a terminal
    assert missing.returncode == 8, (missing.stdout, missing.stderr)
    assert "Traceback" not in missing.stderr
    assert "needs a passphrase" in missing.stderr and "PEAK_BACKUP_PASSWORD" in missing.stderr
    missing_json = run_cli_process("--json", "list", cwd=tmp_path)
    assert json.loads(missing_json.stdout)["error"]["type"] == "PassphraseRequiredError"
    assert tree_state(repo.repo) == before, "a failed unlock changed the repository"


@pytest.mark.skipif(PEAK_BACKUP is None, reason="the peak-backup console script is not installed")
def test_key_passwd_rewraps_only_repo_json(built: dict[str, Built], tmp_path: Path) -> None:
    repo = built["chacha20-poly1305"].copy(tmp_path / "repo")
    work = tmp_path / "work"
    work.mkdir()
    write_cli_config(work, repo.repo)
    new = "n3w passphrase ünïcode"
    before = tree_state(repo.repo)

    refused = run_cli_process(
        "key",
        "passwd",
        cwd=work,
        command=PEAK_BACKUP,
        env={"PEAK_BACKUP_PASSWORD": "wrong", "PEAK_BACKUP_NEW_PASSWORD": new},
    )
    assert refused.returncode == 8, refused.stderr
    assert tree_state(repo.repo) == before

    changed = run_cli_process(
        "--json",
        "key",
        "passwd",
        cwd=work,
        command=PEAK_BACKUP,
        env={"PEAK_BACKUP_PASSWORD": PW, "PEAK_BACKUP_NEW_PASSWORD": new},
    )
    assert changed.returncode == 0, (changed.stdout, changed.stderr)
    assert json.loads(changed.stdout) == {"changed": True}
    after = tree_state(repo.repo)
    differing = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert differing == ["repo.json"], differing
    # Chunks, packs and pack index files: the same bytes and mtimes.
    stored = [k for k in before if k.startswith(CHUNK_HOLDERS)]
    assert any(k.startswith("packs/") for k in stored) == is_packed(repo.repo)
    assert stored and all(after[k] == before[k] for k in stored)

    ok = run_cli_process(
        "--json", "list", cwd=work, command=PEAK_BACKUP, env={"PEAK_BACKUP_PASSWORD": new}
    )
    assert ok.returncode == 0, ok.stderr
    assert [b["backup_id"] for b in json.loads(ok.stdout)] == [repo.backup_id]
    old = run_cli_process("list", cwd=work, command=PEAK_BACKUP, env={"PEAK_BACKUP_PASSWORD": PW})
    assert old.returncode == 8 and "wrong passphrase" in old.stderr
    # In this process too (the key cache must not let the old passphrase in).
    assert repo.manager(passphrase=new).load_backup(repo.backup_id) == rich_state()
    with pytest.raises(WrongPassphraseError):
        repo.manager(passphrase=PW).list_backups()


# -- tamper detection ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """An encrypted repository with two backups; the first has an entry large enough to need
    chunk-list blobs (60,000 trades)."""
    base = tmp_path_factory.mktemp("tamper")
    project = make_project(base / "project")
    repo = base / "repo"
    manager = BackupManager(config_for(repo, project, "chacha20-poly1305"), passphrase=PW)
    first = manager.create_backup(big_state(1), include_files=False)
    manager.create_backup(big_state(2), include_files=False)
    manifest = manager.repository.read_manifest(first)
    assert any(entry.lists for entry in manifest.entries), "no chunk lists: make it bigger"
    return Built(repo, project, config_for(repo, project, "chacha20-poly1305"), first)


def big_state(n: int) -> dict[str, Any]:
    trades = [
        {"id": i, "px": 100 + i * 0.25, "sym": "BTC/USDT", "qty": i % 9 + 1} for i in range(60_000)
    ]
    return {"history": trades, "portfolio": {"n": n, "equity": Decimal("10000.5") + n}}


def outcome(repo: Built, backup_id: str, expected: dict[str, Any]) -> str:
    """'detected' if verify says False and load raises; else what went wrong."""
    try:
        manager = repo.manager()
        verified = RecoveryManager(manager).verify_backup(backup_id)
    except BackupError:
        verified = False
    try:
        data = repo.manager().load_backup(backup_id)
    except (IntegrityError, WrongPassphraseError, FormatVersionError, ConfigError):
        return "detected" if not verified else "verify said True, load raised"
    if data != expected:
        return "WRONG DATA returned"
    return "undetected (verify True)" if verified else "verify False, load returned data"


def mutations(content: bytes) -> Iterator[tuple[str, bytes]]:
    size = len(content)
    for position in sorted({0, 4, 5, 6, 7, 8, 12, 20, size // 2, size - 17, size - 1}):
        if 0 <= position < size:
            changed = bytearray(content)
            changed[position] ^= 0x01
            yield f"flip@{position}", bytes(changed)
    for length in sorted({0, 5, 8, size // 2, size - 1}):
        if length < size:
            yield f"truncate@{length}", content[:length]
    yield "append", content + b"\x00"


def run_cases(
    repo: Built,
    path: Path,
    backup_id: str,
    expected: dict[str, Any],
    cases: Iterator[tuple[str, bytes]],
    results: dict[str, str],
) -> None:
    original = path.read_bytes()
    try:
        for label, content in cases:
            path.write_bytes(content)
            results[f"{path.name[:12]}:{label}"] = outcome(repo, backup_id, expected)
    finally:
        path.write_bytes(original)


def run_blob_cases(
    repo: Built,
    cid: str,
    backup_id: str,
    expected: dict[str, Any],
    cases: Iterator[tuple[str, bytes]],
    results: dict[str, str],
) -> None:
    """Like :func:`run_cases` for the stored blob of chunk ``cid`` (in its pack, by default:
    see tests/layout_helpers.py ``write_stored``); the repository is put back after each."""
    keys = repo.manager().repository.keys
    original = read_stored(repo.repo, cid, keys)
    for label, content in cases:
        with preserved(repo.repo):
            write_stored(repo.repo, cid, content, keys)
            empty = not content and is_packed(repo.repo)  # zeroed: see write_stored
            assert read_stored(repo.repo, cid, keys) == (bytes(len(original)) if empty else content)
            results[f"{cid[:12]}:{label}"] = outcome(repo, backup_id, expected)


def stored_blob(repo: Built, cid: str) -> bytes:
    return read_stored(repo.repo, cid, repo.manager().repository.keys)


def report(kind: str, results: dict[str, str]) -> None:
    missed = {label: what for label, what in results.items() if what != "detected"}
    print(
        f"\ntamper {kind}: {len(results)} corruptions tried, {len(results) - len(missed)} detected"
    )
    assert results and not missed, missed


@pytest.fixture
def tamper_repo(pristine: Built, tmp_path: Path) -> Built:
    repo = pristine.copy(tmp_path / "repo")
    assert outcome(repo, repo.backup_id, big_state(1)) == "undetected (verify True)"  # control
    return repo


def test_tamper_chunks(tamper_repo: Built) -> None:
    repo = tamper_repo
    manager = repo.manager()
    repository = manager.repository
    manifest = repository.read_manifest(repo.backup_id)
    small = next(e for e in manifest.entries if e.name == "portfolio")
    big = next(e for e in manifest.entries if e.name == "history")
    assert is_packed(repo.repo)  # the default format: the blobs are in packs
    targets = [small.chunks[0].id, repository.entry_refs(big)[5].id]
    results: dict[str, str] = {}
    for cid in targets:
        run_blob_cases(
            repo,
            cid,
            repo.backup_id,
            big_state(1),
            mutations(stored_blob(repo, cid)),
            results,
        )
    # Another chunk's bytes under this chunk's name (both directions of a swap).
    for victim, donor in ((targets[0], targets[1]), (targets[1], targets[0])):
        run_blob_cases(
            repo,
            victim,
            repo.backup_id,
            big_state(1),
            iter([(f"bytes-of-{donor[:8]}", stored_blob(repo, donor))]),
            results,
        )
    report("chunks", results)
    assert outcome(repo, repo.backup_id, big_state(1)) == "undetected (verify True)"


def test_tamper_chunk_list_blobs(tamper_repo: Built) -> None:
    repo = tamper_repo
    repository = repo.manager().repository
    manifest = repository.read_manifest(repo.backup_id)
    big = next(e for e in manifest.entries if e.lists)
    assert is_packed(repo.repo)  # the default format: the blobs are in packs
    results: dict[str, str] = {}
    list_id = big.lists[0].id
    run_blob_cases(
        repo,
        list_id,
        repo.backup_id,
        big_state(1),
        mutations(stored_blob(repo, list_id)),
        results,
    )
    other_list = big.lists[-1].id
    data_chunk = repository.entry_refs(big)[0].id
    for donor in {other_list, data_chunk} - {list_id}:
        run_blob_cases(
            repo,
            list_id,
            repo.backup_id,
            big_state(1),
            iter([(f"bytes-of-{donor[:8]}", stored_blob(repo, donor))]),
            results,
        )
    report("chunk lists", results)


def test_tamper_manifests(tamper_repo: Built) -> None:
    repo = tamper_repo
    snapshots = sorted((repo.repo / "snapshots").glob("*.json"))
    assert len(snapshots) == 2
    first = repo.repo / "snapshots" / f"{repo.backup_id}.json"
    second = next(p for p in snapshots if p != first)
    results: dict[str, str] = {}
    run_cases(repo, first, repo.backup_id, big_state(1), mutations(first.read_bytes()), results)
    # Swap the two manifests' contents.
    a, b = first.read_bytes(), second.read_bytes()
    try:
        first.write_bytes(b)
        second.write_bytes(a)
        results["swap:first"] = outcome(repo, repo.backup_id, big_state(1))
        results["swap:second"] = outcome(repo, second.stem, big_state(2))
        damaged = repo.manager().check()
        assert set(damaged.damaged_manifests) == {first.stem, second.stem}
    finally:
        first.write_bytes(a)
        second.write_bytes(b)
    report("manifests", results)


def rewrite_header(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Edit ``repo.json``'s encryption header and fix its checksum (an attacker can: the
    checksum is not keyed) - only the key wrap's authentication can notice."""
    config = decode_checked(path.read_bytes(), RepoConfig, "repo.json")
    header = json.loads(json.dumps(config.encryption))
    result = change(header)
    encryption = header if result is None else result
    if encryption == "remove":
        encryption = None
    path.write_bytes(encode_checked(msgspec.structs.replace(config, encryption=encryption)))


def flip_b64(value: str, position: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[position] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def flip_wrapped_key(position: int) -> Callable[[dict[str, Any]], Any]:
    def edit(header: dict[str, Any]) -> None:
        header["wrapped_key"] = flip_b64(header["wrapped_key"], position)

    return edit


def test_tamper_repo_json(tamper_repo: Built) -> None:
    repo = tamper_repo
    path = repo.repo / "repo.json"
    original = path.read_bytes()
    results: dict[str, str] = {}
    # Raw damage: caught by the checksum.
    run_cases(repo, path, repo.backup_id, big_state(1), mutations(original), results)
    # Edits with a recomputed checksum: caught by the key wrap's authentication.
    edits: dict[str, Callable[[dict[str, Any]], Any]] = {
        **{f"wrapped_key@{pos}": flip_wrapped_key(pos) for pos in (0, 11, 12, 40, 75, 76, 91)},
        "kdf_salt": lambda h: h["kdf"].update(salt=flip_b64(h["kdf"]["salt"], 3)),
        "kdf_n_lower": lambda h: h["kdf"].update(n=h["kdf"]["n"] // 2),
        "kdf_n_huge": lambda h: h["kdf"].update(n=2**30),
        "kdf_r": lambda h: h["kdf"].update(r=4),
        "kdf_p": lambda h: h["kdf"].update(p=2),
        "kdf_name": lambda h: h["kdf"].update(name="argon2id"),
        "aead_swapped": lambda h: h.update(aead="aes-256-gcm"),
        "aead_unknown": lambda h: h.update(aead="rot13"),
        "wrapped_key_short": lambda h: h.update(wrapped_key=h["wrapped_key"][:-4]),
        "extra_field": lambda h: h.update(extra=1),
        "encryption_removed": lambda h: "remove",
    }
    try:
        for label, edit in edits.items():
            path.write_bytes(original)
            rewrite_header(path, edit)
            results[f"header:{label}"] = outcome(repo, repo.backup_id, big_state(1))
            if label == "encryption_removed":  # also when the config does not name it
                unnamed = Built(
                    repo.repo, repo.project, config_for(repo.repo, repo.project), repo.backup_id
                )
                results[f"header:{label}:config-none"] = outcome(
                    unnamed, repo.backup_id, big_state(1)
                )
    finally:
        path.write_bytes(original)
    report("repo.json", results)
    assert outcome(repo, repo.backup_id, big_state(1)) == "undetected (verify True)"


def test_verify_in_a_long_lived_process_sees_damage_done_later(tamper_repo: Built) -> None:
    """Regression: verify_backup and check in a long-lived process (the bot, a scheduler) used
    to answer from the per-process manifest and chunk-list caches, so damage done on disk after
    the first read went unnoticed. Manifests are now cached by object version and verification
    reads chunk lists fresh."""
    repo = tamper_repo
    manager = repo.manager()
    recovery = RecoveryManager(manager)
    assert recovery.verify_backup(repo.backup_id)
    problems = []
    manifest_path = repo.repo / "snapshots" / f"{repo.backup_id}.json"
    original = manifest_path.read_bytes()
    manifest_path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    if recovery.verify_backup(repo.backup_id):
        problems.append("damaged manifest: verify_backup True")
    if manager.check().clean:
        problems.append("damaged manifest: check clean")
    manifest_path.write_bytes(original)
    big = next(e for e in manager.repository.read_manifest(repo.backup_id).entries if e.lists)
    list_id = big.lists[0].id
    assert is_packed(repo.repo)  # the default format: the chunk list is in a pack
    # A byte of the chunk list's blob flipped where it is (inside its pack).
    with preserved(repo.repo):
        damage_chunk(repo.repo, list_id, "flip", manager.repository)
        if recovery.verify_backup(repo.backup_id):
            problems.append("damaged chunk list (a byte flipped): verify_backup True")
    assert recovery.verify_backup(repo.backup_id)  # put back as it was
    # The chunk list's blob cut short by one byte (in a pack: the index says so).
    blob = stored_blob(repo, list_id)
    write_stored(repo.repo, list_id, blob[:-1], manager.repository.keys)
    assert not RecoveryManager(repo.manager()).verify_backup(repo.backup_id)  # a new process
    if recovery.verify_backup(repo.backup_id):
        problems.append("damaged chunk list (cut short): verify_backup True")
    assert problems == []


def test_downgraded_repo_json_does_not_make_new_backups_plaintext(tamper_repo: Built) -> None:
    """Regression (security): repo.json's checksum is unkeyed, so whoever can write the
    repository can drop the encryption header; a manager given a passphrase used to store new
    backups in plaintext then. A passphrase given as a str now requires an encrypted
    repository: the backup is refused with ConfigError and nothing is written in plaintext."""
    repo = tamper_repo
    rewrite_header(repo.repo / "repo.json", lambda h: "remove")
    before = set(all_bytes(repo.repo))
    manager = BackupManager(config_for(repo.repo, repo.project), passphrase=PW)
    with pytest.raises(ConfigError, match="not encrypted"):
        manager.create_backup({"notes": f"new {MARKER_DATA}"}, include_files=False)
    leaked = [p for p, content in all_bytes(repo.repo).items() if MARKER_DATA.encode() in content]
    assert leaked == [], f"written in plaintext: {leaked}"
    assert set(all_bytes(repo.repo)) == before, "a refused backup wrote objects"


# -- secrets ------------------------------------------------------------------------------------


SECRET_FILES = {
    ".env": b"API_KEY=abc123\n",
    "live_runs/exchange.key": b"-----KEY-----\n",
    "live_runs/secrets.toml": b"token = 'x'\n",
}


def secrets_project(root: Path) -> Path:
    make_project(root)
    for name, content in SECRET_FILES.items():
        (root / name).write_bytes(content)
    return root


def test_secrets_only_into_an_encrypted_repository_when_asked(
    built: dict[str, Built], tmp_path: Path
) -> None:
    project = secrets_project(tmp_path / "project")
    sources = ["live_runs/", ".env"]
    repo = built["chacha20-poly1305"].copy(tmp_path / "repo")

    plain_manager = BackupManager(
        config_for(repo.repo, project, "chacha20-poly1305", sources=sources), passphrase=PW
    )
    without = plain_manager.create_backup({"a": 1})
    assert plain_manager.get_backup_info(without).file_paths == [f"live_runs/{FILE_NAME}"]

    secret_manager = BackupManager(
        config_for(repo.repo, project, "chacha20-poly1305", sources=sources, include_secrets=True),
        passphrase=PW,
    )
    with_secrets = secret_manager.create_backup({"a": 2})
    paths = secret_manager.get_backup_info(with_secrets).file_paths
    assert sorted(paths) == sorted([*SECRET_FILES, f"live_runs/{FILE_NAME}"])
    out = tmp_path / "out"
    RecoveryManager(repo.manager()).restore_to_directory(with_secrets, out, verify=True)
    for name, content in SECRET_FILES.items():
        assert (out / name).read_bytes() == content
    for content in all_bytes(repo.repo).values():
        assert b"abc123" not in content

    unencrypted = tmp_path / "unencrypted"
    refused = BackupManager(config_for(unencrypted, project, sources=sources, include_secrets=True))
    with pytest.raises(ConfigError, match="include_secrets"):
        refused.create_backup({"a": 3})
    assert not list((unencrypted / "snapshots").glob("*.json"))
    # Without include_secrets an unencrypted repository never gets them.
    allowed = BackupManager(config_for(unencrypted, project, sources=sources))
    backup_id = allowed.create_backup({"a": 4})
    assert allowed.get_backup_info(backup_id).file_paths == [f"live_runs/{FILE_NAME}"]
    for content in all_bytes(unencrypted).values():
        assert b"abc123" not in content and b"-----KEY-----" not in content


def test_encryption_configured_for_an_unencrypted_repository_is_a_config_error(
    built: dict[str, Built], tmp_path: Path
) -> None:
    plain = built["plain"].copy(tmp_path / "repo")
    write_cli_config(tmp_path, plain.repo, 'encryption = "chacha20-poly1305"')
    before = tree_state(plain.repo)
    config = load_backup_config(tmp_path / "config.toml")
    assert config.encryption == "chacha20-poly1305"
    with pytest.raises(ConfigError, match="not encrypted"):
        BackupManager(config, passphrase=PW).create_backup({"x": 1})
    with pytest.raises(ConfigError):
        BackupManager(config, passphrase=PW).list_backups()
    result = run_cli_inline("list", cwd=tmp_path, env={"PEAK_BACKUP_PASSWORD": PW})
    assert result.returncode == 6, (result.stdout, result.stderr)
    assert "not encrypted" in result.stderr and "Traceback" not in result.stderr
    assert tree_state(plain.repo) == before


# -- the CLI flow -------------------------------------------------------------------------------


def test_cli_init_create_list_restore_with_env_and_password_file(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    write_cli_config(project, Path("./bk"), 'sources = ["live_runs/"]')
    env = {"PEAK_BACKUP_PASSWORD": PW}

    init = run_cli_inline("--json", "init", "--encryption", cwd=project, env=env)
    assert init.returncode == 0, (init.stdout, init.stderr)
    assert json.loads(init.stdout)["encrypted"] is True
    header = json.loads((project / "bk" / "repo.json").read_text())["encryption"]
    assert header["aead"] == "aes-256-gcm"  # the default AEAD
    again = run_cli_inline("init", "--encryption", cwd=project, env=env)
    assert again.returncode == 1 and "already exists" in again.stderr

    created = run_cli_inline("--json", "create", "--tag", "via=env", cwd=project, env=env)
    assert created.returncode == 0, created.stderr
    first = json.loads(created.stdout)["backup_id"]
    listed = run_cli_inline("--json", "list", cwd=project, env=env)
    assert [b["backup_id"] for b in json.loads(listed.stdout)] == [first]
    restored = run_cli_inline(
        "--json", "restore", "--verify", "--target", "out1", cwd=project, env=env
    )
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["verified"] is True
    original = (project / "live_runs" / FILE_NAME).read_bytes()
    assert (project / "out1" / "live_runs" / FILE_NAME).read_bytes() == original

    password_file = tmp_path / "pw.txt"
    password_file.write_text(PW + "\n")
    os.chmod(password_file, 0o600)
    pf = ("--password-file", str(password_file))
    (project / "live_runs" / "new.json").write_text('{"run": 43}\n')
    second_run = run_cli_inline(*pf, "--json", "create", cwd=project)
    assert second_run.returncode == 0, second_run.stderr
    second = json.loads(second_run.stdout)["backup_id"]
    listed = run_cli_inline(*pf, "--json", "list", cwd=project)
    assert sorted(b["backup_id"] for b in json.loads(listed.stdout)) == sorted([first, second])
    restored = run_cli_inline(*pf, "restore", second, "--verify", "--target", "out2", cwd=project)
    assert restored.returncode == 0, restored.stderr
    assert "verified" in restored.stdout
    assert (project / "out2" / "live_runs" / "new.json").read_text() == '{"run": 43}\n'
    assert "WARNING" not in restored.stderr  # 0600 file: no permission warning
    # $PEAK_BACKUP_PASSWORD_FILE works too; a file with the wrong passphrase is exit 8.
    by_env = run_cli_inline(
        "--json", "list", cwd=project, env={"PEAK_BACKUP_PASSWORD_FILE": str(password_file)}
    )
    assert by_env.returncode == 0, by_env.stderr
    bad_file = tmp_path / "bad.txt"
    bad_file.write_text("nope\n")
    os.chmod(bad_file, 0o600)
    bad = run_cli_inline("--password-file", str(bad_file), "list", cwd=project)
    assert bad.returncode == 8 and "wrong passphrase" in bad.stderr
    for content in all_bytes(project / "bk").values():
        assert MARKER_FILE.encode() not in content

    # The other AEAD, chosen by name.
    other = tmp_path / "other"
    other.mkdir()
    write_cli_config(other, Path("./bk"))
    aes = run_cli_inline(*pf, "init", "--encryption", "aes-256-gcm", cwd=other)
    assert aes.returncode == 0, aes.stderr
    assert json.loads((other / "bk" / "repo.json").read_text())["encryption"]["aead"] == (
        "aes-256-gcm"
    )
