"""Users → clients for FELLRec (fellrec.md §2.3).

``kmeans``: a matrix-factorisation model (BPR) is trained on the train split
only; KMeans (seeded) over its user embeddings gives M clients of users with
similar taste. ``random``: a seeded uniform partition. Both are pure functions of
(data, split, M, seed); the KMeans result is cached under a hash of them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from fedrec.atomic import atomic_write
from fedrec.data.dataset import InteractionData


def bpr_user_embeddings(
    data: InteractionData,
    train_rows: np.ndarray,
    dim: int = 32,
    epochs: int = 10,
    lr: float = 0.01,
    seed: int = 0,
    batch: int = 4096,
) -> np.ndarray:
    """``(U, dim)`` user factors of BPR-MF trained on ``train_rows``.

    ``L = −mean log σ(p_u·(q_i − q_j)) + 1e-4·(||p_u||² + ||q_i||²)/B``, one
    uniformly sampled negative j per positive (u, i).
    """
    g = torch.Generator().manual_seed(seed)
    df = data.interactions.iloc[train_rows]
    users = torch.as_tensor(df["user"].to_numpy().copy())
    items = torch.as_tensor(df["item"].to_numpy().copy())
    P = torch.nn.Parameter(0.1 * torch.randn(data.n_users, dim, generator=g))
    Q = torch.nn.Parameter(0.1 * torch.randn(data.n_items, dim, generator=g))
    opt = torch.optim.Adam([P, Q], lr=lr)
    for _ in range(epochs):
        for b in torch.randperm(len(users), generator=g).split(batch):
            u, i = users[b], items[b]
            j = torch.randint(0, data.n_items, (len(b),), generator=g)
            pu, qi = P[u], Q[i]
            reg = 1e-4 * (pu.square().sum() + qi.square().sum()) / len(b)
            loss = -F.logsigmoid((pu * (qi - Q[j])).sum(1)).mean() + reg
            opt.zero_grad()
            loss.backward()
            opt.step()
    return P.detach().numpy()


def partition_users(
    data: InteractionData,
    train_rows: np.ndarray,
    n_clients: int = 5,
    style: str = "kmeans",
    seed: int = 0,
    cache_dir: str | None = ".cache/partition",
) -> np.ndarray:
    """``int64[U]``: the client of each user."""
    if style == "random":
        return np.random.default_rng(seed).integers(0, n_clients, data.n_users)
    df = data.interactions
    h = hashlib.sha256()
    for a in (df["user"].to_numpy(), df["item"].to_numpy(), np.sort(train_rows)):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(f"{n_clients}-{seed}-{data.n_users}-{data.n_items}".encode())
    path = Path(cache_dir) / f"kmeans-{h.hexdigest()[:16]}.npy" if cache_dir else None
    if path is not None and path.exists():
        return np.load(path)
    emb = bpr_user_embeddings(data, train_rows, seed=seed)
    out = KMeans(n_clusters=n_clients, random_state=seed, n_init=10).fit_predict(emb)
    out = out.astype(np.int64)
    if path is not None:
        atomic_write(path, lambda p: np.save(p, out))
    return out
