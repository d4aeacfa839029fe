"""Which rows each client holds, and each client's mini-batches in a round.

Rows of every split are stored client-major (CSR): ``ptr[s][c]:ptr[s][c+1]``
indexes ``rows[s]``, so a client's rows are one slice. A client's batches in
round t depend only on ``(seed, t, client id)``, never on which other clients
were sampled or on the engine, so the stacked engine, the per-client loop and
a Flower client draw identical batches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.dataset import InteractionData
from fedrec.data.splits import Split
from fedrec.errors import DataError

SPLITS = ("train", "val", "test")
EVERYONE = "all"  # the group attribute whose one value every user has


class ClientIndex:
    """Client-major ids per split: ``ptr[s][c]:ptr[s][c+1]`` slices ``rows[s]``."""

    ptr: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]

    def client_rows(self, split: str, cid: int) -> np.ndarray:
        """Ids (rows or samples) of client ``cid`` in ``split``."""
        return self.rows[split][self.ptr[split][cid] : self.ptr[split][cid + 1]]

    def sizes(self, split: str) -> np.ndarray:
        """``int64[N]`` ids per client in ``split``."""
        return np.diff(self.ptr[split])


@dataclass
class FedData(ClientIndex):
    """A dataset split into clients.

    Attributes
    ----------
    data, split
        The dataset and its row split.
    client_of_user
        ``int64[U]``: the client of each user code (-1: the user is no client).
    n_clients
        N.
    users, items, labels
        ``(R,)`` tensors over all interaction rows.
    ptr, rows
        Per split: ``ptr[s]`` is ``int64[N+1]``, ``rows[s]`` the row ids of client
        0, then client 1, ... .
    """

    data: InteractionData
    split: Split
    client_of_user: np.ndarray
    n_clients: int
    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    ptr: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]

    @classmethod
    def build(
        cls,
        data: InteractionData,
        split: Split,
        clients: str = "user",
        users: np.ndarray | None = None,
    ) -> FedData:
        """Assign clients: one per user (``"user"``) or one for all (``"single"``).

        ``users`` restricts the clients to those user codes (e.g. private users).
        """
        df = data.interactions
        user_col = df["user"].to_numpy()
        members = np.zeros(data.n_users, dtype=bool)
        for s in SPLITS:
            members[user_col[getattr(split, s)]] = True
        if users is not None:
            keep = np.zeros_like(members)
            keep[users] = True
            members &= keep
        client_of_user = np.full(data.n_users, -1, dtype=np.int64)
        if clients == "user":
            client_of_user[members] = np.arange(int(members.sum()))
        elif clients == "single":
            client_of_user[members] = 0
        else:
            raise DataError(f"unknown client assignment {clients!r}")
        n = int(client_of_user.max()) + 1 if members.any() else 0
        ptr, rows = {}, {}
        for s in SPLITS:
            idx = np.asarray(getattr(split, s), dtype=np.int64)
            ptr[s], rows[s] = client_csr(idx, client_of_user[user_col[idx]], n)
        return cls(
            data=data,
            split=split,
            client_of_user=client_of_user,
            n_clients=n,
            users=torch.as_tensor(np.array(user_col), dtype=torch.long),
            items=torch.as_tensor(np.array(df["item"]), dtype=torch.long),
            labels=torch.as_tensor(np.array(df["label"]), dtype=torch.float32),
            ptr=ptr,
            rows=rows,
        )

    def without_training(self, users: np.ndarray) -> FedData:
        """A copy whose ``users`` (``bool[U]``) have no train rows (they never train).

        Their validation and test rows stay with their clients.
        """
        idx = np.asarray(self.split.train, dtype=np.int64)
        user = self.users.numpy()[idx]
        client = np.where(users[user], -1, self.client_of_user[user])
        ptr, rows = client_csr(idx, client, self.n_clients)
        return dataclasses.replace(
            self, ptr={**self.ptr, "train": ptr}, rows={**self.rows, "train": rows}
        )

    def client_users(self) -> list[np.ndarray]:
        """User codes of each client."""
        order = np.argsort(self.client_of_user, kind="stable")
        cl = self.client_of_user[order]
        return np.split(order[cl >= 0], np.cumsum(np.bincount(cl[cl >= 0]))[:-1])

    def attribute_column(self, attr: str) -> np.ndarray:
        """``int64[U]`` value of user attribute ``attr`` for every user code.

        ``attr = "all"`` (:data:`EVERYONE`) is the attribute with one value, 0,
        for every user: a group of everyone.
        """
        if attr == EVERYONE:
            return np.zeros(self.data.n_users, dtype=np.int64)
        names = self.data.user_feature_names
        if attr not in names or self.data.user_features is None:
            raise DataError(f"unknown user attribute {attr!r} (fields: {names})")
        return self.data.user_features[:, names.index(attr)].astype(np.int64)

    def client_attribute(self, attr: str) -> np.ndarray:
        """``int64[N]`` value of user attribute ``attr`` for one-user clients."""
        col = self.attribute_column(attr)
        users = self.client_users()
        if any(len(u) != 1 for u in users):
            raise DataError("group attributes need one user per client")
        return np.array([col[u[0]] for u in users], dtype=np.int64)


def client_csr(
    ids: np.ndarray, client: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr int64[n+1], ids grouped by client)``; ids of client -1 are dropped."""
    ids, client = ids[client >= 0], client[client >= 0]
    order = np.argsort(client, kind="stable")
    return np.concatenate([[0], np.cumsum(np.bincount(client, minlength=n))]), ids[
        order
    ]


