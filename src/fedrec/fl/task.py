"""What a client computes on its rows: the loss it trains and the scores it predicts.

A task is written for ONE client (no client dimension); the stacked engine
``vmap``s it over clients and the reference loop calls it client by client, so
the model code exists once. Its evaluation is three steps both engines share:
per-row ``client_scores`` (local), their additive ``stats`` (fixed shapes
``stat_shapes()``: what a Flower node sends) and ``metrics_from_stats`` of the
stats summed over nodes. What an engine asks of a task is the protocol
:class:`~fedrec.fl.protocols.Task`; a task imports no engine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedrec.fl.clients import FedData
from fedrec.fl.protocols import Chunks, Params, PredictRows
from fedrec.metrics.reducers import (
    CTR_STAT_SHAPES,
    ctr_metrics_from_stats,
    ctr_stats,
)


class CTRTask:
    """Binary CTR prediction: ``L = mean_n BCE(σ(f(u_n, i_n; θ)), y_n)`` over a batch.

    Parameters
    ----------
    model
        Any module called as ``model(users, items) -> logits``; its parameters
        not passed in ``params`` (frozen ones) are used as they are.
    fed
        The federated dataset whose row ids the batches hold.
    slices
        User slices reported apart: name -> ``bool[U]`` over user codes
        (``new``, ``light``, ``heavy``; see :func:`fedrec.build.user_slices`).
        Users of the slice ``new`` never train and are left out of the
        headline metrics, which cover the seen users.
    """

    def __init__(
        self,
        model: nn.Module,
        fed: FedData,
        slices: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.fed = fed
        self.slices = dict(slices or {})

    def set_client(self, cid: int) -> None:
        """Every client computes alike: nothing to switch."""

    def begin_local(self, params: Params) -> None:
        """Nothing to prepare for a local phase."""
        return None

    def logits(self, params: Params, rows: torch.Tensor) -> torch.Tensor:
        """Logits ``(b,)`` of rows ``(b,)`` under ``params``."""
        users, items = self.fed.users[rows], self.fed.items[rows]
        return functional_call(self.model, params, (users, items))

    def loss(
        self,
        params: Params,
        rows: torch.Tensor,
        mask: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked mean BCE over rows ``(b,)`` with ``mask`` ``(b,)`` in {0, 1}.

        ``state`` is unused (:meth:`begin_local` prepares nothing).
        """
        logit = self.logits(params, rows)
        y = self.fed.labels[rows].to(logit.dtype)
        bce = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
        return (bce * mask).sum() / mask.sum().clamp(min=1)

    def predict(self, params: Params, rows: torch.Tensor) -> torch.Tensor:
        """Click probabilities ``(b,)``."""
        return torch.sigmoid(self.logits(params, rows))

    @torch.no_grad()
    def client_scores(
        self, split: str, chunks: Chunks, predict: PredictRows
    ) -> dict[str, np.ndarray]:
        """``probs``, ``labels``, ``users`` ``(n,)`` of the clients' rows in ``split``.

        ``chunks`` yields ``(client ids (C,), params (C, ...))``; ``predict``
        is the engine's batched prediction (the stacked engine predicts a chunk
        at once, the loop engine client by client). On Flower each node calls
        this for its own clients and sends only their :meth:`stats`: the rows
        stay on the node.
        """
        probs, rows = [torch.zeros(0, dtype=torch.float64)], [np.zeros(0, np.int64)]
        for cids, params in chunks:
            segs = [self.fed.client_rows(split, c) for c in cids.tolist()]
            probs.extend(s.double() for s in predict(self, params, segs))
            rows.extend(segs)
        r = torch.as_tensor(np.concatenate(rows))
        users = self.fed.users[r].numpy()
        out = {
            "probs": torch.cat(probs).numpy(),
            "labels": self.fed.labels[r].double().numpy(),
            "users": users,
        }
        return out | {name: m[users] for name, m in self.slices.items()}

    def stat_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of :meth:`stats` (fixed: no row or user count in them)."""
        out = dict(CTR_STAT_SHAPES)
        for name in self.slices:
            out |= {f"{name}.{k}": v for k, v in CTR_STAT_SHAPES.items()}
        return out

    def stats(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Additive statistics of :meth:`client_scores`' rows (what a node sends).

        ``hist`` (2, 2**16), ``logloss`` (2,), ``confusion`` (2, 2), ``gauc``
        (2,) of the seen users' rows (all but slice ``new``), and the same as
        ``<slice>.<name>`` of each slice's rows; see
        :mod:`fedrec.metrics.reducers`. Statistics of disjoint rows pool by a
        sum (a user's rows never span two nodes).
        """

        def of(keep: np.ndarray | slice) -> dict[str, np.ndarray]:
            return ctr_stats(
                scores["labels"][keep], scores["probs"][keep], scores["users"][keep]
            )

        seen = ~scores["new"] if "new" in self.slices else np.s_[:]
        out = of(seen)
        for name in self.slices:
            out |= {f"{name}.{k}": v for k, v in of(scores[name]).items()}
        return out

    def metrics_from_stats(self, stats: dict[str, np.ndarray]) -> dict[str, float]:
        """``auc``, ``gauc``, ``logloss``, ``precision``, ``recall``, ``f1``.

        Of :meth:`stats` summed over nodes, for the seen users; ``auc_<slice>``
        and ``gauc_<slice>`` for each slice with rows. ``{}`` when no row was
        evaluated.
        """
        out = ctr_metrics_from_stats({k: v for k, v in stats.items() if "." not in k})
        for name in self.slices:
            part = {
                k.split(".", 1)[1]: v
                for k, v in stats.items()
                if k.startswith(f"{name}.")
            }
            m = ctr_metrics_from_stats(part)
            out |= {f"{k}_{name}": m[k] for k in ("auc", "gauc") if k in m}
        return out
