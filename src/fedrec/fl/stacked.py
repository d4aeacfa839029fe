"""The stacked client update: all of a round's clients train at once.

Every trainable tensor carries a leading client axis ``C`` (per-client copies,
never views of server state). At local step k each client that still has a
batch contributes one mini-batch; clients are grouped into buckets of similar
batch length, padded and masked. A bucket's per-client losses ``(C,)`` come
from ``vmap(task.loss)``; one backward pass of their sum gives every client
exactly its own gradient, as client c's loss depends on row c of each
tensor alone (a ``vmap(grad(task.loss))`` transform gives the same, at ≈ 1.4×
the time for a node's 10 clients).
:class:`StackedAdam` then updates only the clients active at step k, each with
its own moments and step count (zeroing a gradient is not enough: Adam with
non-zero moments moves a parameter whose gradient is zero, fedpa.md §10).

Equal to :func:`fedrec.fl.loop.train_loop` (a plain per-client loop with
``torch.optim.Adam``) to round-off; ``tests/fl/test_stacked_vs_loop.py`` checks it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import vmap

from fedrec.fl.clients import buckets_by_length, pad_segments
from fedrec.fl.protocols import LocalTrainer, Params, Penalty, RowScorer


class StackedAdam:
    """Adam (or SGD) over ``(C, ...)`` tensors with a per-client step mask.

    Same arithmetic as ``torch.optim.Adam`` (no weight decay, no amsgrad)::

        m ← β1 m + (1-β1) g;   v ← β2 v + (1-β2) g²;   t ← t + 1
        θ ← θ − (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + ε)

    applied only where ``active[c]``; inactive clients keep θ, m, v and t.
    """

    def __init__(
        self,
        params: Params,
        lr: float | dict[str, float],
        kind: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.lr = {n: lr[n] if isinstance(lr, dict) else lr for n in params}
        self.kind, self.betas, self.eps = kind, betas, eps
        first = next(iter(params.values()))
        self.t = torch.zeros(first.shape[0], dtype=torch.long)
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, params: Params, grads: Params, active: torch.Tensor) -> None:
        """Update ``params`` in place where ``active`` (bool ``(C,)``) holds."""
        if bool(active.all()):
            self._update(params, grads, self.m, self.v, active)
            return
        idx = active.nonzero().squeeze(1)
        sub = {n: p[idx] for n, p in params.items()}
        m = {n: t[idx] for n, t in self.m.items()}
        v = {n: t[idx] for n, t in self.v.items()}
        self._update(sub, {n: g[idx] for n, g in grads.items()}, m, v, active, idx)
        for n, p in params.items():
            p[idx] = sub[n]
            self.m[n][idx] = m[n]
            self.v[n][idx] = v[n]

    def _update(
        self,
        params: Params,
        grads: Params,
        m: Params,
        v: Params,
        active: torch.Tensor,
        idx: torch.Tensor | None = None,
    ) -> None:
        """In-place update of clients that are all active (a subset if ``idx``)."""
        if self.kind == "sgd":
            for n, p in params.items():
                p.sub_(grads[n], alpha=self.lr[n])
            return
        b1, b2 = self.betas
        self.t += active.long()
        t = self.t if idx is None else self.t[idx]
        uniform = bool((t == t[0]).all())
        for n, p in params.items():
            g = grads[n]
            m[n].lerp_(g, 1 - b1)
            v[n].mul_(b2).addcmul_(g, g, value=1 - b2)
            if uniform:  # the usual case: one scalar step size, as torch.optim.Adam
                tt = int(t[0])
                denom = (v[n].sqrt() / math.sqrt(1 - b2**tt)).add_(self.eps)
                p.addcdiv_(m[n], denom, value=-self.lr[n] / (1 - b1**tt))
            else:
                td = t.to(torch.float64)
                ss = _per_client((self.lr[n] / (1 - b1**td)).tolist(), p)
                bc2 = _per_client(torch.sqrt(1 - b2**td).tolist(), p)
                p.sub_(ss * m[n] / ((v[n].sqrt() / bc2).add_(self.eps)))


def _per_client(values: list[float], p: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=p.dtype).view(-1, *([1] * (p.dim() - 1)))


def train_stacked(
    task: LocalTrainer,
    params: Params,
    received: Params,
    plans: list[list[np.ndarray]],
    lr: float | dict[str, float],
    optimizer: str = "adam",
    penalty: Penalty | None = None,
    max_rows: int = 65536,
    min_rows: int = 0,
) -> tuple[Params, torch.Tensor]:
    """Run every client's local steps; return new params and mean data loss ``(C,)``.

    Parameters
    ----------
    task
        A task whose ``loss(params, rows, mask)`` for one client ``vmap``s
        (no local-phase state: the stacked engine runs CTR tasks).
    params
        Trainable tensors ``(C, ...)``; updated in place and returned.
    received
        What each client received this round ``(C, ...)`` (for ``penalty``).
    lr
        One learning rate, or one per parameter name.
    plans
        ``plans[c]`` = client c's mini-batches (row ids), in order.
    penalty
        Optional client-side regulariser ``penalty(params, received)`` added to the
        loss (e.g. FedProx's proximal term); not part of the reported loss.
    max_rows, min_rows
        How the active clients of a step are bucketed into passes
        (:func:`~fedrec.fl.clients.buckets_by_length`).
    """

    def objective(
        p: Params, r: Params, rows: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        data_loss = task.loss(p, rows, mask)
        extra = penalty(p, r) if penalty is not None else 0.0
        return data_loss + extra, data_loss

    objectives = vmap(objective)  # (C,) objectives and data losses
    C = len(plans)
    opt = StackedAdam(params, lr, optimizer)
    loss_sum = torch.zeros(C, dtype=torch.float64)
    n_rows = torch.zeros(C, dtype=torch.float64)
    for k in range(max((len(p) for p in plans), default=0)):
        active_ids = np.array([c for c in range(C) if len(plans[c]) > k])
        segs = [plans[c][k] for c in active_ids]
        full = len(active_ids) == C  # every row of grads is written below
        grads = {
            n: (torch.empty_like if full else torch.zeros_like)(p)
            for n, p in params.items()
        }
        for b in buckets_by_length(
            np.array([len(s) for s in segs]), max_rows, min_rows
        ):
            cidx = torch.as_tensor(active_ids[b])
            rows, mask = pad_segments([segs[i] for i in b])
            sub = {n: p[cidx].requires_grad_() for n, p in params.items()}
            rec = {n: r[cidx] for n, r in received.items()}
            obj, data_loss = objectives(sub, rec, rows, mask)
            # client c's objective depends on row c alone: the sum's gradient
            # holds each client's own gradient in its row
            g = torch.autograd.grad(
                obj.sum(), list(sub.values()), allow_unused=True, materialize_grads=True
            )
            for n, gn in zip(sub, g, strict=True):
                grads[n][cidx] = gn
            count = mask.sum(1).double()
            loss_sum[cidx] += data_loss.detach().double() * count
            n_rows[cidx] += count
        active = torch.zeros(C, dtype=torch.bool)
        active[torch.as_tensor(active_ids)] = True
        opt.step(params, grads, active)
    mean_loss = torch.where(n_rows > 0, loss_sum / n_rows.clamp(min=1), math.nan)
    return params, mean_loss


@torch.no_grad()
def predict_stacked(
    scorer: RowScorer,
    params: Params,
    segments: list[np.ndarray],
    max_rows: int = 65536,
    min_rows: int = 0,
) -> list[torch.Tensor]:
    """Scores of each client's rows under its own params ``(C, ...)``.

    With ``max_rows``/``min_rows`` bound (``functools.partial``), a ``PredictRows``.
    """
    fn = vmap(scorer.predict)
    out: list[torch.Tensor] = [torch.empty(0)] * len(segments)
    for b in buckets_by_length(
        np.array([len(s) for s in segments]), max_rows, min_rows
    ):
        cidx = torch.as_tensor(b)
        rows, mask = pad_segments([segments[i] for i in b])
        scores = fn({n: p[cidx] for n, p in params.items()}, rows)
        for j, i in enumerate(b):
            out[i] = scores[j, : len(segments[i])]
    return out
