"""Flower's simulation engine (Ray, in-process) for a fedrec config."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from fedrec.errors import FedrecError
from fedrec.flower.apps import flower_apps
from fedrec.flower.internals import woken
from fedrec.flower.runconfig import flower_config
from fedrec.flower.server import check_run_dir
from fedrec.sections import ExperimentConfig


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

    flower_config(cfg.to_dict())  # refused before Ray starts, not in the ServerApp
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    history: list[dict[str, Any]] = []
    server_app, client_app = flower_apps(cfg.to_dict(), num_nodes, history, out, resume)
    b = cfg.backbone
    one_actor = b.kind == "causal-lm" and b.split_k > 0
    cpus = (os.cpu_count() or 1) if one_actor else 1
    with woken(), quiet_flower():  # woken: messages handed over when stored
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_nodes,
                backend_config={"client_resources": {"num_cpus": cpus}},
            )
        finally:
            shutdown_ray()
    return history


def run_flower(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    nodes: int = 3,
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``cfg`` on Flower's simulation engine, keeping a run directory; its summary.

    The ServerApp keeps the run directory (the embedded engine's files, a
    checkpoint after every round); ``resume`` continues a killed run there.
    """
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = (
            Path(cfg.run.out_dir) / f"{cfg.run.name}-flower-s{cfg.run.seed}-{stamp}"
        )
    check_run_dir(run_dir, resume)
    stopped = (
        "the Flower run stopped before its last round; continue it with "
        f"`fedrec run --resume {run_dir}`"
    )
    try:
        run_flower_simulation(cfg, nodes, run_dir, resume)
    except FedrecError:
        raise
    except Exception as e:  # the ServerApp died: its checkpoint stays
        raise FedrecError(f"{stopped} ({type(e).__name__}: {e})") from e
    if not (run_dir / "summary.json").exists():
        raise FedrecError(stopped)
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary


def shutdown_ray() -> None:
    """``ray.shutdown()`` if Ray runs in this process: its daemons end.

    Flower's backend shuts Ray down when the simulation ends, also by an
    exception; this covers what it misses (an interrupt while Ray starts).
    ``KeyboardInterrupt`` (``Ctrl-C``) and, in the ``fedrec`` CLI
    (:func:`fedrec.procs.sigterm_exits`), ``SIGTERM`` reach it. A process
    killed outright leaves it to Ray: its GCS server and raylet are started
    with a parent-death signal (``PR_SET_PDEATHSIG``, Linux), its workers end
    with the raylet.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


class _NotRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


@contextlib.contextmanager
def quiet_flower() -> Iterator[None]:
    """Flower's log once, at INFO, without the notices fedrec answers itself.

    Flower's logger (``flwr``, level DEBUG, its own console handler at INFO)
    also propagates to the root logger, whose handler (``fedrec``'s CLI sets
    INFO) printed every record again, DEBUG included; here it does not
    propagate. Left out: the notice that ``run_simulation`` is deprecated (a
    decision, docs/design.md: fedrec runs Flower's simulation in its own
    process, so the CLI keeps the history and the run directory; ``flwr run``
    is the other way in) and Ray's tip about ``CUDA_VISIBLE_DEVICES`` (fedrec's
    actors ask for no GPU).
    """
    flwr_log = logging.getLogger("flwr")
    quiet = _NotRunSimulationDeprecation()
    propagate = flwr_log.propagate
    flwr_log.propagate = False
    flwr_log.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "Tip: In future versions of Ray", FutureWarning
            )
            yield
    finally:
        flwr_log.removeFilter(quiet)
        flwr_log.propagate = propagate
