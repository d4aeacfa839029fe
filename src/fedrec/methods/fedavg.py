"""FedAvg (McMahan et al., AISTATS 2017, arXiv 1602.05629).

Every parameter is shared: each sampled client trains the whole model on its
rows, uploads it, and the server takes the mean weighted by train rows,
``θ ← Σ_c n_c θ_c / Σ_c n_c`` (``weighted = false``: the plain mean).
Private: nothing. Frozen: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.fl.strategy import RoundContext, Strategy
from fedrec.registry import register_method


@dataclass
class FedAvgConfig:
    """``weighted``: weight clients by their train rows."""

    weighted: bool = True


class FedAvg(Strategy):
    """Size-weighted FedAvg of the full model."""

    config: FedAvgConfig

    def client_weights(self, ctx: RoundContext) -> torch.Tensor:
        """``n_c`` (train rows) if weighted, else 1."""
        return ctx.weights if self.config.weighted else torch.ones_like(ctx.weights)


register_method("fedavg", FedAvgConfig, FedAvg)
