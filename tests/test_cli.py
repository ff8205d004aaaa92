"""The command line, run in this process (``run_cli_inline``) in a throw-away project
directory; the entry points themselves (``python -m``, the console script, the seed's
``python src/infra/backup/__main__.py``) run as child processes."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from seed_config import SEED_BACKUP_TABLE

from tests.factories import write_file, write_tree
from tests.helpers import MAIN_SCRIPT, PROJECT_ROOT, run_cli_inline, run_cli_process

VENV_BIN = Path(sys.executable).parent

ID_RE = re.compile(r"\b([a-z0-9_-]+_\d{8}_\d{6}(?:_\d+)?)\b")

CONFIG = SEED_BACKUP_TABLE + 'sources = ["config.toml", "live_runs/"]\n'

# name -> (content, mode, mtime_ns)
FILES = {
    "live_runs/run_001.json": (
        b'{"run": 1, "equity": 10000.5}\n',
        0o640,
        1_700_000_000_123_456_789,
    ),
    "live_runs/run_002.json": (
        b'{"run": 2, "equity": 10100.25}\n',
        0o600,
        1_700_000_100_987_654_321,
    ),
    "live_runs/sub/trades.jsonl": (
        b"".join(b'{"i": %d}\n' % i for i in range(5000)),
        0o644,
        1_650_000_000_000_000_001,
    ),
    "live_runs/empty.json": (b"", 0o444, 1_600_000_000_000_000_000),
}
SECRETS = {
    ".env": b"API_KEY=root-secret\n",
    "live_runs/.env": b"API_KEY=secret\n",
    "live_runs/exchange.key": b"-----KEY-----\n",
    "live_runs/secrets.toml": b"k = 1\n",
}
CONFIG_MTIME = 1_690_000_000_555_555_555


def make_project(root: Path, config: str = CONFIG) -> Path:
    """A bot directory: ``config`` as config.toml, ``SECRETS`` (never backed up), ``FILES``."""
    write_file(root / "config.toml", config.encode(), 0o644, CONFIG_MTIME)
    for name, content in SECRETS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return write_tree(root, FILES)


def ok(result: object) -> None:
    """Assert a CompletedProcess succeeded, showing its output otherwise."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)  # type: ignore[attr-defined]


