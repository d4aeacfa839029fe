"""Where a SuperNode stands: its partition, the clients it hosts, its stores.

Shared by the ClientApp's handlers (:mod:`fedrec.flower.client`) and the
split's (:mod:`fedrec.flower.split_node`), which both sit above this module.
"""

from __future__ import annotations

from typing import Any

import torch

from fedrec.errors import FedrecError
from fedrec.flower.store import NodeStore


def partition(context: Any) -> tuple[int, int]:
    """(partition-id, num-partitions) of this SuperNode."""
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise FedrecError(
            "start each SuperNode with --node-config "
            "'partition-id=<i> num-partitions=<n>'"
        )
    return int(nc["partition-id"]), int(nc["num-partitions"])


def hosted(context: Any, n_clients: int) -> torch.Tensor:
    """The clients this node hosts, in bank-row order."""
    p, parts = partition(context)
    return torch.arange(p, n_clients, parts)


def store_of(msg: Any, context: Any, suffix: str = "") -> NodeStore:
    """The node's store for the run of ``msg`` (the server sends its key).

    ``suffix`` names another store of the same run (``"-split"``: the split's
    scratch).
    """
    cfg = msg.content["config"] if "config" in msg.content else {}
    return NodeStore.of(
        context, partition(context)[0], str(cfg.get("store", "")), suffix
    )
