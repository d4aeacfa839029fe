"""The FedPA model: the frozen CTR layers fused with low-rank adapters by a gate.

For each hidden layer l with input h^l ``(B, D_l)`` (fedpa.md §2.2)::

    c   = ReLU(W_l h^l + b_l)                         (B, D_{l+1})   frozen branch
    a_k = s · (h^l A_k) B_k,   s = α / r              (B, D_{l+1})   adapter k
    z   = softmax(W2_l ReLU(W1_l h^l + b1_l) + b2_l)  (B, K)  gate, K = 1 + #adapters
    h^{l+1} = z_0 c + Σ_k z_k a_k

with ``A_k ∈ R^{D_l×r}`` and ``B_k ∈ R^{r×D_{l+1}}``. The adapters are declared as
data: ``adapters`` names them (``"user"``, ``"shared"`` or a user attribute, for
a group adapter) and the method's partition says who owns each one. Fusion
``"gate"`` is FedPA; ``"equal"`` fixes z = 1/K (the w/o-gate ablation);
``"lora"`` is plain LoRA inside the activation, ``ReLU(W h + b + Σ_k a_k)``.

Parameter names extend :class:`~fedrec.models.ctr_mlp.CTRModel`'s (so a
pre-trained CTR checkpoint loads as is): ``lora.{l}.{adapter}.A|B`` and
``gates.{l}.{0|2}.weight|bias``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from fedrec.models.ctr_mlp import CTRModel


class LoRA(nn.Module):
    """Low-rank adapter ``x ↦ (α/r)·(x A) B``.

    ``init="lora"``: A Kaiming-uniform, B = 0 (PEFT's); ``init="zeros"``: both
    zero, as the FedPA reference code (then they never move).
    """

    def __init__(
        self, d_in: int, d_out: int, rank: int, alpha: float, init: str
    ) -> None:
        super().__init__()
        a = torch.zeros(rank, d_in)
        if init == "lora":
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # fan_in = d_in, as PEFT
        self.A = nn.Parameter(a.T.contiguous())  # (D_in, r)
        self.B = nn.Parameter(torch.zeros(rank, d_out))  # (r, D_out)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D_in) -> (B, D_out)``."""
        return self.scale * (x @ self.A) @ self.B


class AdaptedCTRModel(CTRModel):
    """A :class:`CTRModel` whose hidden layers carry adapters and gates.

    Parameters
    ----------
    adapters
        Adapter names, in gate order (gate output k+1 weighs adapter k).
    rank, alpha, lora_init
        LoRA rank r, alpha, and ``"lora"`` or ``"zeros"`` initialisation.
    fusion
        ``"gate"``, ``"equal"`` or ``"lora"`` (see the module docstring).
    gate_dim
        Hidden width of each layer's gate network (one per hidden layer).
    gate_frozen_bias
        Added to the initial bias of the frozen branch's gate logit; 0 is the
        reference (z ≈ 1/K at start), a few units start the model close to
        the pre-trained function (z_0 ≈ 1).
    **base
        Arguments of :class:`CTRModel`.
    """

    def __init__(
        self,
        *args: object,
        adapters: list[str],
        rank: int = 4,
        alpha: float = 1.0,
        lora_init: str = "lora",
        fusion: str = "gate",
        gate_dim: list[int] | None = None,
        gate_frozen_bias: float = 0.0,
        **base: object,
    ) -> None:
        super().__init__(*args, **base)  # type: ignore[arg-type]
        self.adapters, self.fusion = list(adapters), fusion
        dims = self.layer_dims
        gate_dim = gate_dim or [8, 4][: len(dims)] + [4] * (len(dims) - 2)
        if len(gate_dim) != len(dims):
            raise ValueError(f"gate_dim needs {len(dims)} widths, got {gate_dim}")
        self.lora = nn.ModuleList(
            nn.ModuleDict({k: LoRA(i, o, rank, alpha, lora_init) for k in adapters})
            for i, o in dims
        )
        K = 1 + len(adapters)
        self.gates = (
            nn.ModuleList(
                nn.Sequential(nn.Linear(i, g), nn.ReLU(), nn.Linear(g, K))
                for (i, _), g in zip(dims, gate_dim, strict=True)
            )
            if fusion == "gate"
            else nn.ModuleList()
        )
        with torch.no_grad():
            for gate in self.gates:
                cast(nn.Linear, cast(nn.Sequential, gate)[2]).bias[0] += (
                    gate_frozen_bias
                )

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for user and item codes ``(B,)``."""
        h = self.embed(users, items)  # (B, D_0)
        for i, layer in enumerate(self.mlp):
            adapters = cast(nn.ModuleDict, self.lora[i]).values()
            outs = [ad(h) for ad in adapters]  # K-1 × (B, D_{l+1})
            if self.fusion == "lora":
                h = torch.relu(layer(h) + sum(outs))
                continue
            branches = torch.stack([torch.relu(layer(h)), *outs], dim=-2)  # (B, K, D)
            if self.fusion == "gate":
                z = torch.softmax(self.gates[i](h), dim=-1)  # (B, K)
                h = (z.unsqueeze(-1) * branches).sum(-2)  # (B, D_{l+1})
            else:
                h = branches.mean(-2)  # z = 1/K
        return self.head(h).squeeze(-1)