def created_id(stdout: str) -> str:
    match = ID_RE.search(stdout)
    assert match, stdout
    return match.group(1)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A project with two backups (manual, then pre_trade with a tag and a note): read-only."""
    root = make_project(tmp_path_factory.mktemp("cli") / "proj")
    first = run_cli_inline("create", cwd=root)
    ok(first)
    assert "Backup created" in first.stdout
    first_id = created_id(first.stdout)
    second = run_cli_inline(
        "create", "--type", "pre_trade", "--tag", "a=b", "--note", "x", "--json", cwd=root
    )
    ok(second)
    info = json.loads(second.stdout)
    return {"root": root, "first": first_id, "second": info["backup_id"], "second_info": info}


@pytest.fixture
def cli_project_with_two_backups(tmp_path: Path) -> tuple[Path, list[str]]:
    """A fresh project with two manual backups, for tests that change the repository."""
    root = make_project(tmp_path / "proj")
    ids = []
    for _ in range(2):
        result = run_cli_inline("create", "--json", cwd=root)
        ok(result)
        ids.append(json.loads(result.stdout)["backup_id"])
    return root, ids


# -- create / list / show ----------------------------------------------------------------------


def test_create_ids_and_metadata(shared: dict[str, object]) -> None:
    first, second = str(shared["first"]), str(shared["second"])
    assert re.fullmatch(r"manual_\d{8}_\d{6}(_\d+)?", first)
    assert re.fullmatch(r"pre_trade_\d{8}_\d{6}(_\d+)?", second)
    info = shared["second_info"]
    assert isinstance(info, dict)
    assert info["backup_type"] == "pre_trade"
    assert info["tags"] == {"a": "b"}
    assert info["note"] == "x"
    root = Path(str(shared["root"]))
    assert (root / "backups" / "snapshots" / f"{first}.json").is_file()


def test_list_plain_and_json(shared: dict[str, object]) -> None:
    root = Path(str(shared["root"]))
    result = run_cli_inline("list", cwd=root)
    ok(result)
    assert str(shared["first"]) in result.stdout
    assert str(shared["second"]) in result.stdout
    result = run_cli_inline("list", "--json", cwd=root)
    ok(result)
    listed = json.loads(result.stdout)
    assert [b["backup_id"] for b in listed] == [shared["second"], shared["first"]]
    assert listed[0]["timestamp_utc"] >= listed[1]["timestamp_utc"]
    for item in listed:
        assert item["compressed"] is True
        assert "config.toml" in item["files"]
        assert item["size_bytes"] > 0
    # --json also accepted before the command
    result = run_cli_inline("--json", "list", cwd=root)
    ok(result)
    assert json.loads(result.stdout) == listed
    result = run_cli_inline("list", "--type", "pre_trade", "--json", cwd=root)
    ok(result)
    assert [b["backup_id"] for b in json.loads(result.stdout)] == [shared["second"]]


def test_list_shows_full_ids_at_80_columns(shared: dict[str, object]) -> None:
    """A user at a default-width terminal (or piping to a file) must be able to copy the id."""
    root = Path(str(shared["root"]))
    result = run_cli_inline("list", cwd=root, env={"COLUMNS": "80"})
    ok(result)
    assert str(shared["first"]) in result.stdout, result.stdout
    assert str(shared["second"]) in result.stdout, result.stdout


def test_show_plain_and_json(shared: dict[str, object]) -> None:
    root = Path(str(shared["root"]))
    first = str(shared["first"])
    result = run_cli_inline("show", first, cwd=root)
    ok(result)
    assert first in result.stdout
    assert "live_runs/run_001.json" in result.stdout
    result = run_cli_inline("show", first, "--json", cwd=root)
    ok(result)
    shown = json.loads(result.stdout)
    assert shown["backup_id"] == first
    names = {e["name"]: e for e in shown["entries"] if e["kind"] != "dir"}
    assert set(names) == {"config.toml", *FILES}
    dirs = {e["name"] for e in shown["entries"] if e["kind"] == "dir"}
    assert dirs == {"live_runs", "live_runs/sub"}  # directories keep their mode and mtime
    assert names["live_runs/run_001.json"]["mode"] == oct(0o640)
    trades = "live_runs/sub/trades.jsonl"
    assert names[trades]["size"] == len(FILES[trades][0])


# -- restore -----------------------------------------------------------------------------------


def assert_restored(target: Path) -> None:
    expected = {"config.toml": (CONFIG.encode(), 0o644, CONFIG_MTIME)}
    expected.update(FILES)
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert found == sorted([*expected, "RESTORED_FROM"]), found  # + the restore's stamp
    for name, (content, mode, mtime_ns) in expected.items():
        st = (target / name).stat()
        assert (target / name).read_bytes() == content, name
        assert stat.S_IMODE(st.st_mode) == mode, (name, oct(st.st_mode))
        assert st.st_mtime_ns == mtime_ns, name
    for secret in SECRETS:
        assert not (target / secret).exists(), secret


def test_restore_newest_into_default_dir(tmp_path: Path) -> None:
    root = make_project(tmp_path / "copy")  # same sources, own repository
    ok(run_cli_inline("create", cwd=root))
    second = run_cli_inline("create", "--json", cwd=root)
    ok(second)
    newest = json.loads(second.stdout)["backup_id"]
    result = run_cli_inline("restore", cwd=root)
    ok(result)
    assert newest in result.stdout
    assert_restored(root / "restore" / newest)
    assert sorted(p.name for p in (root / "restore").iterdir()) == [newest]


def test_restore_by_id_with_target(shared: dict[str, object], tmp_path: Path) -> None:
    root = Path(str(shared["root"]))
    target = tmp_path / "elsewhere" / "out"
    result = run_cli_inline(
        "restore", str(shared["first"]), "--target", str(target), "--json", cwd=root
    )
    ok(result)
    payload = json.loads(result.stdout)
    assert payload["backup_id"] == shared["first"]
    assert Path(payload["target"]) == target
    assert_restored(target)
    assert not (root / "restore").exists() or str(shared["first"]) not in os.listdir(
        root / "restore"
    )


# -- verify ------------------------------------------------------------------------------------


def test_verify(shared: dict[str, object]) -> None:
    root = Path(str(shared["root"]))
    result = run_cli_inline("verify", cwd=root)
    ok(result)
    assert str(shared["second"]) in result.stdout
    result = run_cli_inline("verify", "--all", "--json", cwd=root)
    ok(result)
    reports = json.loads(result.stdout)
    assert {r["backup_id"] for r in reports} == {shared["first"], shared["second"]}
    assert all(r["ok"] and r["chunks"] > 0 for r in reports)
    result = run_cli_inline("verify", str(shared["first"]), cwd=root)
    ok(result)


def damage_manifest(root: Path, backup_id: str) -> None:
    """Flip one byte of a backup's manifest."""
    snapshot = root / "backups" / "snapshots" / f"{backup_id}.json"
    raw = bytearray(snapshot.read_bytes())
    raw[10] ^= 1
    os.chmod(snapshot, 0o600)
    snapshot.write_bytes(bytes(raw))


