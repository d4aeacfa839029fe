"""FELLRec's dynamic balance strategy (fellrec.md §4).

FELLRec: Zhao et al., Findings of NAACL 2025, arXiv 2402.09959 (first PPLR).

Each client i keeps its own personalised trainable parameters θ_i; after local
training the server mixes them per client::

    s_ij = (cos(vec θ_i, vec θ_j) + 1) / 2                  similarity, s_ii = 1
    l̂    = softmax(l / τ_l)                                   normalised losses
    w_i  = tanh(α / l̂_i^(t + 1/β))                           curriculum heating
    θ_i ← (θ_i + w_i Σ_{j≠i} s_ij θ_j) / (1 + w_i Σ_{j≠i} s_ij)

A client with a high relative loss gets a small w_i early (it learns mostly
from itself) and every w_i → 1 as rounds go by. ``heating = false`` sets
w ≡ 1; ``similarity = false`` sets s_ij ≡ 1 (uniform mixing). The exponent reads
``t + 1/β`` as the reference code does; ``"(t+1)/beta"`` is the other reading.
``similarity_on = "update"`` (ours) takes the cosine of the round's updates
``θ_i − θ_i^sent`` instead of the parameters themselves. Every θ_i^new is mixed
from the uploads as they arrived (one matrix product), never from a neighbour
already mixed this round. Private: nothing beyond what the backbone's partition
keeps; the server holds one θ_i per client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from fedrec.errors import ConfigError
from fedrec.fl.partition import Partition
from fedrec.fl.protocols import Params
from fedrec.fl.strategy import RoundContext, Strategy
from fedrec.registry import register_method


@dataclass
class FELLRecConfig:
    """Dynamic-balance options (fellrec.md §4, §9)."""

    alpha: float = 0.7
    beta: float = 5.0
    tau_loss: float = 0.05
    heating: bool = True
    heat_exponent: Literal["t+1/beta", "(t+1)/beta"] = "t+1/beta"
    similarity: bool = True
    similarity_on: Literal["params", "update"] = "params"

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.tau_loss <= 0 or self.alpha <= 0:
            raise ConfigError(
                "method.alpha, method.beta and method.tau_loss must be > 0"
            )


def similarity(vecs: torch.Tensor) -> torch.Tensor:
    """``S[i, j] = (cos(v_i, v_j) + 1) / 2`` for ``vecs`` ``(C, P)``."""
    unit = torch.nn.functional.normalize(vecs.double(), dim=1)
    return (unit @ unit.T + 1) / 2


def heating_weights(losses: torch.Tensor, t: int, cfg: FELLRecConfig) -> torch.Tensor:
    """``w_i = tanh(α / softmax(l/τ)_i ^ e)``, ``e = t + 1/β`` (or ``(t+1)/β``)."""
    if not cfg.heating:
        return torch.ones_like(losses, dtype=torch.float64)
    l_hat = torch.softmax(losses.double() / cfg.tau_loss, dim=0)
    e = t + 1 / cfg.beta if cfg.heat_exponent == "t+1/beta" else (t + 1) / cfg.beta
    return torch.tanh(cfg.alpha / l_hat**e)


def mixing_matrix(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mixing weights ``(C, C)``: ``a_ii = 1/Z_i``, ``a_ij = w_i s_ij / Z_i``.

    ``Z_i = 1 + w_i Σ_{j≠i} s_ij``, so every row sums to 1.
    """
    off = s.clone().fill_diagonal_(0) * w[:, None]  # a_ij·Z_i for j ≠ i
    a = off + torch.eye(len(s), dtype=s.dtype)
    return a / a.sum(1, keepdim=True)


def mix(vecs: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``θ_i ← (θ_i + w_i Σ_{j≠i} s_ij θ_j) / (1 + w_i Σ_{j≠i} s_ij)``, ``(C, P)``.

    Every row is mixed from the rows given (``A @ θ``), so a client mixed late
    reads its neighbours as uploaded, not as already mixed.
    """
    return (mixing_matrix(s, w) @ vecs.double()).to(vecs.dtype)


def balance_log(
    s: torch.Tensor, w: torch.Tensor, clients: torch.Tensor
) -> dict[str, Any]:
    """A round's balance decisions, for the round's metrics.

    ``fellrec_s_min/mean/max`` over the off-diagonal ``s_ij`` (``None`` with
    one client); per client, in ``fellrec_clients`` order: ``fellrec_heat``
    (the heating weight ``w_i``, its learning speed from the others) and
    ``fellrec_self_weight`` (``a_ii = 1/Z_i``, the share of its own θ_i in its
    mix; ``1 − a_ii`` comes from the other clients).
    """
    off = s[~torch.eye(len(s), dtype=torch.bool)]
    return {
        "fellrec_clients": [int(c) for c in clients],
        "fellrec_s_min": float(off.min()) if len(off) else None,
        "fellrec_s_mean": float(off.mean()) if len(off) else None,
        "fellrec_s_max": float(off.max()) if len(off) else None,
        "fellrec_heat": [float(x) for x in w],
        "fellrec_self_weight": [float(x) for x in mixing_matrix(s, w).diagonal()],
    }


class FELLRec(Strategy):
    """Per-client models mixed by similarity and curriculum heating."""

    config: FELLRecConfig

    def __init__(self, config: FELLRecConfig) -> None:
        super().__init__(config)
        self._log: dict[str, Any] = {}

    def round_log(self) -> dict[str, Any]:
        """The last aggregation's :func:`balance_log`, once."""
        out, self._log = self._log, {}
        return out

    def init_server(
        self,
        init: Params,
        partition: Partition,
        n_groups: dict[str, int],
        n_clients: int = 0,
    ) -> Params:
        """One θ_i per client, all the same initial values (one shared init)."""
        return {
            n: init[n].detach().expand(n_clients, *init[n].shape).clone()
            for n in partition.uploaded
        }

    def broadcast(
        self,
        server: Params,
        partition: Partition,
        clients: torch.Tensor,
        groups: dict[str, torch.Tensor],
    ) -> Params:
        """Client i receives its own θ_i."""
        return {n: server[n][clients] for n in partition.uploaded}

    def aggregate(
        self, server: Params, uploads: Params, partition: Partition, ctx: RoundContext
    ) -> Params:
        """Mix the uploading clients' θ per client and store each θ_i back.

        ``s`` is computed on the uploaded θ_i (``similarity_on = "params"``) or
        on the updates ``θ_i − θ_i^sent`` (``"update"``; θ_i^sent is what the
        server holds for client i, which is what it sent).
        """
        names = list(uploads)
        C = len(ctx.clients)
        vecs = torch.cat([uploads[n].reshape(C, -1) for n in names], dim=1)
        if not self.config.similarity:
            s = torch.ones(C, C, dtype=torch.float64)
        elif self.config.similarity_on == "update":
            sent = [server[n][ctx.clients].reshape(C, -1) for n in names]
            s = similarity(vecs - torch.cat(sent, dim=1).to(vecs.dtype))
        else:
            s = similarity(vecs)
        assert ctx.losses is not None
        w = heating_weights(ctx.losses, ctx.round, self.config)
        self._log = balance_log(s, w, ctx.clients)
        mixed = mix(vecs, s, w)
        new = dict(server)
        start = 0
        for n in names:
            size = uploads[n][0].numel()
            t = server[n].clone()
            t[ctx.clients] = mixed[:, start : start + size].reshape(uploads[n].shape)
            new[n] = t
            start += size
        return new


register_method("fellrec", FELLRecConfig, FELLRec)
