"""The foundation CTR model of FedPA (fedpa.md §2), without adapters.

    e_u = concat_f E^user[x_{u,f} + off_f]        (B, F_u·d)
    e_i = concat_f E^item[x_{i,f} + off_f]        (B, F_i·d)
    h^0 = [e_u ; e_i]                             (B, D_0),  D_0 = (F_u + F_i)·d
    h^{l+1} = ReLU(W_l h^l + b_l)                 (B, D_{l+1})
    logit = wᵀ h^L + b                            (B,)

All fields of one side share one table with per-field offsets, so a lookup is a
single gather. The categorical feature codes of every user and item are buffers
(``user_x``, ``item_x``), so the model is called with user and item codes only.
Parameter names: ``user_emb.weight``, ``item_emb.weight``, ``mlp.{l}.weight``,
``mlp.{l}.bias``, ``head.weight``, ``head.bias``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedrec.data.dataset import InteractionData


def _offset_codes(codes: np.ndarray, cards: list[int]) -> torch.Tensor:
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)
    return torch.as_tensor(codes.astype(np.int64) + offsets[None, :])


class CTRModel(nn.Module):
    """Field embeddings -> MLP -> one logit per (user, item) pair.

    Parameters
    ----------
    user_x, item_x
        ``int64[U, F_u]`` / ``int64[I, F_i]`` categorical codes.
    user_cards, item_cards
        Cardinality of each field (embedding rows).
    dim
        Embedding size d per field.
    layers
        Hidden widths D_1, ..., D_L.
    """

    user_x: torch.Tensor  # buffers: offset codes ``(U, F_u)`` / ``(I, F_i)``
    item_x: torch.Tensor

    def __init__(
        self,
        user_x: np.ndarray,
        item_x: np.ndarray,
        user_cards: list[int],
        item_cards: list[int],
        dim: int = 8,
        layers: list[int] | tuple[int, ...] = (32, 8),
    ) -> None:
        super().__init__()
        self.register_buffer("user_x", _offset_codes(user_x, user_cards))
        self.register_buffer("item_x", _offset_codes(item_x, item_cards))
        self.user_emb = nn.Embedding(sum(user_cards), dim)
        self.item_emb = nn.Embedding(sum(item_cards), dim)
        widths = [(len(user_cards) + len(item_cards)) * dim, *layers]
        #: ``(in, out)`` widths of each hidden layer of :attr:`mlp`
        self.layer_dims = list(zip(widths[:-1], widths[1:], strict=True))
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in self.layer_dims)
        self.head = nn.Linear(widths[-1], 1)

    @classmethod
    def for_data(
        cls,
        data: InteractionData,
        dim: int = 8,
        layers: list[int] | None = None,
        **kwargs: object,
    ) -> CTRModel:
        """Build from a dataset; without feature tables the ids are the only field.

        ``kwargs`` go to the constructor of ``cls`` (a subclass's own options).
        """
        ux = data.user_features
        ix = data.item_features
        if ux is None or ux.shape[1] == 0:
            ux = np.arange(data.n_users)[:, None]
        if ix is None or ix.shape[1] == 0:
            ix = np.arange(data.n_items)[:, None]
        ucards = [int(v) + 1 for v in ux.max(axis=0)]
        icards = [int(v) + 1 for v in ix.max(axis=0)]
        return cls(ux, ix, ucards, icards, dim, layers or [32, 8], **kwargs)

    def embed(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``h^0`` for a batch of (user, item) codes: ``(B,) (B,) -> (B, D_0)``."""
        e_u = self.user_emb(self.user_x[users]).flatten(-2)  # (B, F_u·d)
        e_i = self.item_emb(self.item_x[items]).flatten(-2)  # (B, F_i·d)
        return torch.cat([e_u, e_i], dim=-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for user and item codes ``(B,)``."""
        h = self.embed(users, items)
        for layer in self.mlp:
            h = torch.relu(layer(h))  # (B, D_{l+1})
        return self.head(h).squeeze(-1)