def test_verify_damaged_exit_4(cli_project_with_two_backups: tuple[Path, list[str]]) -> None:
    root, (first, second) = cli_project_with_two_backups
    damage_manifest(root, second)
    result = run_cli_inline("verify", "--all", "--json", cwd=root)
    assert result.returncode == 4, (result.stdout, result.stderr)
    reports = {r["backup_id"]: r for r in json.loads(result.stdout)}
    assert reports[first]["ok"] is True
    assert reports[second]["ok"] is False and reports[second]["problems"]
    assert "Traceback" not in result.stderr
    # restore without an id falls back to the intact one
    result = run_cli_inline("restore", cwd=root)
    ok(result)
    assert (root / "restore" / first / "config.toml").is_file()


# -- delete ------------------------------------------------------------------------------------


def listed_ids(root: Path) -> list[str]:
    result = run_cli_inline("list", "--json", cwd=root)
    ok(result)
    return [b["backup_id"] for b in json.loads(result.stdout)]


@pytest.mark.parametrize("answer", ["n\n", "", "\n", "maybe\n"])
def test_delete_without_confirmation_deletes_nothing(
    cli_project_with_two_backups: tuple[Path, list[str]], answer: str
) -> None:
    root, (first, second) = cli_project_with_two_backups
    result = run_cli_inline("delete", first, cwd=root, input=answer)
    assert result.returncode == 7, (result.stdout, result.stderr)
    assert "--yes" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(listed_ids(root)) == sorted([first, second])


def test_delete_with_y_and_with_yes(cli_project_with_two_backups: tuple[Path, list[str]]) -> None:
    root, (first, second) = cli_project_with_two_backups
    result = run_cli_inline("delete", first, cwd=root, input="y\n")
    ok(result)
    assert listed_ids(root) == [second]
    # the last good backup: refused even with --yes, unless --force
    result = run_cli_inline("delete", second, "--yes", cwd=root)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "last good" in result.stderr and "--force" in result.stderr
    assert listed_ids(root) == [second]
    ok(run_cli_inline("create", cwd=root))
    result = run_cli_inline("delete", second, "--yes", cwd=root)
    ok(result)
    assert second not in listed_ids(root)


def test_delete_json_cancel(cli_project_with_two_backups: tuple[Path, list[str]]) -> None:
    root, (first, _second) = cli_project_with_two_backups
    result = run_cli_inline("delete", first, "--json", cwd=root, input="")
    assert result.returncode == 7
    assert json.loads(result.stdout) == {"deleted": False, "backup_id": first}


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["show", "manual_20000101_000000"],
        ["restore", "manual_20000101_000000"],
        ["delete", "manual_20000101_000000", "--yes"],
        ["verify", "manual_20000101_000000"],
        ["show", "../x"],
        ["restore", "../../etc/passwd"],
    ],
)
def test_unknown_id_exit_3(shared: dict[str, object], args: list[str]) -> None:
    root = Path(str(shared["root"]))
    result = run_cli_inline(*args, cwd=root)
    if args[0] == "verify":
        # verify reports a missing backup as not ok; either form is acceptable as long as clear
        assert result.returncode in (3, 4), (result.stdout, result.stderr)
    else:
        assert result.returncode == 3, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert args[1] in output
    assert "not found" in output.lower()
    assert "Traceback" not in result.stderr


