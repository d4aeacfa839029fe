"""The ServerApp's side of the FELLRec split (see :mod:`fedrec.flower.split`).

:func:`train_round` and :func:`evaluate_round` replace the ServerApp's
unsplit rounds for a config with ``backbone.split_k``; around them the run is
the same (:mod:`fedrec.flower.server`). They build the typed requests of
:mod:`fedrec.flower.split_wire`, one per node and message kind, and read the
typed replies (:class:`Link`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedrec.flower.fleet import Fleet, close_round, pooled_metrics
from fedrec.flower.runconfig import eval_splits
from fedrec.flower.split import (
    ENTRIES_PER_MESSAGE,
    Sides,
    Tensors,
    encode_plan,
    generative,
    optimise,
    server_blocks,
    sides,
    snapshot,
)
from fedrec.flower.split_server_decode import decode
from fedrec.flower.split_wire import (
    BackRequest,
    EncHeadRequest,
    EncTailReply,
    HeadRequest,
    Hidden,
    R,
    Request,
    TailRequest,
    hidden_bytes,
)
from fedrec.models.causal_lm import swapped_in
from fedrec.models.split import Message

if TYPE_CHECKING:
    from fedrec.fl.simulate import EmbeddedEngine

log = logging.getLogger("fedrec.flower")

# per partition: its clients and their node-side θ stacked (clients, ...)
Nodes = dict[int, tuple[list[int], Tensors]]


class Link:
    """The server's end of one round's split messages; counts hidden-state bytes.

    ``send(phase, {partition: request})`` sends one message per node and
    returns the typed replies of those that answered; a failed or late node is
    logged by :meth:`~fedrec.flower.fleet.Fleet.collect` and left out.
    """

    def __init__(self, fleet: Fleet, rnd: int) -> None:
        self.fleet, self.rnd = fleet, rnd
        self.bytes = 0  # hidden states and their gradients, both ways

    def send(self, phase: str, requests: Mapping[int, Request[R]]) -> dict[int, R]:
        """Send ``{partition: request}`` as ``<phase>`` messages; the replies.

        ``{partition: reply}`` of the nodes that answered.
        """
        if not requests:
            return {}
        msgs = []
        for p in sorted(requests):
            self.bytes += hidden_bytes(requests[p])
            msgs.append(
                requests[p].to_message(phase, self.fleet.host[p], self.fleet.key)
            )
        got = self.fleet.collect(msgs, self.rnd, msgs[0].metadata.message_type)
        replies = {p: requests[p].reply_of(content) for p, content in got.items()}
        self.bytes += sum(hidden_bytes(r) for r in replies.values())
        return replies


# ----------------------------------------------------------------- training
def train_round(
    fleet: Fleet, eng: EmbeddedEngine, live: set[int], rnd: int
) -> dict[str, Any]:
    """The split's version of the ServerApp's ``_train_round``; the metrics.

    Clients of a node that fails are left out of the round from that step
    on (logged, ``failed_partitions``), as in the unsplit round.
    """
    t0 = time.perf_counter()
    clients = eng.sample(rnd)
    received, _ = eng.client_params(clients)
    run = _Training.start(fleet, eng, live, rnd, clients, received)
    if not generative(eng):  # stage 1: each training client's item table
        run.item_tables()
    for step in range(max((len(p) for p in run.plans.values()), default=0)):
        run.step(step)
    served, uploads, losses = run.outcome(list(received))
    m = close_round(
        eng, rnd, clients, served, uploads, received, losses, t0, run.failed
    )
    m.update(received_on_server=sorted(run.s.node), split_hidden_bytes=run.link.bytes)
    return m


@dataclass
class _Training:
    """One training round on the server, per sampled client ``c``.

    ``plans[c]``: its mini-batches (row ids); ``mine[c]``: its server-side
    θ_i, stepped; ``node_side[c]``: its node-side θ_i, as received and then
    as uploaded; ``opt[c]``: its server side's Adam state; ``loss_sum[c]``:
    its batch losses × rows; ``failed``: partitions out of the round.
    """

    eng: EmbeddedEngine
    s: Sides
    link: Link
    parts: int
    plans: dict[int, list[np.ndarray]]
    mine: dict[int, Tensors]
    node_side: dict[int, Tensors]
    opt: dict[int, Tensors]
    loss_sum: dict[int, float]
    failed: set[int]

    @classmethod
    def start(
        cls,
        fleet: Fleet,
        eng: EmbeddedEngine,
        live: set[int],
        rnd: int,
        clients: torch.Tensor,
        received: Tensors,
    ) -> _Training:
        """The round's start: ``received`` split into each client's two sides."""
        s, ids = sides(eng), clients.tolist()
        return cls(
            eng,
            s,
            Link(fleet, rnd),
            fleet.parts,
            plans=dict(zip(ids, eng.client_plans(rnd, clients), strict=True)),
            mine={c: {n: received[n][i] for n in s.server} for i, c in enumerate(ids)},
            node_side={
                c: {n: received[n][i] for n in s.node} for i, c in enumerate(ids)
            },
            opt={c: {} for c in ids},
            loss_sum=dict.fromkeys(ids, 0.0),
            failed={p for p in range(fleet.parts) if p not in live},
        )

    def by_node(self, clients: list[int]) -> dict[int, list[int]]:
        """``{partition: its clients}`` of ``clients``, in their order."""
        nodes = sorted({c % self.parts for c in clients})
        return {p: [c for c in clients if c % self.parts == p] for p in nodes}

    def stacked(self, clients: list[int]) -> Tensors:
        """The node-side θ_i of ``clients``, stacked ``(clients, ...)``."""
        return {
            n: torch.stack([self.node_side[c][n] for c in clients]) for n in self.s.node
        }

    def last(self, clients: list[int], step: int) -> list[int]:
        """Those of ``clients`` whose local phase ends with ``step``."""
        return [c for c in clients if step == len(self.plans[c]) - 1]

    def send(
        self, active: list[int], request: Callable[[list[int]], Request[R]]
    ) -> dict[int, tuple[R, list[int]]]:
        """One message per node with ``active`` clients: ``request(its clients)``.

        Returns ``{partition: (reply, its clients)}`` of the nodes that
        answered; the others join ``failed``.
        """
        of = self.by_node(active)
        got = self.link.send("train", {p: request(cs) for p, cs in of.items()})
        self.failed.update(set(of) - set(got))
        return {p: (rep, of[p]) for p, rep in got.items()}

    def item_tables(self) -> None:
        """Each training client's item table, encoded on its node under its θ_i."""
        tabled = [
            c for c in self.plans if self.plans[c] and c % self.parts not in self.failed
        ]
        nodes = {p: (cs, self.stacked(cs)) for p, cs in self.by_node(tabled).items()}
        got = _encode(self.link, self.eng, "train", nodes, self.mine, [])
        self.failed.update(set(nodes) - set(got))

    def step(self, step: int) -> None:
        """Mini-batch ``step`` of every client that has one, a message per part."""
        active = [
            c
            for c, plan in self.plans.items()
            if len(plan) > step and c % self.parts not in self.failed
        ]
        rnd, first = self.link.rnd, not step and generative(self.eng)

        def head(cs: list[int]) -> HeadRequest:
            theta = self.stacked(cs) if first else None  # else sent with the tables
            return HeadRequest(round=rnd, step=step, clients=cs, received=theta)

        ups = {
            c: rep.hidden[c] for rep, cs in self.send(active, head).values() for c in cs
        }
        active = [c for c in active if c in ups]
        downs = {c: server_blocks(self.eng, self.mine[c], ups[c]) for c in active}
        tails = self.send(
            active,
            lambda cs: TailRequest(
                round=rnd, step=step, clients=cs, hidden={c: downs[c] for c in cs}
            ),
        )
        grads: Hidden = {}
        for rep, cs in tails.values():
            for c, loss in zip(cs, rep.losses, strict=True):
                self.loss_sum[c] += float(loss) * len(self.plans[c][step])
                grads[c] = self.server_backward(c, ups[c], rep.grads[c])
        active = [c for c in active if c in grads]
        self.back(step, active, grads)

    def server_backward(self, c: int, up: Message, grad: Message) -> Message:
        """Client ``c``'s ``∂loss/∂h_k`` from ``∂loss/∂h_{L−1}``; steps its θ_i.

        The forward of the server's blocks runs again, with its graph.
        """
        s = self.s
        with swapped_in(self.eng.model, self.mine[c]):
            leaf, mid = s.split.server_forward(up)
            g = s.split.server_backward(leaf, mid, grad)
            self.opt[c] = optimise(s.server, self.opt[c], s.lr, s.optimizer)
            self.mine[c] = snapshot(s.server)
        return Message(g.tensor)

    def back(self, step: int, active: list[int], grads: Hidden) -> None:
        """``train.split_back``; keeps the uploads of the clients that end here."""

        def back(cs: list[int]) -> BackRequest:
            mine = {c: grads[c] for c in cs}
            last = self.last(cs, step)
            return BackRequest(
                round=self.link.rnd, step=step, clients=cs, last=last, grads=mine
            )

        for rep, cs in self.send(active, back).values():
            for i, c in enumerate(self.last(cs, step)):
                assert rep.uploads is not None  # a client's last step uploads
                self.node_side[c] = {n: rep.uploads[n][i] for n in self.s.node}

    def outcome(self, names: list[str]) -> tuple[torch.Tensor, Tensors, torch.Tensor]:
        """Per sampled client: served (bool), trained θ_i (``names``), mean loss."""
        ids = list(self.plans)
        served = [c % self.parts not in self.failed for c in ids]
        rows = {c: sum(len(b) for b in self.plans[c]) for c in ids}
        losses = torch.tensor(
            [self.loss_sum[c] / rows[c] if rows[c] else float("nan") for c in ids],
            dtype=torch.float64,
        )
        whole = [{**self.node_side[c], **self.mine[c]} for c in ids]
        uploads = {n: torch.stack([t[n] for t in whole]) for n in names}
        return torch.tensor(served, dtype=torch.bool), uploads, losses


