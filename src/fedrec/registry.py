"""Explicit method registry: ``register_method(name, config_cls, strategy_cls)``.

Names are lowercase, unique and validated at registration (after PEFT's
``register_peft_method``); ``get_method`` fails with the list of known names.

The registry is a table and nothing more: it imports no method. Each method
module registers itself when imported, and importing :mod:`fedrec.methods`
imports the built-in ones. The modules that read method names —
:mod:`fedrec.config` (validating ``[method]``), :mod:`fedrec.build` (building
the strategy) and the CLI — import :mod:`fedrec.methods` first, so the
dependency points one way: methods → registry, never back.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from fedrec.errors import ConfigError
from fedrec.fl.strategy import Strategy


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its config dataclass and its strategy class."""

    name: str
    config_cls: type
    strategy_cls: type[Strategy]


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, strategy_cls: type[Strategy]) -> None:
    """Register a method; raises ``ValueError`` on a bad or duplicate name."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*[a-z0-9]", name):
        raise ValueError(f"method name {name!r} must be lowercase [a-z0-9_-]")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered")
    if not dataclasses.is_dataclass(config_cls):
        raise ValueError(f"{config_cls!r} must be a dataclass")
    _METHODS[name] = MethodSpec(name, config_cls, strategy_cls)


def get_method(name: str) -> MethodSpec:
    """Look up a registered method by name."""
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise ConfigError(f"unknown method.name {name!r} (known: {known})") from None


def method_names() -> list[str]:
    """Names of every registered method."""
    return sorted(_METHODS)


def build_strategy(method: dict[str, Any]) -> Strategy:
    """Instantiate the strategy for a validated ``method`` config table."""
    spec = get_method(method["name"])
    params = {k: v for k, v in method.items() if k != "name"}
    return spec.strategy_cls(spec.config_cls(**params))
