"""``load_config()`` and ``BackupConfig``: lookup order, attribute access, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from seed_config import SEED_BACKUP_TABLE
from stored_chunks import read_stored, stored_chunk_ids

from src.core import ConfigError as CoreConfigError
from src.core import load_config
from src.infra.backup import (
    BackupConfig,
    BackupManager,
    ConfigError,
    RecoveryManager,
    load_backup_config,
)

SEED_TABLE = SEED_BACKUP_TABLE


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- load_config -----------------------------------------------------------------------------


def test_seed_config_snippet_runs_as_written(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", SEED_TABLE)
    cfg = load_config()
    assert hasattr(cfg, "backup")
    backup_config = BackupConfig(
        backup_path=cfg.backup.backup_path,
        compress=cfg.backup.compress,
        retention_days=cfg.backup.retention_days,
    )
    manager = BackupManager(backup_config)
    backup_id = manager.create_backup({"config": {"strategy": "ma_crossover"}})
    assert (tmp_path / "backups" / "snapshots" / f"{backup_id}.json").is_file()
    assert cfg.backup.enabled is True
    assert cfg.backup.interval_hours == 24
    assert cfg.backup["retention_days"] == 30


def test_attribute_access_nested_tables_and_missing_keys(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", SEED_TABLE + '\n[backup.s3]\nbucket = "b"\n[risk]\nmax = 2\n')
    cfg = load_config()
    assert cfg.backup.backup_path == "./backups"
    assert cfg.backup.s3.bucket == "b"
    assert cfg.risk.max == 2
    assert hasattr(cfg, "risk")
    assert not hasattr(cfg, "nope")
    assert not hasattr(cfg.backup, "nope")
    with pytest.raises(AttributeError, match="nope"):
        _ = cfg.backup.nope
    assert cfg.source_path == (tmp_path / "config.toml").absolute()


def test_hasattr_backup_false_without_table_or_file(tmp_path: Path) -> None:
    cfg = load_config()  # no file anywhere
    assert not hasattr(cfg, "backup")
    assert cfg.source_path is None
    write(tmp_path / "config.toml", "[risk]\nmax = 1\n")
    cfg = load_config()
    assert not hasattr(cfg, "backup")
    assert hasattr(cfg, "risk")


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nested = write(tmp_path / "config" / "config.toml", "[which]\nname = 'nested'\n")
    assert load_config().which.name == "nested"
    assert load_config().source_path == nested.absolute()

    write(tmp_path / "config.toml", "[which]\nname = 'cwd'\n")
    assert load_config().which.name == "cwd"

    env_file = write(tmp_path / "elsewhere" / "env.toml", "[which]\nname = 'env'\n")
    monkeypatch.setenv("PEAK_TRADE_CONFIG_PATH", str(env_file))
    assert load_config().which.name == "env"

    arg_file = write(tmp_path / "elsewhere" / "arg.toml", "[which]\nname = 'arg'\n")
    assert load_config(arg_file).which.name == "arg"
    assert load_config(str(arg_file)).which.name == "arg"


def test_empty_env_var_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "config.toml", "[which]\nname = 'cwd'\n")
    monkeypatch.setenv("PEAK_TRADE_CONFIG_PATH", "")
    assert load_config().which.name == "cwd"


def test_missing_explicit_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "config.toml", "[which]\nname = 'cwd'\n")
    with pytest.raises(CoreConfigError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")
    monkeypatch.setenv("PEAK_TRADE_CONFIG_PATH", str(tmp_path / "gone.toml"))
    with pytest.raises(CoreConfigError, match=r"gone\.toml"):
        load_config()
    # The backup layer turns it into its own ConfigError (still a core ConfigError).
    with pytest.raises(ConfigError):
        load_backup_config()


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", "[backup\nretention_days = = 3\n")
    with pytest.raises(CoreConfigError, match="invalid TOML"):
        load_config()
    with pytest.raises(ConfigError):
        load_backup_config()
    with pytest.raises(ConfigError):
        BackupManager()


# -- BackupConfig ------------------------------------------------------------------------------


def test_backup_config_defaults_are_the_seeds() -> None:
    config = BackupConfig()
    assert config.backup_path == "./backups"
    assert config.compress is True
    assert config.retention_days == 30
    assert config.enabled is True
    assert config.interval_hours == 24


@pytest.mark.parametrize(
    ("line", "key", "value_text", "expected"),
    [
        ('retention_days = "30"', "retention_days", "'30'", "int"),
        ("compress = 1", "compress", "1", "bool"),
        ("backup_path = 5", "backup_path", "5", "str"),
        ('sources = "config.toml"', "sources", "config.toml", "array"),
        ('compression = "lz4"', "compression", "lz4", "zstd"),
        ("compression_level = 99", "compression_level", "99", "1..22"),
        ("interval_hours = -1", "interval_hours", "-1", "positive"),
    ],
)
def test_mistyped_keys_name_key_value_and_expectation(
    tmp_path: Path, line: str, key: str, value_text: str, expected: str
) -> None:
    write(tmp_path / "config.toml", f"[backup]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_backup_config()
    message = str(info.value)
    assert key in message
    assert value_text in message
    assert expected.lower() in message.lower()
    assert info.value.exit_code == 6


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", "[backup]\nretention_dayz = 3\n")
    with pytest.raises(ConfigError) as info:
        load_backup_config()
    assert "retention_dayz" in str(info.value)
    assert "retention_days" in str(info.value)  # the suggestion
    with pytest.raises(ConfigError, match="bogus"):
        BackupConfig.from_table({"bogus": 1})


def test_backup_config_constructor_validates() -> None:
    with pytest.raises(ConfigError, match="retention_days"):
        BackupConfig(retention_days="30")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="compress"):
        BackupConfig(compress="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backup_path"):
        BackupConfig(backup_path="   ")
    # ConfigError is both the backup layer's and the core's.
    assert issubclass(ConfigError, CoreConfigError)


def test_backup_table_not_a_table(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", 'backup = "yes"\n')
    with pytest.raises(ConfigError, match="backup"):
        load_backup_config()


# -- BackupManager() without arguments ---------------------------------------------------------


def test_manager_without_args_uses_config_toml(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", '[backup]\nbackup_path = "./configured"\nretention_days = 0\n')
    manager = BackupManager()
    assert manager.config.retention_days == 0
    backup_id = manager.create_backup({"portfolio": {"equity": 10000}})
    assert (tmp_path / "configured" / "snapshots" / f"{backup_id}.json").is_file()
    assert not (tmp_path / "backups").exists()
    # The seed's RecoveryManager() agrees on the repository.
    assert RecoveryManager().restore_latest_backup() == {"portfolio": {"equity": 10000}}


def test_relative_backup_path_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = write(tmp_path / "project" / "config.toml", '[backup]\nbackup_path = "bk"\n')
    monkeypatch.setenv("PEAK_TRADE_CONFIG_PATH", str(config_file))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manager = BackupManager()
    backup_id = manager.create_backup({"x": 1})
    assert (tmp_path / "project" / "bk" / "snapshots" / f"{backup_id}.json").is_file()
    assert not (elsewhere / "bk").exists()


def test_manager_without_config_uses_defaults(tmp_path: Path) -> None:
    manager = BackupManager()
    assert manager.config == BackupConfig()
    backup_id = manager.create_backup({"x": 1})
    assert (tmp_path / "backups" / "snapshots" / f"{backup_id}.json").is_file()


def test_config_without_backup_table_uses_defaults(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", "[risk]\nmax = 2\n")
    manager = BackupManager()
    assert manager.config.backup_path == "./backups"
    assert manager.config.retention_days == 30


# -- compression -------------------------------------------------------------------------------


def chunk_codecs(repo: Path) -> list[int]:
    """The codec byte of every stored blob (see blobs.py: offset 5), loose or packed."""
    blobs = [read_stored(repo, cid) for cid in sorted(stored_chunk_ids(repo))]
    assert blobs
    return [blob[5] for blob in blobs]


COMPRESSIBLE = {
    "history": {"trades": [{"symbol": "BTC/USD", "side": "buy", "n": i} for i in range(3000)]}
}


def test_compress_false_stores_chunks_uncompressed(tmp_path: Path) -> None:
    repo = tmp_path / "plain"
    manager = BackupManager(BackupConfig(backup_path=repo, compress=False, retention_days=0))
    backup_id = manager.create_backup(COMPRESSIBLE)
    (info,) = manager.list_backups()
    assert info.backup_id == backup_id
    assert info.compressed is False
    assert set(chunk_codecs(repo)) == {0}
    assert info.size_bytes >= info.logical_bytes  # stored as is (plus headers)
    assert manager.load_backup(backup_id) == COMPRESSIBLE


def test_compress_true_compresses(tmp_path: Path) -> None:
    repo = tmp_path / "packed"
    manager = BackupManager(BackupConfig(backup_path=repo, compress=True, retention_days=0))
    backup_id = manager.create_backup(COMPRESSIBLE)
    (info,) = manager.list_backups()
    assert info.compressed is True
    assert 1 in chunk_codecs(repo)  # zstd
    assert info.size_bytes < info.logical_bytes
    assert manager.load_backup(backup_id) == COMPRESSIBLE


def test_gzip_compression_from_config(tmp_path: Path) -> None:
    write(
        tmp_path / "config.toml",
        '[backup]\nbackup_path = "./g"\ncompression = "gzip"\nretention_days = 0\n',
    )
    manager = BackupManager()
    backup_id = manager.create_backup(COMPRESSIBLE)
    assert 2 in chunk_codecs(tmp_path / "g")
    assert manager.load_backup(backup_id) == COMPRESSIBLE
