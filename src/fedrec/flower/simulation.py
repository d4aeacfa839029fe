"""Flower's simulation engine (Ray, in-process) for a fedrec config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedrec.config import ExperimentConfig
from fedrec.flower.apps import flower_apps
from fedrec.flower.wake import woken


def run_flower_simulation(
    cfg: ExperimentConfig,
    num_nodes: int = 3,
    out: Path | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run ``cfg`` on ``num_nodes`` simulated SuperNodes; the per-round metrics.

    Node ``i`` gets ``partition-id = i`` of ``num-partitions = num_nodes`` and
    hosts the clients ``c ≡ i (mod num_nodes)``. With ``out``, the ServerApp
    keeps the run directory there (and continues it, with ``resume``).

    Ray runs the nodes' messages on one actor per CPU, any node's on any
    actor. A generative split config gets one actor with every CPU instead: its
    nodes' KV caches live in the actor's process, and a node's next message
    finds them only there (on ML-100K's decoding, two actors rebuilt them
    from the prefix nearly every token: 564 MB down, see bench/README.md).
    """
    from flwr.simulation import run_simulation

    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    history: list[dict[str, Any]] = []
    server_app, client_app = flower_apps(cfg.to_dict(), num_nodes, history, out, resume)
    b = cfg.backbone
    one_actor = b.kind == "causal-lm" and b.split_k > 0
    with woken():  # messages handed over when stored, not polled for
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_nodes,
            backend_config={
                "client_resources": {"num_cpus": os.cpu_count() if one_actor else 1}
            },
        )
    return history
