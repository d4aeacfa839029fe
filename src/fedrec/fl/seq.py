"""Sequential recommendation as a federated task (FELLRec, discriminative).

:class:`SeqFedData` holds each client's samples (a client is a group of users,
fellrec.md §2.3); :class:`SeqRecTask` is what a client computes: the softmax
cross-entropy of ``cos(e_seq, e_item)/τ`` over every item the sample has not
seen, with the true next item (RecFormer stage 1: the item table is re-encoded
with the client's current model at the start of its local phase and frozen
within it), and full-ranking top-K metrics per client with its seen items
masked, reduced to per-group sums (:meth:`SeqRecTask.stats`) before they leave
a node. Training masks what evaluation masks.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedrec.data.dataset import InteractionData
from fedrec.data.sequences import Samples
from fedrec.data.splits import Split
from fedrec.errors import DataError
from fedrec.fl.clients import SPLITS, ClientIndex, client_csr
from fedrec.fl.protocols import Chunks, Params, PredictRows
from fedrec.metrics import client_stats, topk_metrics
from fedrec.metrics.reducers import group_sums
from fedrec.models.causal_lm import GenerativeRecommender, prompt, swapped_in
from fedrec.models.text_encoder import TextSeqRecommender
from fedrec.models.text_features import FeatureSeqRecommender

KS = (5, 10, 20)


@dataclass
class SeqFedData(ClientIndex):
    """Samples of every split grouped by client (same interface as ``FedData``).

    ``group_of_user`` is the user partition of the data config (the FELLRec
    clients); metrics per client are reported over these groups even when a
    method trains on another layout (centralised: one client holds everyone),
    so that every method's per-client numbers compare.
    """

    data: InteractionData
    split: Split
    samples: dict[str, Samples]
    client_of_user: np.ndarray
    n_clients: int
    ptr: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    group_of_user: np.ndarray

    @classmethod
    def build(
        cls,
        data: InteractionData,
        split: Split,
        samples: dict[str, Samples],
        client_of_user: np.ndarray,
        group_of_user: np.ndarray | None = None,
    ) -> SeqFedData:
        """Group sample ids by the client of their user."""
        n = int(client_of_user.max()) + 1
        ptr, rows = {}, {}
        for s in SPLITS:
            ids = np.arange(len(samples[s]), dtype=np.int64)
            ptr[s], rows[s] = client_csr(ids, client_of_user[samples[s].user], n)
        groups = client_of_user if group_of_user is None else group_of_user
        return cls(data, split, samples, client_of_user, n, ptr, rows, groups)

    @property
    def n_groups(self) -> int:
        """Number of user groups the metrics are reported over."""
        return int(self.group_of_user.max()) + 1

    def client_attribute(self, attr: str) -> np.ndarray:
        """Group attributes need one-user clients; these clients are user groups."""
        raise DataError(f"group attribute {attr!r}: FELLRec clients are user groups")

    def attribute_column(self, attr: str) -> np.ndarray:
        """Group attributes are not read here (see :meth:`client_attribute`)."""
        raise DataError(f"group attribute {attr!r}: FELLRec clients are user groups")


def _detached(params: Params) -> Params:
    return {n: p.detach() for n, p in params.items()}


def concat_scores(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of :meth:`SeqRecTask.row_metrics` joined (none: empty ids)."""
    out = {"user": np.zeros(0, np.int64), "client": np.zeros(0, np.int64)}
    if parts:
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return out