# --------------------------------------------------------------- evaluation
def evaluate_round(
    fleet: Fleet, eng: EmbeddedEngine, live: set[int], rnd: int
) -> dict[str, Any]:
    """The split's version of the ServerApp's ``_evaluate_round``; the metrics.

    Every live node's clients score their evaluated rows through the split: a
    generative config decodes each row's title, a message pair per token
    (:func:`~fedrec.flower.split_server_decode.decode`); a discriminative one
    encodes item tables and rows (:func:`_encode`). The nodes score and reduce
    their rows to the task's statistics; the server sums them
    (:func:`~fedrec.flower.fleet.pooled_metrics`).
    """
    s, parts, link = sides(eng), fleet.parts, Link(fleet, rnd)
    all_ids = torch.arange(eng.fed.n_clients)
    nodes, server_side = {}, {}
    for p in sorted(live):
        mine = all_ids[all_ids % parts == p]
        groups = {a: t[mine] for a, t in eng.groups.items()}
        theta = eng.strategy.broadcast(eng.server, eng.partition, mine, groups)
        cs = mine.tolist()
        server_side.update(
            {c: {n: theta[n][j] for n in s.server} for j, c in enumerate(cs)}
        )
        if cs:
            nodes[p] = (cs, {n: theta[n] for n in s.node})
    extra = {}
    if generative(eng):
        stats, extra["split_eval_cached_rows"] = decode(link, eng, nodes, server_side)
    else:
        got = _encode(link, eng, "evaluate", nodes, server_side, eval_splits(eng))
        stats = [r.stats for rs in got.values() for r in rs if r.stats is not None]
    return pooled_metrics(eng, stats) | extra | {"split_eval_hidden_bytes": link.bytes}


