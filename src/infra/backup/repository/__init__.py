"""Snapshots over a store: open, read, write, lock, check, prune and replicate.

Knows nothing of the user's files, retention policy, configuration or the CLI.
"""
