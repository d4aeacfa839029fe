"""Explicit method registry: ``register_method(name, config_cls, strategy_cls)``.

Names are lowercase, unique and validated at registration (after PEFT's
``register_peft_method``); ``get_method`` fails with the list of known names.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from fedrec.errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its config dataclass and its strategy class."""

    name: str
    config_cls: type
    strategy_cls: type


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, strategy_cls: type) -> None:
    """Register a method; raises ``ValueError`` on a bad or duplicate name."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*[a-z0-9]", name):
        raise ValueError(f"method name {name!r} must be lowercase [a-z0-9_-]")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered")
    if not dataclasses.is_dataclass(config_cls):
        raise ValueError(f"{config_cls!r} must be a dataclass")
    _METHODS[name] = MethodSpec(name, config_cls, strategy_cls)


def get_method(name: str) -> MethodSpec:
    """Look up a method by name, importing the built-in methods first."""
    import fedrec.methods  # noqa: F401  (registers the built-ins)

    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise ConfigError(f"unknown method.name {name!r} (known: {known})") from None


def method_names() -> list[str]:
    """Names of every registered method."""
    import fedrec.methods  # noqa: F401

    return sorted(_METHODS)


def build_strategy(method: dict[str, Any]) -> Any:
    """Instantiate the strategy for a validated ``method`` config table."""
    spec = get_method(method["name"])
    params = {k: v for k, v in method.items() if k != "name"}
    return spec.strategy_cls(spec.config_cls(**params))
