"""The fedrec config and engine a Flower app runs, from code or a run config."""

from __future__ import annotations

import gc
import json
from typing import Any

from fedrec.config import ExperimentConfig, config_from_raw, load_config
from fedrec.errors import ConfigError, FedrecError

_ENGINES: dict[str, Any] = {}
_RUN_CONFIGS: dict[str, dict[str, Any]] = {}


def engine_for(raw: dict[str, Any]) -> Any:
    """One engine (data, model, strategy) per process and config, for nodes.

    A node only reads it (its clients' state comes in messages and its store);
    the ServerApp builds its own per run, as it changes the server state.

    Once built, everything the process holds is moved out of the garbage
    collector's sight (:func:`gc.freeze`): it lives as long as the process. A
    node process holds ≈ 250k objects after importing torch, and a full
    collection walks them all (≈ 180 ms in a Ray worker, once every ≈ 100
    messages: Ray's and Flower's handling of each message allocates enough
    to trigger it); with them frozen, ≈ 1 ms.
    """
    from fedrec.build import build_engine

    key = json.dumps(raw, sort_keys=True)
    if key not in _ENGINES:
        _ENGINES[key] = build_engine(flower_config(raw))
        gc.freeze()
    return _ENGINES[key]


def flower_config(raw: dict[str, Any]) -> ExperimentConfig:
    """The validated config of a Flower run; refuses what must not run there.

    ``privacy.reproducible_noise``: noise seeded by what the server knows is
    no protection, and a Flower run is a deployment (or its rehearsal).
    """
    cfg = config_from_raw(raw)
    if cfg.privacy.reproducible_noise:
        raise ConfigError(
            "privacy.reproducible_noise: the Flower app refuses noise the server "
            "can regenerate; LDP noise on Flower is always drawn from the OS"
        )
    return cfg


def config_from_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The fedrec config named by a Flower run config (``config``, ``preset``, ``set``).

    ``set`` holds ``;``-separated overrides (``"train.rounds=3; train.lr=0.1"``).
    """
    path = str(run_config.get("config", ""))
    if not path:
        raise FedrecError("Flower run config: 'config' (a fedrec TOML path) is empty")
    sets = [s.strip() for s in str(run_config.get("set", "")).split(";") if s.strip()]
    preset = str(run_config.get("preset", "")) or None
    return load_config(path, sets, preset).to_dict()


def raw_of(raw: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """``raw`` when an app was built for one config, else the run config's.

    A run config is read and validated once per process, not once per message.
    """
    if raw is not None:
        return raw
    key = json.dumps(dict(context.run_config), sort_keys=True)
    if key not in _RUN_CONFIGS:
        _RUN_CONFIGS[key] = config_from_run_config(context.run_config)
    return _RUN_CONFIGS[key]


def eval_splits(eng: Any) -> list[str]:
    """Splits scored every round on Flower: the config's, and test (no best.pt here)."""
    return list(dict.fromkeys([*eng.cfg.eval.splits, "test"]))
