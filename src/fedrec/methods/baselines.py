"""Baselines around a pre-trained CTR model (fedpa.md §9), one short class each.

- ``pretrained``: the foundation model as is; nothing trains (evaluation only).
- ``fedper``: FedPer-style (Arivazhagan et al., 2019, arXiv 1912.00818): the
  user-field embeddings are private, everything else is shared and averaged.
- ``fedavg-lora``: one LoRA adapter per hidden layer, shared by all clients and
  averaged (plain LoRA inside the activation); everything else frozen.

FedAvg of the full model, local-only and centralised fine-tuning are
``fedavg``, ``local`` and ``centralised`` started from ``model.init_from``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from fedrec.data.dataset import InteractionData
from fedrec.fl.partition import FROZEN, PRIVATE, SHARED
from fedrec.fl.strategy import Strategy
from fedrec.methods.fedavg import FedAvg, FedAvgConfig
from fedrec.models.adapted_ctr import AdaptedCTRModel
from fedrec.registry import register_method
from fedrec.sections import ModelConfig


@dataclass
class NoOptions:
    """No options."""


class Pretrained(Strategy):
    """Everything frozen: the pre-trained model evaluated on every client."""

    def partition_rules(self) -> list[tuple[str, str]]:
        """All frozen."""
        return [("*", FROZEN)]


class FedPer(FedAvg):
    """Private user-field embeddings, shared rest."""

    def partition_rules(self) -> list[tuple[str, str]]:
        """User embeddings private; the rest shared."""
        return [("user_emb.*", PRIVATE), ("*", SHARED)]


@dataclass
class FedAvgLoRAConfig(FedAvgConfig):
    """LoRA rank, alpha and init of the one shared adapter (and FedAvg's weights)."""

    rank: int = 4
    alpha: float = 1.0
    lora_init: Literal["lora", "zeros"] = "lora"


class FedAvgLoRA(FedAvg):
    """One shared LoRA per layer, FedAvg-ed; the base stays frozen."""

    config: FedAvgLoRAConfig

    def build_model(self, data: InteractionData, cfg: ModelConfig) -> nn.Module:
        """The CTR model with one ``"shared"`` LoRA per layer, inside the ReLU."""
        c = self.config
        return AdaptedCTRModel.for_data(
            data,
            cfg.dim,
            cfg.layers,
            adapters=["shared"],
            rank=c.rank,
            alpha=c.alpha,
            lora_init=c.lora_init,
            fusion="lora",
        )

    def partition_rules(self) -> list[tuple[str, str]]:
        """Only the shared LoRA trains."""
        return [("lora.*", SHARED), ("*", FROZEN)]


register_method("pretrained", NoOptions, Pretrained)
register_method("fedper", FedAvgConfig, FedPer)
register_method("fedavg-lora", FedAvgLoRAConfig, FedAvgLoRA)
