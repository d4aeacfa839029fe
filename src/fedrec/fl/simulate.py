"""The embedded engine: an in-process federated simulator.

One round t:

1. sample ``C`` clients that hold training rows with ``default_rng([seed, t, 1])``;
2. broadcast: each sampled client gets its copy of the shared state
   (``strategy.broadcast``) and its private state from the client store;
3. ``client_update``: train all C clients at once
   (:func:`~fedrec.fl.stacked.train_stacked`), or one by one
   (:func:`~fedrec.fl.loop.train_loop`, ``train.engine = "loop"``), and pass
   the uploads through the upload mods (LDP) — the batched function a Flower
   client would call with its own clients;
4. ``server_update``: reject non-finite or too-large updates, keep accepted
   private tensors in the store, ``strategy.aggregate`` the uploads;
5. evaluate every client with its own model on validation and test rows.

With ``eval.initial``, the untrained model is evaluated once before round 0
(:meth:`EmbeddedEngine.evaluate_initial`), as the history's round ``-1``.

Everything random in a round is seeded by ``(seed, t, ...)``, so a run resumed
from the checkpoint of round t continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import functools
import logging
import math
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from fedrec.fl.clients import client_batches
from fedrec.fl.guards import accept_updates
from fedrec.fl.loop import predict_loop, train_loop
from fedrec.fl.mods import ModContext, build_mods
from fedrec.fl.partition import FROZEN, PRIVATE, Partition
from fedrec.fl.protocols import Chunks, ClientData, Params, PredictRows, Task
from fedrec.fl.stacked import predict_stacked, train_stacked
from fedrec.fl.store import ClientStore
from fedrec.fl.strategy import RoundContext, Strategy
from fedrec.sections import ExperimentConfig

log = logging.getLogger("fedrec")
EVAL_CHUNK = 1024
INITIAL_ROUND = -1  # the history's entry of the untrained model (eval.initial)


def initial_entry(metrics: dict[str, Any], t0: float) -> dict[str, Any]:
    """The history entry of the untrained model's evaluation, begun at ``t0``.

    ``round = -1`` and ``initial = True``, the ``<split>_<metric>`` values, and
    its timing (``eval_s = round_s``, ``peak_rss_mb``); no training keys. Both
    engines write it this way.
    """
    eval_s = time.perf_counter() - t0
    return {
        "round": INITIAL_ROUND,
        "initial": True,
        **metrics,
        "eval_s": eval_s,
        "round_s": eval_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bytes_per_client(params: Params) -> int:
    """Bytes of one client's share of stacked ``(C, ...)`` tensors."""
    return sum(t[0].numel() * t.element_size() for t in params.values())