def test_verify_unknown_id_exit_3(shared: dict[str, object]) -> None:
    """Exit code 3 means 'not found' (documented); verify of an id that does not exist is that,
    not an integrity failure of an existing backup."""
    root = Path(str(shared["root"]))
    result = run_cli_inline("verify", "manual_20000101_000000", cwd=root)
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)


def test_json_errors_are_json(shared: dict[str, object]) -> None:
    root = Path(str(shared["root"]))
    result = run_cli_inline("show", "manual_20000101_000000", "--json", cwd=root)
    assert result.returncode == 3
    payload = json.loads(result.stdout)
    assert payload["error"]["type"] == "BackupNotFoundError"
    assert "manual_20000101_000000" in payload["error"]["message"]
    assert payload["error"]["exit_code"] == 3
    assert "Traceback" not in result.stderr


def test_config_with_unknown_key_exit_6(tmp_path: Path) -> None:
    root = make_project(tmp_path / "bad", CONFIG + "retention_dayz = 3\n")
    for args in (["list"], ["create"]):
        result = run_cli_inline(*args, cwd=root)
        assert result.returncode == 6, (result.stdout, result.stderr)
        assert "retention_dayz" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (root / "backups").exists()
    result = run_cli_inline("list", "--json", cwd=root)
    assert result.returncode == 6
    assert json.loads(result.stdout)["error"]["type"] == "ConfigError"


def test_invalid_toml_exit_6(tmp_path: Path) -> None:
    root = make_project(tmp_path / "bad", "[backup\n")
    result = run_cli_inline("list", cwd=root)
    assert result.returncode == 6, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr


def test_create_without_sources_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "nosources"
    root.mkdir()
    (root / "config.toml").write_text('[backup]\nbackup_path = "./backups"\n')
    result = run_cli_inline("create", cwd=root)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "sources" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_type_and_tag_exit_2(shared: dict[str, object]) -> None:
    root = Path(str(shared["root"]))
    before = listed_ids(root)
    for args in (["create", "--type", "Pre Trade"], ["create", "--tag", "novalue"]):
        result = run_cli_inline(*args, cwd=root)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
    assert listed_ids(root) == before


