"""Errors of the core layer."""


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""
