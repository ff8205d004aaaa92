"""Core services shared by the trading system: configuration loading."""

from src.core.config import Config, ConfigSection, find_config_file, load_config
from src.core.errors import ConfigError

__all__ = ["Config", "ConfigError", "ConfigSection", "find_config_file", "load_config"]
