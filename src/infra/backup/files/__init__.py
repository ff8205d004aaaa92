"""The file-system side: collecting sources, archiving them into a snapshot, restoring them.

Knows nothing of configuration files, retention, scheduling or the CLI.
"""
