"""The per-client reference loop: plain, slow and obviously right.

One client at a time, a fresh ``torch.optim.Adam`` (or SGD), one mini-batch per
step, no padding, no masks, no vmap. It exists to check the stacked engine
(:mod:`fedrec.fl.stacked`) and as the baseline of ``bench/engine.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedrec.fl.protocols import LocalTrainer, Params, Penalty, RowScorer


def train_loop(
    task: LocalTrainer,
    params: Params,
    received: Params,
    plans: list[list[np.ndarray]],
    lr: float | dict[str, float],
    optimizer: str = "adam",
    penalty: Penalty | None = None,
    clients: list[int] | None = None,
) -> tuple[Params, torch.Tensor]:
    """Same contract as :func:`fedrec.fl.stacked.train_stacked`, client by client.

    ``clients`` (ids) lets a task that depends on who the client is (e.g. its
    own split depth) be told before each client's local phase (``set_client``).
    A client with batches starts its phase with ``task.begin_local``, whose
    state every step's ``task.loss`` gets.
    """
    C = len(plans)
    out = {n: p.clone() for n, p in params.items()}
    losses = torch.full((C,), math.nan, dtype=torch.float64)
    for c in range(C):
        p = {n: t[c].clone().requires_grad_(True) for n, t in params.items()}
        r = {n: t[c] for n, t in received.items()}
        opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        lrs = {n: lr[n] if isinstance(lr, dict) else lr for n in p}
        opt = opt_cls([{"params": [t], "lr": lrs[n]} for n, t in p.items()])
        total, count = 0.0, 0
        if clients is not None:
            task.set_client(clients[c])
        state = task.begin_local(p) if plans[c] else None
        for batch in plans[c]:
            rows = torch.as_tensor(batch)
            mask = torch.ones(len(batch))
            opt.zero_grad()
            data_loss = task.loss(p, rows, mask, state)
            obj = data_loss + (penalty(p, r) if penalty is not None else 0.0)
            obj.backward()
            opt.step()
            total += float(data_loss.detach()) * len(batch)
            count += len(batch)
        for n in out:
            out[n][c] = p[n].detach()
        if count:
            losses[c] = total / count
    return out, losses


@torch.no_grad()
def predict_loop(
    scorer: RowScorer, params: Params, segments: list[np.ndarray]
) -> list[torch.Tensor]:
    """Scores of each client's rows, client by client (a ``PredictRows``)."""
    return [
        scorer.predict({n: t[c] for n, t in params.items()}, torch.as_tensor(s))
        for c, s in enumerate(segments)
    ]
