"""FedPA (Zhang et al., IJCAI-24, doi 10.24963/ijcai.2024/603, arXiv 2405.04840).

Federated adaptation of a pre-trained CTR foundation model with two-level
low-rank adapters fused by a per-layer adaptive gate (fedpa.md §1–3):

- **private** (never leave the client): the user-field embedding rows and the
  user-level adapter of every layer;
- **group-shared**: one adapter per layer per group attribute j, averaged on the
  server among the clients with the same value of attribute j (every group's
  adapter exists from round 0);
- **shared**: the gates and the output head (``affine_output``), plain mean;
- **frozen**: item-field embeddings and the pre-trained hidden layers.

Ablations are switches: ``user_adapter``, ``group_adapter``, ``gate`` (off:
fixed equal weights) and ``lora_init = "zeros"`` (the reference code's init,
under which no adapter ever learns, fedpa.md §2.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fedrec.data.dataset import InteractionData
from fedrec.errors import ConfigError
from fedrec.fl.partition import FROZEN, PRIVATE, SHARED, group_role
from fedrec.fl.strategy import RoundContext, Strategy
from fedrec.models.adapted_ctr import AdaptedCTRModel
from fedrec.registry import register_method
from fedrec.sections import ModelConfig


@dataclass
class FedPAConfig:
    """FedPA's options; defaults from fedpa.md §6 except ``lora_init``."""

    group_attrs: list[str] = field(default_factory=list)
    rank: int = 4
    alpha: float = 1.0
    lora_init: Literal["lora", "zeros"] = "lora"
    user_adapter: bool = True
    group_adapter: bool = True
    gate: bool = True
    gate_dim: list[int] = field(default_factory=lambda: [8, 4])
    gate_frozen_bias: float = 0.0
    weighted: bool = False
    adapter_lr: float = 0.0
    user_adapter_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.adapter_lr < 0:
            raise ConfigError("method.adapter_lr must be >= 0 (0: train.lr)")
        if self.user_adapter_lr < 0:
            raise ConfigError("method.user_adapter_lr must be >= 0 (0: adapter_lr)")
        if self.rank < 1:
            raise ConfigError("method.rank must be >= 1")
        if self.group_adapter and not self.group_attrs:
            raise ConfigError(
                "method.group_attrs must name at least one user attribute"
            )
        bad = {"user", "shared"} & set(self.group_attrs)
        if bad:
            raise ConfigError(f"method.group_attrs: {sorted(bad)} is reserved")


class FedPA(Strategy):
    """Two-level personalised adapters with an adaptive gate."""

    config: FedPAConfig

    def adapters(self) -> list[str]:
        """Adapter names in gate order: user first, then one per group attribute."""
        c = self.config
        return (["user"] if c.user_adapter else []) + (
            c.group_attrs if c.group_adapter else []
        )

    def build_model(self, data: InteractionData, cfg: ModelConfig) -> nn.Module:
        """The pre-trained CTR model with adapters and gates added."""
        c = self.config
        return AdaptedCTRModel.for_data(
            data,
            cfg.dim,
            cfg.layers,
            adapters=self.adapters(),
            rank=c.rank,
            alpha=c.alpha,
            lora_init=c.lora_init,
            fusion="gate" if c.gate else "equal",
            gate_dim=c.gate_dim,
            gate_frozen_bias=c.gate_frozen_bias,
        )

    def partition_rules(self) -> list[tuple[str, str]]:
        """Private user rows and user adapter; group adapters; shared gate and head."""
        groups = [(f"lora.*.{a}.*", group_role(a)) for a in self.config.group_attrs]
        return [
            ("user_emb.*", PRIVATE),
            ("lora.*.user.*", PRIVATE),
            *groups,
            ("gates.*", SHARED),
            ("head.*", SHARED),
            ("*", FROZEN),
        ]

    def learning_rate(self, name: str, lr: float) -> float:
        """``train.lr``, except for LoRA factors: ``adapter_lr`` when set (> 0).

        The user adapter's factors (``lora.<l>.user.*``) take
        ``user_adapter_lr`` when that is set (> 0): a private adapter fits
        its one user's rows, which a group adapter's rate can overfit.
        """
        c = self.config
        if not name.startswith("lora."):
            return lr
        if c.user_adapter_lr > 0 and name.split(".")[2] == "user":
            return c.user_adapter_lr
        return c.adapter_lr if c.adapter_lr > 0 else lr

    def client_weights(self, ctx: RoundContext) -> torch.Tensor:
        """Unweighted mean (the reference), or by train rows if ``weighted``."""
        return ctx.weights if self.config.weighted else torch.ones_like(ctx.weights)


register_method("fedpa", FedPAConfig, FedPA)