def client_batches(
    n_rows: int, batch_size: int, epochs: int, seed: int, rnd: int, cid: int
) -> list[np.ndarray]:
    """Local positions ``0..n_rows-1`` of each mini-batch, epoch after epoch.

    Each epoch is a fresh permutation from ``default_rng([seed, rnd, cid, epoch])``,
    also when one batch holds every row (the order of a batch's rows is that of
    its floating-point sums, so every seed's run is its own).
    """
    out: list[np.ndarray] = []
    for e in range(epochs):
        perm = np.random.default_rng([seed, rnd, cid, e]).permutation(n_rows)
        out.extend(perm[i : i + batch_size] for i in range(0, n_rows, batch_size))
    return out


def pad_segments(segments: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged 1-D int arrays into ``(n, L_max)`` ids and a float mask."""
    lengths = np.array([len(s) for s in segments], dtype=np.int64)
    width = max(int(lengths.max(initial=0)), 1)
    flat = np.concatenate(segments) if segments else np.zeros(0, dtype=np.int64)
    row = np.repeat(np.arange(len(segments)), lengths)
    col = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids = np.zeros((len(segments), width), dtype=np.int64)
    mask = np.zeros((len(segments), width), dtype=np.float32)
    ids[row, col] = flat
    mask[row, col] = 1.0
    return torch.from_numpy(ids), torch.from_numpy(mask)


def buckets_by_length(
    lengths: np.ndarray, max_rows: int, min_rows: int = 0
) -> list[np.ndarray]:
    """Group positions so that padding stays small and each group fits ``max_rows``.

    Positions are sorted by length (longest first); a bucket closes when its
    padded size would pass ``max_rows``, or when a length falls below half its
    longest once the bucket holds ``min_rows`` padded cells or more. Below
    ``min_rows`` cells nothing is split for padding: each bucket is one pass
    (``vmap`` of the model, forward and backward) whose fixed cost, for a
    small model, is that of thousands of rows.
    """
    order = np.argsort(-lengths, kind="stable")
    out: list[np.ndarray] = []
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order):
            out.append(order[start:i])
            break
        top = max(int(lengths[order[start]]), 1)
        full = (i - start + 1) * top > max_rows
        sparse = lengths[order[i]] * 2 < top and (i - start) * top >= min_rows
        if full or sparse:
            out.append(order[start:i])
            start = i
    return out