class SeqRecTask:
    """Next-item prediction over a :class:`TextSeqRecommender`.

    Parameters
    ----------
    model
        The one recommender of the process; clients' tensors are swapped in.
    fed
        Clients' samples.
    max_eval_samples
        Evaluate at most this many samples per client and split (a seeded
        sample; 0 = all), to bound CPU time.
    seed
        Seed of that sample.
    """

    def __init__(
        self,
        model: TextSeqRecommender,
        fed: SeqFedData,
        max_eval_samples: int = 0,
        seed: int = 0,
        batch: int = 32,
    ) -> None:
        self.model, self.fed = model, fed
        self.max_eval_samples, self.seed, self.batch = max_eval_samples, seed, batch
        self._tables: dict[bytes, torch.Tensor] = {}
        self.split_ks: list[int] = []  # per-client split depth (flexible storage)
        self.device = torch.device("cpu")  # where the model computes

    def _on(self, params: Params) -> Params:
        """``params`` on the model's device (differentiable: gradients come back)."""
        return {n: t.to(self.device) for n, t in params.items()}

    @torch.no_grad()
    def item_table(self, params: Params) -> torch.Tensor:
        """``(I, d)`` item embeddings under ``params``.

        Encoding every item is the costliest step on a CPU, and the same client
        state is encoded for validation, test and the next round's local phase,
        so the tables of the last few states are kept, keyed by a hash of the
        tensors' bytes.
        """
        h = hashlib.sha1()
        for n in sorted(params):
            h.update(params[n].detach().contiguous().numpy().tobytes())
        key = h.digest()
        if key not in self._tables:
            if len(self._tables) >= 16:
                self._tables.pop(next(iter(self._tables)))
            self._tables[key] = self.model.encode_items(self._on(params))
        return self._tables[key]

    def begin_local(self, params: Params) -> torch.Tensor | None:
        """Stage 1: the item table is re-encoded once per local phase."""
        return self.item_table(_detached(params))

    def loss(
        self,
        params: Params,
        rows: torch.Tensor,
        mask: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean history-masked cross-entropy of ``cos/τ`` logits, ``(b,)`` samples.

        See :meth:`_item_ce`; ρ is the client's ``log_scale`` when it trains.
        """
        ids, am = self.inputs(rows)
        e = functional_call(self.model, self._on(params), (ids, am))  # (b, d)
        table = state if state is not None else self.item_table(_detached(params))
        rho = params.get("log_scale", self.model.log_scale)
        return self._item_ce(e, rows, mask, table, rho)

    def _item_ce(
        self,
        e: torch.Tensor,
        rows: torch.Tensor,
        mask: torch.Tensor,
        table: torch.Tensor,
        log_scale: torch.Tensor,
    ) -> torch.Tensor:
        r"""Masked mean cross-entropy of the training rows ``rows`` ``(b,)``.

        With :math:`z_{ri} = \cos(e_r, t_i)\, e^{\rho} / \tau_0` (``e`` ``(b, d)``,
        ``table`` ``(I, d)``), :math:`y_r` row r's target and :math:`H_r` its
        seen items (``samples["train"].seen``: every earlier train item),

        .. math::
            \ell_r = -z_{r y_r} + \log \sum_{i \notin H_r \setminus \{y_r\}}
            e^{z_{ri}}, \qquad
            \mathrm{loss} = \sum_r m_r \ell_r / \sum_r m_r

        — the softmax runs over the items evaluation ranks (it masks the
        history, :func:`~fedrec.metrics.topk_metrics`), the target always kept.
        """
        return self.masked_ce(self.model.logits(e, table, log_scale), rows, mask)

    def masked_ce(
        self, logits: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Masked mean cross-entropy of training rows ``rows`` from ``(b, I)`` logits.

        Each row's seen items but its target get −∞ (:meth:`_item_ce`).
        """
        s = self.fed.samples["train"]
        rows_l = rows.tolist()
        target = torch.as_tensor([int(s.targets[r][0]) for r in rows_l])
        at = [(k, i) for k, r in enumerate(rows_l) for i in s.seen[r].tolist()]
        if at:
            k, i = torch.as_tensor(at).T
            hide = torch.zeros(logits.shape, dtype=torch.bool)
            hide[k, i] = True
            hide[torch.arange(len(rows_l)), target] = False  # the target stays
            logits = logits.masked_fill(hide.to(logits.device), float("-inf"))
        ce = F.cross_entropy(logits, target.to(self.device), reduction="none").cpu()
        return (ce * mask).sum() / mask.sum().clamp(min=1)

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask ``(b, L)`` of training rows: what the backbone reads."""
        s = self.fed.samples["train"]
        return self.model.sequence_tokens([s.history[r] for r in rows.tolist()])

    def out_loss(
        self,
        out: torch.Tensor,
        rows: torch.Tensor,
        ids: torch.Tensor,
        am: torch.Tensor,
        state: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`loss` from the backbone's last hidden states ``out`` ``(b, L, d)``.

        What FELLRec's split computes in its client tail (every row counted;
        ``state``: the local phase's item table; ρ: the model's ``log_scale``,
        which holds the client's value while its tensors are swapped in).
        """
        if state is None:
            raise ValueError("out_loss needs the local phase's item table (state)")
        e = self.model.pool(out, am)
        rho = self.model.log_scale
        return self._item_ce(e, rows, torch.ones(len(rows)), state, rho)

    @torch.no_grad()
    def scores(self, params: Params, histories: list[np.ndarray]) -> torch.Tensor:
        """``(b, I)`` scores of every item after each history (higher is better)."""
        ids, am = self.model.sequence_tokens(histories)
        e = functional_call(self.model, self._on(params), (ids, am))
        return (e @ self.item_table(params).T).cpu()

    def set_client(self, cid: int) -> None:
        """Run as client ``cid``: its own split depth when ``split_ks`` is given."""
        if self.split_ks:
            self.model.split_k = self.split_ks[cid]

    def eval_rows(self, split: str, cid: int) -> np.ndarray:
        """Client ``cid``'s rows of ``split``; validation capped per user group.

        At most ``max_eval_samples`` validation samples per group (a seeded
        sample, the same whichever client holds the group); test: every row.
        """
        rows = self.fed.client_rows(split, cid)
        k = self.max_eval_samples
        if split != "val" or not k:
            return rows
        group = self.fed.group_of_user[self.fed.samples[split].user[rows]]
        keep = []
        for g in np.unique(group):
            mine = rows[group == g]
            if len(mine) > k:
                rng = np.random.default_rng([self.seed, int(g), 11])
                mine = rng.choice(mine, size=k, replace=False)
            keep.append(mine)
        return np.sort(np.concatenate(keep)) if keep else rows

    @torch.no_grad()
    def client_scores(
        self, split: str, chunks: Chunks, predict: PredictRows
    ) -> dict[str, np.ndarray]:
        """Per-user top-K metrics of every client in ``chunks``, with user ids.

        ``{"user": (n,), "client": (n,), "<metric>@<k>": (n,)}`` over the
        evaluated users (``client``: the user's group, see
        :class:`SeqFedData`). Local: on Flower each node calls this for its own
        clients and sends only their :meth:`stats`. Items are ranked with
        :meth:`scores`, client by client: ``predict`` (the engine's batched
        row prediction) is not used.
        """
        s = self.fed.samples[split]
        parts = []
        for cids, params in chunks:
            for j, cid in enumerate(cids.tolist()):
                self.set_client(cid)
                rows = self.eval_rows(split, cid)
                p = {n: t[j] for n, t in params.items()}
                for b in range(0, len(rows), self.batch):
                    r = rows[b : b + self.batch]
                    scores = self.scores(p, [s.history[i] for i in r])
                    parts.append(self.row_metrics(split, r, scores))
        return concat_scores(parts)

    def row_metrics(
        self, split: str, rows: np.ndarray, scores: torch.Tensor
    ) -> dict[str, np.ndarray]:
        """Top-K metrics of ``split``'s ``rows`` from their ``(b, I)`` item scores.

        Also each row's user (``user``) and user group (``client``); ``(b,)``
        each. Per-row values stay on the node; :meth:`stats` reduces them.
        """
        s = self.fed.samples[split]
        m = topk_metrics(
            scores, [s.targets[i] for i in rows], KS, history=[s.seen[i] for i in rows]
        )
        out = {k: np.asarray(v, float) for k, v in m.items()}
        out["user"] = np.asarray(s.user[rows], np.int64)
        out["client"] = np.asarray(self.fed.group_of_user[out["user"]])
        return out

    @staticmethod
    @functools.cache
    def metric_names() -> tuple[str, ...]:
        """The per-row metrics of :meth:`row_metrics`: ``<metric>@<k>``, k in KS."""
        return tuple(topk_metrics(np.zeros((0, 1)), [], KS))

    def stat_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of :meth:`stats`: ``(G,)`` each, G user groups."""
        g = (self.fed.n_groups,)
        out: dict[str, tuple[int, ...]] = {"users": g}
        for m in self.metric_names():
            out |= {f"{m}.sum": g, f"{m}.n": g}
        return out

    def stats(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        r"""Per-group sums of :meth:`client_scores`' rows (what a node sends).

        With :math:`g_u` user :math:`u`'s group and :math:`x_u` a metric
        (NaN: undefined for that user),

        .. math::
            \mathrm{users}_g = |\{u : g_u = g\}|, \quad
            \mathrm{sum}_g = \sum_{u : g_u = g,\, x_u \ne \mathrm{NaN}} x_u, \quad
            n_g = |\{u : g_u = g,\, x_u \ne \mathrm{NaN}\}|

        as ``users``, ``<metric>.sum`` and ``<metric>.n``, each ``(G,)``.
        """
        g, n = np.asarray(scores["client"], np.int64), self.fed.n_groups
        out = {"users": np.bincount(g, minlength=n).astype(np.int64)}
        for m in self.metric_names():
            values = scores.get(m, np.zeros(0))
            out[f"{m}.sum"], out[f"{m}.n"] = group_sums(values, g, n)
        return out

    def metrics_from_stats(self, stats: dict[str, np.ndarray]) -> dict[str, Any]:
        """Overall (mean over evaluated users) and per-client top-K metrics.

        Of :meth:`stats` summed over nodes: ``<m> = Σ_g sum_g / Σ_g n_g``;
        ``users`` and ``users_clients`` (per group). Adds, for recall@10 and
        ndcg@10, the imbalance across clients (the groups with users):
        ``<m>_client_std`` (ddof 0), ``<m>_client_gap`` (max − min),
        ``<m>_client_worst``, and the per-client values ``<m>_clients``
        (``sum_g / n_g``; ``None`` for a group without users). ``{}`` when no
        user was evaluated.
        """
        users = np.asarray(stats["users"], np.int64)
        if not users.sum():
            return {}
        out: dict[str, Any] = {
            "users": int(users.sum()),
            "users_clients": [int(u) for u in users],
        }
        for m in self.metric_names():
            total, n = stats[f"{m}.sum"], stats[f"{m}.n"]
            out[m] = float(total.sum() / n.sum()) if n.sum() else float("nan")
            if m in ("recall@10", "ndcg@10"):
                out |= _client_spread(m, total, n, users)
        return out


def _client_spread(
    m: str, total: np.ndarray, n: np.ndarray, users: np.ndarray
) -> dict[str, Any]:
    """``<m>_client_std/gap/worst/_clients`` from per-group sums and counts ``(G,)``.

    A group's value is ``total_g / n_g`` (NaN when none of its users has one);
    groups without users have none (``None`` in ``<m>_clients``).
    """
    means = {
        c: float(total[c] / n[c]) if n[c] else float("nan")
        for c in range(len(users))
        if users[c]
    }
    st = client_stats(means)
    return {
        f"{m}_client_std": st["std"],
        f"{m}_client_gap": st["gap"],
        f"{m}_client_worst": st["worst"],
        f"{m}_clients": [means.get(c) for c in range(len(users))],
    }


class GenRecTask(SeqRecTask):
    """BIGRec-style: causal-LM loss on prompts; recommend by generate + ground."""

    model: GenerativeRecommender  # type: ignore[assignment]

    def begin_local(self, params: Params) -> None:
        """Nothing to prepare: the loss needs no item table."""
        return None

    def loss(
        self,
        params: Params,
        rows: torch.Tensor,
        mask: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean token cross-entropy of the prompts with their answers, (b,) samples."""
        ids, am = self.inputs(rows)
        return functional_call(self.model, self._on(params), (ids, am)).cpu()

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask ``(b, L)``: training prompts, answers, end of sequence."""
        s, titles = self.fed.samples["train"], self.model.titles
        texts = [
            prompt([titles[i] for i in s.history[r]], titles[int(s.targets[r][0])])
            for r in rows.tolist()
        ]
        return self.model.encode(texts, eos=True)

    def out_loss(
        self,
        out: torch.Tensor,
        rows: torch.Tensor,
        ids: torch.Tensor,
        am: torch.Tensor,
        state: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`loss` from the LM's logits ``out`` ``(b, L, V)``."""
        return self.model.logits_loss(out, ids, am)

    @torch.no_grad()
    def scores(self, params: Params, histories: list[np.ndarray]) -> torch.Tensor:
        """−L2 distance of each generated title to every item (client's adapter in)."""
        with swapped_in(self.model, params):
            return self.model.scores(histories).cpu()


class FeatureSeqRecTask(SeqRecTask):
    """Next-item prediction over a :class:`FeatureSeqRecommender`.

    The item table ``g = W t + b`` is one matrix product, so every step
    recomputes and trains through it: no table is prepared per local phase.
    Loss: :meth:`SeqRecTask.masked_ce` of ``e · gᵀ``; scores ``e · gᵀ``.
    """

    model: FeatureSeqRecommender  # type: ignore[assignment]

    def begin_local(self, params: Params) -> None:
        """Nothing to prepare: the loss computes the item table itself."""
        return None

    def _logits(self, params: Params, histories: list[np.ndarray]) -> torch.Tensor:
        """``(b, I)`` scores ``e · gᵀ`` of every item after each history."""
        hist = self.model.history_tensor(histories)
        e, table = functional_call(self.model, self._on(params), (hist,))
        return self.model.logits(e, table)

    def loss(
        self,
        params: Params,
        rows: torch.Tensor,
        mask: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """History-masked mean cross-entropy of ``e · gᵀ`` over ``(b,)`` rows."""
        s = self.fed.samples["train"]
        logits = self._logits(params, [s.history[r] for r in rows.tolist()])
        return self.masked_ce(logits, rows, mask)

    @torch.no_grad()
    def scores(self, params: Params, histories: list[np.ndarray]) -> torch.Tensor:
        """``(b, I)`` scores ``e · gᵀ`` of every item after each history."""
        return self._logits(params, histories).cpu()
