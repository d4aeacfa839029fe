"""Local-only training: each client trains its own model, nothing leaves it.

Every parameter is private; the server holds nothing and aggregates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.fl.partition import PRIVATE
from fedrec.fl.strategy import Strategy
from fedrec.registry import register_method


@dataclass
class LocalConfig:
    """No options."""


class Local(Strategy):
    """All parameters private."""

    def partition_rules(self) -> list[tuple[str, str]]:
        """Everything private."""
        return [("*", PRIVATE)]


register_method("local", LocalConfig, Local)
