"""Typed, validated experiment configs loaded from TOML.

One TOML file per experiment, one section per dataclass of
:mod:`fedrec.sections`. Unknown keys and wrong types are errors that name the
key (``train.lr``) and the file. Overrides from the command line (``--set
train.lr=0.01``) are parsed as TOML values and go through the same validation.

The method's own section is validated against the config class the method
registered (:mod:`fedrec.registry`); importing this module imports
:mod:`fedrec.methods`, which registers the built-in methods, so a config
loaded here can name any of them.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import fedrec.methods  # noqa: F401  (registers the built-in methods)
from fedrec.errors import ConfigError
from fedrec.registry import get_method
from fedrec.sections import (
    BackboneConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    GuardConfig,
    KDConfig,
    ModelConfig,
    PretrainConfig,
    PrivacyConfig,
    RunConfig,
    TrainConfig,
    UsersConfig,
)

__all__ = [
    "BackboneConfig",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "GuardConfig",
    "KDConfig",
    "ModelConfig",
    "PretrainConfig",
    "PrivacyConfig",
    "RunConfig",
    "TrainConfig",
    "UsersConfig",
    "apply_overrides",
    "config_from_raw",
    "from_dict",
    "load_config",
    "parse_override",
]


def from_dict(cls: type, raw: dict[str, Any], where: str = "", source: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and bad types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{_loc(source)}{where or 'config'} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"{_loc(source)}unknown key '{key}' (valid: {', '.join(sorted(names))})"
        )
    kwargs = {
        k: _coerce(hints[k], v, f"{where}.{k}" if where else k, source)
        for k, v in raw.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{_loc(source)}{e}") from None


def _loc(source: str) -> str:
    return f"{source}: " if source else ""


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(
        f"{_loc(source)}'{key}' = {value!r} has type {type(value).__name__}, "
        f"expected {getattr(tp, '__name__', tp)}"
    )
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{_loc(source)}'{key}' = {value!r}: choose one of {args}"
            )
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key, source)
            except ConfigError:
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if value in ("inf", "-inf"):  # how a run directory's JSON keeps ±inf
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise ConfigError(f"{_loc(source)}'{key}': unsupported type {tp}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is read as TOML, else kept as a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    key, text = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``--set`` overrides applied."""
    out = _deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a table")
        node[path[-1]] = value
    return out


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(
    path: str | Path, overrides: list[str] | None = None, preset: str | None = None
) -> ExperimentConfig:
    """Read a TOML file, apply ``preset``'s overrides then ``overrides``, validate."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    if preset is not None:
        presets = raw.get("presets", {})
        if preset not in presets:
            raise ConfigError(
                f"{path}: unknown preset {preset!r} (have {sorted(presets) or 'none'})"
            )
        overrides = [*presets[preset], *(overrides or [])]
    return config_from_raw(apply_overrides(raw, overrides or []), str(path))


def config_from_raw(raw: dict[str, Any], source: str = "") -> ExperimentConfig:
    """Validate a raw nested dict, including the method's own section."""
    cfg: ExperimentConfig = from_dict(ExperimentConfig, raw, "", source)
    name = cfg.method.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{_loc(source)}'method.name' is required")
    try:
        spec = get_method(name)
    except ConfigError as e:
        raise ConfigError(f"{_loc(source)}{e}") from None
    params = {k: v for k, v in cfg.method.items() if k != "name"}
    method_cfg = from_dict(spec.config_cls, params, "method", source)
    cfg.method = {"name": name, **dataclasses.asdict(method_cfg)}
    return cfg
