"""The seed's API and its services: configuration, BackupManager, RecoveryManager, off-site
copies, export/import, rollback, scheduling.

Knows nothing of the CLI or of status reporting.
"""
