"""FedProx (Li et al., MLSys 2020, arXiv 1812.06127).

FedAvg whose clients minimise ``L_c(θ) + (μ/2)·||θ − θ^t||²``, θ^t being the
model received this round. Private: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.errors import ConfigError
from fedrec.fl.protocols import Params, Penalty
from fedrec.methods.fedavg import FedAvg, FedAvgConfig
from fedrec.registry import register_method


@dataclass
class FedProxConfig(FedAvgConfig):
    """``mu``: weight of the proximal term."""

    mu: float = 0.01

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ConfigError("method.mu must be >= 0")


class FedProx(FedAvg):
    """FedAvg plus the proximal term on the client."""

    config: FedProxConfig

    def penalty(self) -> Penalty:
        """``(μ/2)·Σ_tensors ||θ − θ_received||²``."""
        mu = self.config.mu

        def prox(params: Params, received: Params) -> torch.Tensor:
            total = torch.zeros(())
            for n in received:
                total = total + ((params[n] - received[n]) ** 2).sum()
            return 0.5 * mu * total

        return prox


register_method("fedprox", FedProxConfig, FedProx)
