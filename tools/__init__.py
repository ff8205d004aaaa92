"""Developer tools for the backup subsystem (not part of the installed package)."""
