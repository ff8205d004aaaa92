"""Pure decisions over lists of backups: retention, point-in-time selection, replica wants.

No I/O; knows nothing of stores or files.
"""
