"""The seed's ``[backup]`` table of ``config.toml``, verbatim, shared by the tests."""

SEED_BACKUP_TABLE = """
[backup]
enabled = true
interval_hours = 24
retention_days = 30
backup_path = "./backups"
compress = true
"""
