"""Users → clients for FELLRec (fellrec.md §2.3).

``kmeans``: a matrix-factorisation model (BPR) is trained on the train split
only; KMeans (seeded) over its user embeddings gives M clients of users with
similar taste. ``random``: a seeded uniform partition. Both are pure functions of
(data, split, M, seed).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans

from fedrec.data.dataset import InteractionData


def bpr_user_embeddings(
    data: InteractionData,
    train_rows: np.ndarray,
    dim: int = 32,
    epochs: int = 20,
    lr: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """``(U, dim)`` user factors of a BPR-MF model trained on ``train_rows``."""
    g = torch.Generator().manual_seed(seed)
    df = data.interactions.iloc[train_rows]
    users = torch.as_tensor(df["user"].to_numpy().copy())
    items = torch.as_tensor(df["item"].to_numpy().copy())
    P = torch.nn.Parameter(0.1 * torch.randn(data.n_users, dim, generator=g))
    Q = torch.nn.Parameter(0.1 * torch.randn(data.n_items, dim, generator=g))
    opt = torch.optim.Adam([P, Q], lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(users), generator=g)
        for b in perm.split(1024):
            u, i = users[b], items[b]
            j = torch.randint(0, data.n_items, (len(b),), generator=g)
            x = (P[u] * (Q[i] - Q[j])).sum(1)
            loss = -torch.nn.functional.logsigmoid(x).mean() + 1e-4 * (
                P[u].square().sum() + Q[i].square().sum()
            ) / len(b)
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
) -> np.ndarray:
    """``int64[U]`` client of each user (users without train rows go by taste too)."""
    if style == "random":
        return np.random.default_rng(seed).integers(0, n_clients, data.n_users)
    emb = bpr_user_embeddings(data, train_rows, seed=seed)
    km = KMeans(n_clusters=n_clients, random_state=seed, n_init=10)
    return km.fit_predict(emb).astype(np.int64)
