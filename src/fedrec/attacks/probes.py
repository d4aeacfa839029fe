"""Honest-but-curious server probes on the client's hidden states h_k (ours).

Threat model (fellrec.md §6, protocol ours): the server sees h_k, the output of
the client's first k blocks, for every training and inference request. Knowing
the public base model, it pushes auxiliary public sequences (other users'
histories) through blocks [0, k) itself and trains probes:

- **A, input inversion**: per position, h_k[t] → the token at t (linear or
  2-layer MLP), scored by token accuracy on the victims' sequences;
- **B, history inference**: mean-pooled h_k → the set of history items
  (multi-label, linear or MLP), scored by Recall@10 against the true history.

Probes are trained with Adam on the public features and evaluated on the
victims' (disjoint users).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedrec.metrics import topk_metrics


def probe(d_in: int, d_out: int, kind: str, hidden: int = 256) -> nn.Module:
    """A linear probe or a 2-layer MLP probe."""
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    epochs: int = 5,
    lr: float = 3e-3,
    batch: int = 1024,
    seed: int = 0,
    min_steps: int = 400,
) -> nn.Module:
    """Adam on (x, y) mini-batches: ``epochs`` passes, at least ``min_steps`` steps."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = -(-len(x) // batch)
    for _ in range(max(epochs, -(-min_steps // per_epoch))):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def token_inversion(
    h_pub: torch.Tensor,
    t_pub: torch.Tensor,
    h_vic: torch.Tensor,
    t_vic: torch.Tensor,
    kind: str,
    seed: int = 0,
) -> float:
    """Attack A: accuracy of recovering each token id from its hidden state.

    ``h_*``: ``(n, d)`` per-token states (padding removed); ``t_*``: ``(n,)`` ids.
    Token ids are re-coded to the public set; a victim token never seen in the
    public data counts as a miss.
    """
    vocab, codes = torch.unique(t_pub, return_inverse=True)
    torch.manual_seed(seed)
    m = fit(
        probe(h_pub.shape[1], len(vocab), kind),
        h_pub,
        codes,
        nn.CrossEntropyLoss(),
        seed=seed,
    )
    with torch.no_grad():
        pred = vocab[m(h_vic).argmax(1)]
    return float((pred == t_vic).double().mean())


def history_inference(
    z_pub: torch.Tensor,
    hist_pub: list[np.ndarray],
    z_vic: torch.Tensor,
    hist_vic: list[np.ndarray],
    n_items: int,
    kind: str,
    seed: int = 0,
) -> float:
    """Attack B: Recall@10 of the victims' history items from mean-pooled h_k."""
    y = torch.zeros(len(hist_pub), n_items)
    for i, h in enumerate(hist_pub):
        y[i, torch.as_tensor(h)] = 1.0
    torch.manual_seed(seed)
    m = fit(
        probe(z_pub.shape[1], n_items, kind),
        z_pub,
        y,
        nn.BCEWithLogitsLoss(),
        epochs=20,
        seed=seed,
    )
    with torch.no_grad():
        scores = m(z_vic)
    rec = topk_metrics(scores, list(hist_vic), ks=(10,))["recall@10"]
    return float(np.nanmean(rec))
