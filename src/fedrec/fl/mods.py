"""Upload middleware: what happens to a client's upload before it leaves.

A mod is ``mod(uploads, received, ctx) -> uploads`` over stacked ``(C, ...)``
tensors; mods compose in order and never see private tensors. The engine applies
them on the client side of the wire (and the Flower engine as client mods).

LDP noise is drawn on the client from a generator seeded by the operating
system (:func:`secrets.randbits`), fresh for every client and round: nothing the
server knows (run seed, round, client id) regenerates it. The
``privacy.reproducible_noise`` switch seeds it by ``(seed, round, client)``
instead, for tests and simulation studies only: such noise protects nothing
(the run's summary says ``ldp_protects = false``) and the Flower app refuses it.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fedrec.fl.protocols import Params
from fedrec.sections import PrivacyConfig

log = logging.getLogger("fedrec")


@dataclass
class ModContext:
    """Seed, round and client ids (what reproducible noise is keyed by)."""

    seed: int
    round: int
    clients: list[int]


class UploadMod(Protocol):
    """The middleware protocol: a transform of the uploads, and its privacy cost."""

    def __call__(self, uploads: Params, received: Params, ctx: ModContext) -> Params:
        """Transform the stacked uploads."""
        ...

    @property
    def epsilon_per_round(self) -> float:
        """ε one upload spends (0: a mod that claims no privacy cost)."""
        ...


def laplace(
    shape: tuple[int, ...], scale: float, gen: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Laplace(0, scale) samples by inverse CDF: ``−b·sgn(u)·log(1 − 2|u|)``."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5
    return (-scale * u.sign() * torch.log1p(-2 * u.abs())).to(dtype)


class LaplaceLDP:
    """ε-LDP for a client's upload (fedpa.md §7.2, clipping and noise as ours).

    The update ``Δ = upload − received`` (all uploaded tensors together) is
    clipped to L1 norm ``clip``: ``Δ ← Δ·min(1, C/||Δ||₁)``. Two clipped updates
    differ by at most 2C in L1, so adding Laplace(0, b) noise with ``b = 2C/ε``
    to every entry makes each upload ε-LDP (the server knows ``received``, so
    releasing ``received + Δ̃`` costs no more). Over the rounds a client takes
    part in, ε adds up (basic composition).

    With ``epsilon = 0`` and ``scale > 0``: noise Laplace(0, scale), no clipping,
    no ε claimed (the δ-only mode of the reference line of work).

    ``epsilon = inf``: clipping only, no noise (a reference row that separates
    the effect of clipping from that of the noise; no privacy).

    Each client's noise comes from its own generator, seeded by the operating
    system; ``reproducible=True`` seeds it by ``(seed, round, client id)``
    (regenerable by the server: no protection, tests and simulation only).
    """

    def __init__(
        self,
        epsilon: float = 0.0,
        clip: float = 1.0,
        scale: float = 0.0,
        reproducible: bool = False,
    ) -> None:
        if epsilon < 0 or clip <= 0 or scale < 0:
            raise ValueError("LaplaceLDP needs epsilon >= 0, clip > 0, scale >= 0")
        if not (epsilon > 0) ^ (scale > 0):
            raise ValueError("LaplaceLDP needs exactly one of epsilon > 0 or scale > 0")
        self.epsilon, self.clip, self.reproducible = epsilon, clip, reproducible
        self.scale = 2 * clip / epsilon if epsilon > 0 else scale

    def __call__(self, uploads: Params, received: Params, ctx: ModContext) -> Params:
        """Clip (ε mode) and add each client's Laplace noise."""
        names = list(uploads)
        C = len(ctx.clients)
        delta = {n: uploads[n] - received[n] for n in names}
        if self.epsilon > 0:
            l1 = torch.zeros(C, dtype=torch.float64)
            for d in delta.values():
                l1 = l1 + d.reshape(C, -1).abs().sum(1, dtype=torch.float64)
            factor = torch.clamp(self.clip / l1.clamp(min=1e-30), max=1.0)
            delta = {
                n: d * factor.to(d.dtype).view(-1, *[1] * (d.dim() - 1))
                for n, d in delta.items()
            }
        out = {n: received[n] + delta[n] for n in names}
        if self.scale == 0:  # ε = ∞: clipping only
            return out
        sizes = [out[n][0].numel() for n in names]
        noise = torch.empty(C, sum(sizes), dtype=torch.float64)
        for i, cid in enumerate(ctx.clients):  # one draw per client, in name order
            gen = torch.Generator().manual_seed(self._seed(ctx, cid))
            noise[i] = laplace((sum(sizes),), self.scale, gen, torch.float64)
        for n, chunk in zip(names, noise.split(sizes, dim=1), strict=True):
            out[n] = out[n] + chunk.reshape(out[n].shape).to(out[n].dtype)
        return out

    def _seed(self, ctx: ModContext, cid: int) -> int:
        """63 random bits from the OS, or (reproducible) from (seed, round, cid)."""
        if not self.reproducible:
            return secrets.randbits(63)
        key = np.random.SeedSequence([ctx.seed, ctx.round, cid, 7])
        return int(key.generate_state(1, np.uint64)[0] >> 1)

    @property
    def epsilon_per_round(self) -> float:
        """ε of one upload (``inf`` in δ-only and clip-only modes: none claimed)."""
        return self.epsilon if self.epsilon > 0 else math.inf


def build_mods(privacy: PrivacyConfig) -> list[UploadMod]:
    """The configured upload mods, in order."""
    if not privacy.ldp:
        return []
    if privacy.reproducible_noise:
        log.warning(
            "privacy.reproducible_noise: LDP noise is seeded by (seed, round, "
            "client) and can be regenerated by the server; it protects nothing "
            "(tests and simulation studies only)"
        )
    mod = LaplaceLDP(
        privacy.ldp_epsilon,
        privacy.ldp_clip,
        privacy.ldp_scale,
        privacy.reproducible_noise,
    )
    return [mod]
