"""Errors that name the file, field or line at fault."""

from __future__ import annotations


class FedrecError(Exception):
    """Base class of every error fedrec raises on purpose."""


class ConfigError(FedrecError, ValueError):
    """A config file or override is malformed: names the key and the file."""


class DataError(FedrecError, ValueError):
    """A data file is missing or malformed: names the file, column and line."""


class CheckpointError(FedrecError, RuntimeError):
    """A checkpoint or run directory cannot be read back."""