def test_newer_repository_format_exit_4(
    cli_project_with_two_backups: tuple[Path, list[str]],
) -> None:
    import msgspec

    from src.infra.backup.format.manifest import RepoConfig, decode_checked, encode_checked

    root, _ids = cli_project_with_two_backups
    path = root / "backups" / "repo.json"
    document = decode_checked(path.read_bytes(), RepoConfig, "repo.json")
    os.chmod(path, 0o600)
    path.write_bytes(encode_checked(msgspec.structs.replace(document, format=99)))
    result = run_cli_inline("list", cwd=root)
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "99" in result.stderr and "upgrade" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_config_option(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = run_cli_inline(
        "--config", str(root / "config.toml"), "create", "--json", cwd=elsewhere
    )
    ok(result)
    backup_id = json.loads(result.stdout)["backup_id"]
    assert (root / "backups" / "snapshots" / f"{backup_id}.json").is_file()
    result = run_cli_inline(
        "list", "--json", cwd=elsewhere, env={"PEAK_TRADE_CONFIG_PATH": str(root / "config.toml")}
    )
    ok(result)
    assert [b["backup_id"] for b in json.loads(result.stdout)] == [backup_id]


# -- entry points ------------------------------------------------------------------------------


def test_python_dash_m_and_console_script(shared: dict[str, object]) -> None:
    root = Path(str(shared["root"]))
    expected = [shared["second"], shared["first"]]
    for command in (
        [sys.executable, "-m", "src.infra.backup"],
        [str(PROJECT_ROOT / ".venv" / "bin" / "peak-backup")],
    ):
        result = run_cli_process("list", "--json", cwd=root, command=command)
        ok(result)
        assert [b["backup_id"] for b in json.loads(result.stdout)] == expected
        result = run_cli_process("--help", cwd=root, command=command)
        ok(result)
        for name in ("create", "list", "restore", "delete", "verify", "show"):
            assert name in result.stdout


def test_seed_command_forms(tmp_path: Path) -> None:
    """The seed's commands, exactly as written (``python src/infra/backup/__main__.py ...``
    with the project's venv active), from the project directory."""
    root = make_project(tmp_path / "seed")
    path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

    def run(*args: str, input: str | None = None) -> Any:
        return run_cli_process(
            *args, cwd=root, input=input, env={"PATH": path}, command=["python", str(MAIN_SCRIPT)]
        )

    result = run("create")
    ok(result)
    first = created_id(result.stdout)
    result = run("create")
    ok(result)
    second = created_id(result.stdout)
    result = run("list")
    ok(result)
    assert first in result.stdout and second in result.stdout
    ok(run("restore"))
    assert_restored(root / "restore" / second)
    ok(run("restore", first))
    assert_restored(root / "restore" / first)
    result = run("delete", first, input="y\n")
    ok(result)
    assert listed_ids(root) == [second]


def test_empty_repository(tmp_path: Path) -> None:
    root = make_project(tmp_path / "empty")
    result = run_cli_inline("list", cwd=root)
    ok(result)
    assert "No backups" in result.stdout
    for args in (["restore"], ["verify"]):
        result = run_cli_inline(*args, cwd=root)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "no backup" in result.stderr.lower()
        assert "Traceback" not in result.stderr
    result = run_cli_inline("list", "--json", cwd=root)
    ok(result)
    assert json.loads(result.stdout) == []


def test_include_secrets_without_encryption_does_not_store_secrets(tmp_path: Path) -> None:
    """DESIGN.md: secrets files are excluded "unless the repository is encrypted and the user
    opts in". Opting in on an unencrypted repository must not put .env into it in clear text
    (a clear configuration error would also do)."""
    root = make_project(tmp_path / "secrets", CONFIG + "include_secrets = true\n")
    result = run_cli_inline("create", "--json", cwd=root)
    if result.returncode == 6:
        assert "include_secrets" in result.stdout + result.stderr
        return
    ok(result)
    files = json.loads(result.stdout)["files"]
    assert not [
        name
        for name in files
        if name.rsplit("/", 1)[-1] in (".env", "exchange.key", "secrets.toml")
    ], files


def test_delete_damaged_backup(cli_project_with_two_backups: tuple[Path, list[str]]) -> None:
    """A backup whose manifest is damaged (skipped by list, DAMAGED in verify) can be deleted
    from the command line."""
    root, (first, second) = cli_project_with_two_backups
    damage_manifest(root, second)
    result = run_cli_inline("delete", second, "--yes", cwd=root)
    ok(result)
    assert not (root / "backups" / "snapshots" / f"{second}.json").exists()
    assert listed_ids(root) == [first]


def test_a_long_listing_is_a_plain_table(
    cli_project_with_two_backups: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past RICH_TABLE_MAX_ROWS rows, ``list`` prints aligned plain text (a rich table of
    100,000 rows took 37 s): the same columns, newest first, and a count."""
    from src.infra.backup.cli import cmd_list

    root, ids = cli_project_with_two_backups
    monkeypatch.setattr(cmd_list, "RICH_TABLE_MAX_ROWS", 1)
    result = run_cli_inline("list", cwd=root)
    ok(result)
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["ID", "Type", "Time", "(local)", "Size", "New", "Entries"]
    assert [line.split()[0] for line in lines[3:5]] == ids[::-1]
    assert set(lines[2]) == set(lines[5]) == {"-", " "} and lines[6] == "2 backups"
    assert len(lines[3]) == len(lines[4]) == len(lines[1])  # "Entries" is right-aligned