class EmbeddedEngine:
    """Runs a strategy over a federated dataset, round by round.

    Parameters
    ----------
    cfg
        The validated experiment config.
    fed
        Clients and their rows.
    model
        The model; its parameters give every client's initial values.
    task
        Loss and evaluation for one client (a :class:`~fedrec.fl.protocols.Task`,
        e.g. :class:`~fedrec.fl.task.CTRTask`).
    strategy
        The algorithm.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        fed: ClientData,
        model: torch.nn.Module,
        task: Task,
        strategy: Strategy,
    ) -> None:
        self.cfg, self.fed, self.model, self.task, self.strategy = (
            cfg,
            fed,
            model,
            task,
            strategy,
        )
        part = Partition.from_rules(model, strategy.partition_rules())
        # what the backbone itself freezes (e.g. the base under LoRA) stays frozen
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        self.partition = Partition(
            {n: FROZEN if n in frozen else r for n, r in part.roles.items()}
        )
        for name, p in model.named_parameters():
            p.requires_grad_(self.partition.roles[name] != "frozen")
        init = {n: p.detach() for n, p in model.named_parameters()}
        attrs = sorted(
            {a for n in self.partition.uploaded if (a := self.partition.group_attr(n))}
        )
        self.groups = {a: torch.as_tensor(fed.client_attribute(a)) for a in attrs}
        self.n_groups = {a: int(fed.attribute_column(a).max()) + 1 for a in attrs}
        self.server = strategy.init_server(
            init, self.partition, self.n_groups, fed.n_clients
        )
        private = {n: init[n] for n in self.partition.names(PRIVATE)}
        self.store = ClientStore(private, fed.n_clients)
        self.mods = build_mods(cfg.privacy)
        self.participation = torch.zeros(fed.n_clients, dtype=torch.long)
        self.history: list[dict[str, Any]] = []
        self.round = 0
        # split -> the task's per-row scores of the last evaluation (local only)
        self.last_rows: dict[str, dict[str, np.ndarray]] = {}

    # ----------------------------------------------------------------- rounds
    def sample(self, rnd: int) -> torch.Tensor:
        """Ids of this round's clients (sorted), seeded by ``(seed, rnd)``.

        Only clients with training rows are sampled (one without has no
        update; ``client_fraction`` counts those that have).
        """
        tc = self.cfg.train
        able = np.flatnonzero(self.fed.sizes("train") > 0)
        n = len(able)
        c = tc.clients_per_round or max(1, int(n * tc.client_fraction))
        rng = np.random.default_rng([self.cfg.run.seed, rnd, 1])
        pick = rng.choice(n, size=min(c, n), replace=False)
        return torch.as_tensor(np.sort(able[pick]))

    def client_params(self, clients: torch.Tensor) -> tuple[Params, Params]:
        """(received shared state, private state) of the given clients, ``(C, ...)``."""
        groups = {a: g[clients] for a, g in self.groups.items()}
        received = self.strategy.broadcast(self.server, self.partition, clients, groups)
        return received, self.store.get(clients)

    def client_plans(self, rnd: int, clients: torch.Tensor) -> list[list[np.ndarray]]:
        """Each client's mini-batches (row ids) this round, seeded per client."""
        tc, seed = self.cfg.train, self.cfg.run.seed
        plans = []
        for c in clients.tolist():
            rows = self.fed.client_rows("train", c)
            if 0 < tc.max_rows_per_client < len(rows):  # a seeded per-round sample
                pick = np.random.default_rng([seed, rnd, c, 3])
                rows = np.sort(pick.choice(rows, tc.max_rows_per_client, replace=False))
            batches = client_batches(
                len(rows), tc.batch_size, tc.local_epochs, seed, rnd, c
            )
            plans.append([rows[b] for b in batches])
        return plans

    def client_update(
        self,
        rnd: int,
        clients: torch.Tensor,
        received: Params,
        private: Params,
        mods: bool = True,
    ) -> tuple[Params, Params, torch.Tensor]:
        """The batched client update: what ``clients`` train, keep and upload.

        Starts from copies of what each client received and holds, trains all of
        them at once (or one by one, ``train.engine = "loop"``), applies the
        upload mods (unless ``mods=False``: Flower applies them as client mods);
        returns (uploads, private, mean losses), each ``(C, ...)``. One client
        is a batch of one.
        """
        tc = self.cfg.train
        params = {n: t.clone() for n, t in {**received, **private}.items()}
        plans = self.client_plans(rnd, clients)
        penalty = self.strategy.penalty()
        lrs = {n: self.strategy.learning_rate(n, tc.lr_at(rnd)) for n in params}
        if not params:  # nothing trainable (e.g. the pre-trained model as is)
            losses = torch.full((len(clients),), math.nan, dtype=torch.float64)
        else:
            common = (self.task, params, received, plans, lrs, tc.optimizer, penalty)
            if tc.engine == "stacked":
                params, losses = train_stacked(
                    *common,
                    max_rows=tc.max_rows_per_bucket,
                    min_rows=tc.min_rows_per_bucket,
                )
            else:
                params, losses = train_loop(*common, clients=clients.tolist())
        uploads = {n: params[n] for n in self.partition.uploaded}
        if mods:
            uploads = self.apply_mods(rnd, clients, uploads, received)
        return uploads, {n: params[n] for n in self.partition.names(PRIVATE)}, losses

    def apply_mods(
        self, rnd: int, clients: torch.Tensor, uploads: Params, received: Params
    ) -> Params:
        """The upload mods (LDP), in order, on the client side of the wire."""
        if uploads and self.mods:
            ctx = ModContext(self.cfg.run.seed, rnd, clients.tolist())
            for mod in self.mods:
                uploads = mod(uploads, received, ctx)
        return uploads

    def server_update(
        self,
        rnd: int,
        clients: torch.Tensor,
        uploads: Params,
        received: Params,
        private: Params,
        losses: torch.Tensor,
    ) -> torch.Tensor:
        """Guard the updates, keep accepted private state, aggregate; accepted mask."""
        ok = torch.ones(len(clients), dtype=torch.bool)
        reasons: list[str] = []
        if uploads and self.mods:  # every upload spends ε, accepted or not
            self.participation[clients] += 1
        if uploads or private:
            bound = self.cfg.guard.max_update_norm
            ok, reasons = accept_updates(uploads, received, private, bound, losses)
        for c, why in zip(clients[~ok].tolist(), reasons, strict=True):
            log.warning("round %d: rejected the update of client %d (%s)", rnd, c, why)
        kept = clients[ok]
        if private:
            self.store.put(kept, {n: t[ok] for n, t in private.items()})
        if uploads and ok.any():
            ctx = RoundContext(
                round=rnd,
                clients=kept,
                weights=torch.as_tensor(
                    self.fed.sizes("train")[kept.numpy()], dtype=torch.float64
                ),
                groups={a: g[kept] for a, g in self.groups.items()},
                n_groups=self.n_groups,
                losses=losses[ok],
            )
            self.server = self.strategy.aggregate(
                self.server, {n: t[ok] for n, t in uploads.items()}, self.partition, ctx
            )
        return ok

    def train_round(
        self, rnd: int, on_clients: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """One round of local training and aggregation; returns its metrics."""
        t0 = time.perf_counter()
        clients = self.sample(rnd)
        received, private = self.client_params(clients)
        uploads, private, losses = self.client_update(rnd, clients, received, private)
        if on_clients:
            on_clients(len(clients))
        train_s = time.perf_counter() - t0
        ok = self.server_update(rnd, clients, uploads, received, private, losses)
        return self.round_metrics(rnd, clients, ok, losses, uploads, received, train_s)

    def round_metrics(
        self,
        rnd: int,
        clients: torch.Tensor,
        ok: torch.Tensor,
        losses: torch.Tensor,
        uploads: Params,
        received: Params,
        train_s: float,
    ) -> dict[str, Any]:
        """A round's training metrics (both engines report the same keys).

        The strategy's :meth:`~fedrec.fl.strategy.Strategy.round_log` is merged in.
        """
        return self.strategy.round_log() | {
            "round": rnd,
            "clients": len(clients),
            "rejected": int((~ok).sum()),
            "train_loss": self.train_loss(clients, losses),
            "upload_bytes_per_client": bytes_per_client(uploads),
            "ldp_epsilon_round": self.epsilon_spent(per_round=True),
            "ldp_epsilon_total": self.epsilon_spent(),
            "download_bytes_per_client": bytes_per_client(received),
            "train_s": train_s,
            "clients_per_s": len(clients) / max(train_s, 1e-9),
        }

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, Any]:
        """The task's metrics of every client, each under its own model.

        ``metrics_from_stats(stats(rows))`` of the task's per-row
        ``client_scores`` (the reducers the Flower server uses on the nodes'
        summed stats); the rows are kept in ``last_rows[split]``.
        """
        n = self.fed.n_clients

        def chunks() -> Iterator[tuple[torch.Tensor, Params]]:
            for start in range(0, n, EVAL_CHUNK):
                cids = torch.arange(start, min(n, start + EVAL_CHUNK))
                received, private = self.client_params(cids)
                yield cids, {**received, **private}

        rows = self.client_scores(split, chunks())
        self.last_rows[split] = rows
        return self.task.metrics_from_stats(self.task.stats(rows))

    def client_scores(self, split: str, chunks: Chunks) -> dict[str, np.ndarray]:
        """The task's per-row scores of the clients in ``chunks``, on ``split``.

        With this engine's batched prediction (:meth:`predict_rows`); a Flower
        node calls it for the clients it hosts.
        """
        return self.task.client_scores(split, chunks, self.predict_rows())

    def predict_rows(self) -> PredictRows:
        """How many clients' rows are scored at once: stacked, or one by one."""
        tc = self.cfg.train
        if tc.engine == "stacked":
            return functools.partial(
                predict_stacked,
                max_rows=tc.max_rows_per_bucket,
                min_rows=tc.min_rows_per_bucket,
            )
        return predict_loop

    def needs_initial(self) -> bool:
        """Whether the untrained model is still to be evaluated (``eval.initial``)."""
        return (
            self.cfg.eval.initial
            and self.round == 0
            and all(h["round"] != INITIAL_ROUND for h in self.history)
        )

    def evaluate_initial(self) -> dict[str, Any]:
        """Evaluate the untrained model on ``eval.splits``; append it as round -1.

        Every client's state is the initial one (nothing is trained, sampled
        or drawn), so the rounds after it are those of a run without it.
        """
        t0 = time.perf_counter()
        m = {
            f"{split}_{k}": v
            for split in self.cfg.eval.splits
            for k, v in self.evaluate(split).items()
        }
        m = initial_entry(m, t0)
        self.history.append(m)
        return m

    def run_round(
        self, rnd: int, on_clients: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Train, aggregate and evaluate round ``rnd``; append to the history."""
        t0 = time.perf_counter()
        m = self.train_round(rnd, on_clients)
        t1 = time.perf_counter()
        for split in self.cfg.eval.splits:
            m.update({f"{split}_{k}": v for k, v in self.evaluate(split).items()})
        m["eval_s"] = time.perf_counter() - t1
        m["round_s"] = time.perf_counter() - t0
        m["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.history.append(m)
        self.round = rnd + 1
        return m

    def train_loss(self, clients: torch.Tensor, losses: torch.Tensor) -> float:
        """Clients' mean losses weighted by their train rows (NaN: no training)."""
        n = torch.as_tensor(
            self.fed.sizes("train")[clients.numpy()], dtype=torch.float64
        )
        ok = ~torch.isnan(losses)
        return float((losses[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else math.nan

    def epsilon_spent(self, per_round: bool = False) -> float:
        """Worst client's ε so far, by basic composition (0 without LDP).

        ``per_round``: the ε of one upload instead.
        """
        eps = [m.epsilon_per_round for m in self.mods]
        if not eps:
            return 0.0
        return sum(eps) * (1.0 if per_round else float(self.participation.max()))

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: model, server, client store, history."""
        return {
            "round": self.round,
            "model": self.model.state_dict(),
            "server": self.server,
            "store": self.store.state_dict(),
            "history": self.history,
            "participation": self.participation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.server = {n: t.clone() for n, t in state["server"].items()}
        self.store.load_state_dict(state["store"])
        self.history = list(state["history"])
        self.round = int(state["round"])
        self.participation = state["participation"].clone()
