"""The fedrec ServerApp/ClientApp pair (Flower 1.41 Message API).

``flower_apps(raw, nodes)`` builds a pair for one config (in-process
simulation); the module-level ``server_app`` / ``client_app`` (named in
``pyproject.toml`` ``[tool.flwr.app.components]``) read the config from the
run config instead (``flwr run``: keys ``config``, ``preset``, ``set``,
``out``, ``resume``, ``min-nodes``, ``node-timeout``, ``round-timeout``). The
server side is :mod:`fedrec.flower.server`, a node's side
:mod:`fedrec.flower.client`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrec.flower.client import client_app_for
from fedrec.flower.server import server_app_for


def flower_apps(
    raw: dict[str, Any] | None = None,
    nodes: int | None = None,
    history: list[dict[str, Any]] | None = None,
    out: Path | None = None,
    resume: bool = False,
) -> tuple[Any, Any]:
    """(ServerApp, ClientApp) for config ``raw`` (``None``: from the run config).

    ``nodes`` overrides ``min-nodes``; ``history`` receives each round's
    metrics; ``out``/``resume``: the run directory, and whether to continue it.
    """
    server = server_app_for(raw, nodes, history, out, resume)
    return server, client_app_for(raw)


# one assignment each: `flwr run` finds the components by parsing this file
server_app = server_app_for()
client_app = client_app_for()
