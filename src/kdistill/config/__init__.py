"""Typed run configuration: schema (unknown keys rejected), YAML loader, builders."""

from kdistill.config.loader import ConfigError, load_config

__all__ = ["ConfigError", "load_config"]