def _encode(
    link: Link,
    eng: EmbeddedEngine,
    phase: str,
    nodes: Nodes,
    server_side: dict[int, Tensors],
    splits: list[str],
) -> dict[int, list[EncTailReply]]:
    """Encode each node's :func:`~fedrec.flower.split.encode_plan` through the split.

    ``server_side``: each client's server-side θ_i. ``ENTRIES_PER_MESSAGE``
    batches a message pair (``<phase>.split_enc_head``: ``h_k``; the server's
    blocks; ``<phase>.split_enc_tail``: the node pools, keeps item tables and
    scores rows). Returns the tail replies of every node that answered them all.
    """
    per = ENTRIES_PER_MESSAGE
    plans = {p: encode_plan(eng, cs, splits) for p, (cs, _) in nodes.items()}
    out: dict[int, list[EncTailReply]] = {p: [] for p in nodes}
    for first in range(0, max(map(len, plans.values()), default=0), per):
        heads = {
            p: EncHeadRequest(
                round=link.rnd,
                step=first // per,
                clients=nodes[p][0],
                splits=splits,
                first=first,
                end=min(first + per, len(plans[p])),
                received=None if first else nodes[p][1],
            )
            for p in out
            if first < len(plans[p])
        }
        tails = {}
        for p, rep in link.send(phase, heads).items():
            theta = {i: server_side[plans[p][i].client] for i in heads[p].entries}
            mid = {i: server_blocks(eng, theta[i], rep.hidden[i]) for i in theta}
            tails[p] = heads[p].tail(mid)
        got = link.send(phase, tails)
        for p in heads:
            if p in got:
                out[p].append(got[p])
            else:  # failed (logged): out of this exchange
                del out[p]
    return out
