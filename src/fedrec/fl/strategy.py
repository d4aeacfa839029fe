"""The algorithm layer, in the spirit of Flower's ``Strategy``.

What a client receives, trains, keeps and uploads, and how the server aggregates.

Both engines drive the same strategy object:

- :meth:`Strategy.partition_rules` declares, as data, which parameters are
  frozen, private, shared or group-shared (:mod:`fedrec.fl.partition`);
- :meth:`Strategy.init_server` builds the server state from the initial model;
- :meth:`Strategy.broadcast` gives each sampled client its copy of the shared
  state, ``(C, ...)`` per tensor;
- :meth:`Strategy.penalty` is an optional client-side term of the local loss;
- :meth:`Strategy.aggregate` turns the stacked uploads into the next server state;
- :meth:`Strategy.round_log` reports what the last aggregation decided (the
  engines merge it into the round's metrics).

The server state never contains a private parameter: the engine keeps those in
a per-client store that the strategy is never handed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedrec.data.dataset import InteractionData
from fedrec.fl.clients import FedData
from fedrec.fl.partition import SHARED, Partition
from fedrec.fl.protocols import Params, Penalty
from fedrec.models.ctr_mlp import CTRModel
from fedrec.sections import ModelConfig


@dataclass
class RoundContext:
    """What the server may know about a round.

    Attributes
    ----------
    round
        0-based round index.
    clients
        ``int64[C]`` ids of the clients whose uploads are aggregated.
    weights
        ``float64[C]`` train rows of those clients (FedAvg weights).
    groups
        ``attr -> int64[C]`` group value of each client, for group parameters.
    n_groups
        ``attr -> number of values``.
    losses
        ``float64[C]`` each client's mean training loss of the round (clients
        report it with their upload; FELLRec's heating uses it).
    """

    round: int
    clients: torch.Tensor
    weights: torch.Tensor
    groups: dict[str, torch.Tensor]
    n_groups: dict[str, int]
    losses: torch.Tensor | None = None


class Strategy:
    """Base strategy: shared tensors averaged, group tensors averaged per group.

    Subclasses override only what differs. ``clients`` may force a client
    assignment (``"single"`` for centralised training).
    """

    clients: str | None = None

    def __init__(self, config: object) -> None:
        self.config = config

    def build_model(self, data: InteractionData, cfg: ModelConfig) -> nn.Module:
        """The model every client starts from (default: the plain CTR model)."""
        return CTRModel.for_data(data, cfg.dim, cfg.layers)

    def fit(self, model: nn.Module, fed: FedData) -> None:
        """Fit what the model computes from data before any round (default: nothing).

        Called once the model is built (and pre-trained weights loaded), with
        the clients' data; reference models fit their statistics here.
        """

    def partition_rules(self) -> list[tuple[str, str]]:
        """Ordered ``(glob, role)`` rules; default: everything shared."""
        return [("*", SHARED)]

    def init_server(
        self,
        init: Params,
        partition: Partition,
        n_groups: dict[str, int],
        n_clients: int = 0,
    ) -> Params:
        """Server state from initial values: shared as is, one copy per group value."""
        state: Params = {}
        for name in partition.uploaded:
            attr = partition.group_attr(name)
            t = init[name].detach().clone()
            state[name] = (
                t if attr is None else t.expand(n_groups[attr], *t.shape).clone()
            )
        return state

    def broadcast(
        self,
        server: Params,
        partition: Partition,
        clients: torch.Tensor,
        groups: dict[str, torch.Tensor],
    ) -> Params:
        """What each client receives, ``(C, ...)`` per tensor.

        Read-only: shared tensors come as expanded views of the server state;
        the engine copies them before a client trains.
        """
        out: Params = {}
        for name in partition.uploaded:
            attr = partition.group_attr(name)
            t = server[name]
            if attr is None:
                out[name] = t.expand(len(clients), *t.shape)
            else:
                out[name] = t[groups[attr]]
        return out

    def learning_rate(self, name: str, lr: float) -> float:
        """Learning rate of parameter ``name`` given ``train.lr`` (default: ``lr``)."""
        return lr

    def penalty(self) -> Penalty | None:
        """Client-side regulariser ``(params, received) -> scalar``, or ``None``."""
        return None

    def client_weights(self, ctx: RoundContext) -> torch.Tensor:
        """Aggregation weight of each uploading client (default: uniform)."""
        return torch.ones_like(ctx.weights)

    def round_log(self) -> dict[str, Any]:
        """What the last :meth:`aggregate` decided, once (default: nothing).

        JSON-able values; the engine merges them into the round's metrics and
        a strategy returns each aggregation's log only once (``{}`` when the
        round aggregated nothing).
        """
        return {}

    def aggregate(
        self, server: Params, uploads: Params, partition: Partition, ctx: RoundContext
    ) -> Params:
        """Weighted mean of shared tensors; per-group weighted mean of group tensors.

        ``θ ← Σ_c w_c θ_c / Σ_c w_c``; a group with no uploading member keeps
        its value.
        """
        w = self.client_weights(ctx)
        new = dict(server)
        for name, up in uploads.items():
            attr = partition.group_attr(name)
            wc = w.to(up.dtype).view(-1, *([1] * (up.dim() - 1)))
            if attr is None:
                new[name] = (wc * up).sum(0) / wc.sum()
            else:
                g = ctx.groups[attr]
                num = torch.zeros_like(server[name]).index_add_(0, g, wc * up)
                den = torch.zeros(len(server[name]), dtype=up.dtype).index_add_(
                    0, g, wc.flatten()
                )
                seen = den > 0
                num[seen] /= den[seen].view(-1, *([1] * (up.dim() - 1)))
                new[name] = torch.where(
                    seen.view(-1, *([1] * (up.dim() - 1))), num, server[name]
                )
        return new
