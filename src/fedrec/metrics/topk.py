"""Per-user top-K metrics: full ranking and the sampled 1+99 (``uni99``) protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike


def _stable_topk(s: torch.Tensor, k: int) -> torch.Tensor:
    """Return the ``k`` top indices per row, ties broken by the lower index."""
    t = torch.topk(s, k, dim=1).values[:, -1:]  # k-th largest value per row
    above = s > t  # at most k-1 per row
    tied = s == t
    need = k - above.sum(dim=1, keepdim=True)
    take = above | (tied & (tied.cumsum(dim=1) <= need))  # exactly k per row
    idx = take.nonzero()[:, 1].view(-1, k)  # ascending item index per row
    order = torch.sort(s.gather(1, idx), dim=1, descending=True, stable=True)
    return idx.gather(1, order.indices)


def topk_metrics(
    scores: np.ndarray | torch.Tensor,
    targets: Sequence[ArrayLike],
    ks: Sequence[int] = (5, 10, 20),
    history: Sequence[ArrayLike] | None = None,
    chunk_size: int = 1024,
) -> dict[str, np.ndarray]:
    r"""Full-ranking top-K metrics, one value per user.

    For user :math:`u` with ground-truth set :math:`G_u`, let
    :math:`h_i = \mathbb{1}[\text{item at rank } i \in G_u]` for the ranks
    :math:`i = 1, \dots, K` (1-based) of the ranked list. Then

    .. math::
        \mathrm{Recall@K} = \frac{\sum_{i \le K} h_i}{|G_u|}, \qquad
        \mathrm{Precision@K} = \frac{\sum_{i \le K} h_i}{K}, \qquad
        \mathrm{Hit@K} = \mathbb{1}\Big[\sum_{i \le K} h_i > 0\Big],

        \mathrm{NDCG@K} = \frac{\sum_{i \le K} h_i / \log_2(i+1)}
        {\sum_{i=1}^{\min(|G_u|, K)} 1 / \log_2(i+1)}, \qquad
        \mathrm{MRR@K} = \frac{1}{\min\{i \le K : h_i = 1\}}
        \ (0 \text{ if no hit}).

    Ranking: items are ordered by descending score; ties are broken by the
    lower item index first (equivalent to a stable argsort of ``-score``).
    Scores must not contain NaN.

    History masking: the items in ``history[u]`` get score :math:`-\infty`
    before ranking and can never count as hits. A history item that is also a
    target is still masked: it stays in :math:`G_u` (it counts in the Recall
    and IDCG denominators) but cannot be hit.

    Users with an empty ground truth get ``nan`` for every metric; callers
    should skip them (e.g. with :func:`fedrec.metrics.mean_ignore_nan`).

    Parameters
    ----------
    scores : ndarray or Tensor of shape (U, I)
        Score of every item for every user (tensors stay on their device).
    targets : sequence of array-like of int, length U
        Ground-truth item ids of each user (duplicates ignored).
    ks : sequence of int, default (5, 10, 20)
        Cut-offs; ``K > I`` is allowed (Precision still divides by ``K``).
    history : sequence of array-like of int, length U, optional
        Item ids to exclude from each user's ranking (e.g. training items).
    chunk_size : int, default 1024
        Users ranked at once; memory is about ``chunk_size * I`` scores.

    Returns
    -------
    dict of str to ndarray
        Keys ``recall@K``, ``ndcg@K``, ``precision@K``, ``mrr@K``, ``hit@K`` for
        each ``K`` in ``ks``; each value is a float64 array of shape (U,).
    """
    s_all = torch.as_tensor(scores).detach()
    if s_all.dim() != 2:
        raise ValueError(f"scores must be 2-D [U, I], got shape {tuple(s_all.shape)}")
    n_users, n_items = s_all.shape
    if len(targets) != n_users or (history is not None and len(history) != n_users):
        raise ValueError("targets (and history) must have one entry per user")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    max_k = max(ks)
    k_eff = min(max_k, n_items)
    hits = np.zeros((n_users, max_k), dtype=np.float64)
    n_gt = np.zeros(n_users, dtype=np.float64)
    dev = s_all.device
    for a in range(0, n_users, chunk_size):
        b = min(a + chunk_size, n_users)
        s = s_all[a:b].clone()
        if not s.is_floating_point():
            s = s.double()
        gt = _mask(targets[a:b], b - a, n_items, dev)
        n_gt[a:b] = gt.sum(dim=1).cpu().numpy()
        if history is not None:
            seen = _mask(history[a:b], b - a, n_items, dev)
            s[seen] = -torch.inf
            gt &= ~seen
        if k_eff > 0:
            top = _stable_topk(s, k_eff)
            hits[a:b, :k_eff] = gt.gather(1, top).cpu().numpy()
    disc = 1.0 / np.log2(np.arange(2, max_k + 2))
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * disc, axis=1)
    cum_idcg = np.r_[0.0, np.cumsum(disc)]
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, max_k + 1)
    empty = n_gt == 0
    safe_gt = np.where(empty, 1.0, n_gt)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        h = cum_hits[:, k - 1]
        idcg = cum_idcg[np.minimum(safe_gt, k).astype(np.int64)]
        vals = {
            "recall": h / safe_gt,
            "ndcg": cum_dcg[:, k - 1] / idcg,
            "precision": h / k,
            "mrr": np.where(first <= k, 1.0 / first, 0.0),
            "hit": (h > 0).astype(np.float64),
        }
        for name, v in vals.items():
            out[f"{name}@{k}"] = np.where(empty, np.nan, v)
    return out


def _mask(
    ids: Sequence[ArrayLike], rows: int, n_items: int, dev: torch.device
) -> torch.Tensor:
    """Boolean ``[rows, n_items]`` mask with ``mask[r, ids[r]] = True``."""
    arrs = [np.asarray(x, dtype=np.int64).reshape(-1) for x in ids]
    cols = np.concatenate(arrs) if arrs else np.zeros(0, dtype=np.int64)
    r = np.repeat(np.arange(rows), [a.size for a in arrs])
    m = torch.zeros((rows, n_items), dtype=torch.bool, device=dev)
    m[torch.as_tensor(r, device=dev), torch.as_tensor(cols, device=dev)] = True
    return m


def sampled_topk_metrics(
    pos_scores: np.ndarray | torch.Tensor,
    neg_scores: np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, np.ndarray]:
    r"""Sampled-ranking metrics (``uni99``: the positive plus 99 sampled negatives).

    Follows RecBole's ``uni99`` evaluation mode: each user's held-out positive
    is ranked against its sampled negatives only. The rank of the positive is
    pessimistic, i.e. ties count against the positive:

    .. math::
        r_u = 1 + \big|\{ j : s^{-}_{u,j} \ge s^{+}_u \}\big|

        \mathrm{Hit@K} = \mathbb{1}[r_u \le K], \qquad
        \mathrm{NDCG@K} = \frac{\mathbb{1}[r_u \le K]}{\log_2(r_u + 1)}, \qquad
        \mathrm{MRR@K} = \frac{\mathbb{1}[r_u \le K]}{r_u}.

    (With a single relevant item, IDCG = 1 and Recall@K = Hit@K.)

    Parameters
    ----------
    pos_scores : ndarray or Tensor of shape (U,)
        Score of each user's positive item.
    neg_scores : ndarray or Tensor of shape (U, N)
        Scores of the ``N`` sampled negatives (``N = 99`` for ``uni99``).
    ks : sequence of int, default (1, 5, 10)
        Cut-offs.

    Returns
    -------
    dict of str to ndarray
        Keys ``hit@K``, ``ndcg@K``, ``mrr@K``; float64 arrays of shape (U,).
    """
    pos = torch.as_tensor(pos_scores).detach().cpu().numpy().reshape(-1)
    neg = torch.as_tensor(neg_scores).detach().cpu().numpy()
    if neg.ndim != 2 or neg.shape[0] != pos.size:
        raise ValueError("neg_scores must have shape [U, N] with U = len(pos_scores)")
    rank = 1 + (neg >= pos[:, None]).sum(axis=1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        inside = rank <= k
        out[f"hit@{k}"] = inside.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(inside, 1.0 / np.log2(rank + 1.0), 0.0)
        out[f"mrr@{k}"] = np.where(inside, 1.0 / rank, 0.0)
    return out
