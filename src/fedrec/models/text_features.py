"""A UniSRec-style sequential recommender over frozen text features of the items.

    t_i = normalise(mean-pool(text encoder("title (year) genres")))   (I, D), frozen
    g_i = W t_i + b                                                    (I, d), learnt
    x_k = g_{h_k} + p_k        history h_1..h_L, oldest → newest, left-padded to L
    e   = LayerNorm(Block(x))_L                                        (b, d)
    score(s, i) = e_s · g_i                                            over all items

``Block`` is one pre-norm transformer layer (``layers`` of them, ``heads``
heads, feed-forward width 2d, dropout 0); padded positions are masked out of
the attention and the output is read at the newest position, always a real
item. Both towers share ``W``: the item table is one matrix product, so it is
recomputed (and trained through) at every step — RecFormer's stage 2 (item
table frozen, sequence side trains) exists to save re-encoding items with a
transformer, which this backbone never does. What trains is the whole module
but the text features (``W``, ``b``, ``p``, the blocks, the norm: 58,880
parameters at d = 64, D = 384, L = 10, one layer), so every method treats it as
it treats LoRA factors: FedAvg averages it, FELLRec mixes it per client.

The text features come from any text encoder :func:`~fedrec.models.text_encoder.
load_encoder` loads (all-MiniLM-L6-v2 by default), computed once per process.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedrec.models.text_encoder import TextSeqRecommender, load_encoder


class FeatureSeqRecommender(nn.Module):
    """Frozen item text features → a learnt projection and a small sequence tower.

    Parameters
    ----------
    features
        ``(I, D)`` text features of every item (kept as a buffer, never trained).
    dim, layers, heads
        Width ``d``, number of transformer blocks and attention heads.
    window
        ``L``, the longest history read (the newest ``L`` items).
    """

    split_k: int = 0  # never split: config validation refuses backbone.split_k

    def __init__(
        self,
        features: torch.Tensor,
        dim: int = 64,
        layers: int = 1,
        heads: int = 2,
        window: int = 10,
    ) -> None:
        super().__init__()
        self.features: torch.Tensor
        self.register_buffer("features", features.float())  # (I, D)
        self.window = window
        self.proj = nn.Linear(features.shape[1], dim)
        self.pos = nn.Parameter(torch.randn(window, dim) * 0.02)  # (L, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def history_tensor(self, histories: list[np.ndarray]) -> torch.Tensor:
        """``(b, L)`` item ids, the newest ``L`` of each history, −1 left-padded."""
        out = torch.full((len(histories), self.window), -1, dtype=torch.long)
        for k, h in enumerate(histories):
            h = np.asarray(h[-self.window :], dtype=np.int64)
            if len(h):
                out[k, self.window - len(h) :] = torch.as_tensor(h)
        return out

    def forward(self, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence embeddings ``e`` ``(b, d)`` and the item table ``g`` ``(I, d)``.

        ``hist`` ``(b, L)`` holds item ids, −1 for padding; its last column must
        be a real item.
        """
        dev = self.features.device
        hist = hist.to(dev)
        g = self.proj(self.features)  # (I, d)
        pad = hist < 0  # (b, L)
        x = g[hist.clamp(min=0)] + self.pos  # (b, L, d)
        for block in self.blocks:
            x = block(x, src_key_padding_mask=pad)
        return self.norm(x[:, -1]), g

    @staticmethod
    def logits(e: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``(b, I)`` scores ``e · gᵀ``."""
        return e @ table.T


@torch.no_grad()
def item_text_features(
    path: str, texts: list[str], max_tokens: int = 32
) -> torch.Tensor:
    """``(I, D)`` frozen text features: each text embedded by the encoder at ``path``.

    The mean-pooled, L2-normalised last hidden state of ``texts`` (at most
    ``max_tokens`` tokens each) under the encoder as loaded (no adapter): what
    :class:`~fedrec.models.text_encoder.TextSeqRecommender` computes for an item.
    """
    encoder, tok = load_encoder(path, texts)
    return TextSeqRecommender(
        encoder, tok, texts, item_max_tokens=max_tokens
    ).encode_items({})
