"""The ServerApp's greedy decoding through the split (generative evaluation).

A message pair per token for all of a node's open rows
(``evaluate.split_gen_head`` / ``evaluate.split_gen_tail``, see
:mod:`fedrec.flower.split`); the server keeps a KV cache of its blocks and
``h_{L−1}`` of the prefix per row for the round. Used by
:func:`fedrec.flower.split_server.evaluate_round`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from fedrec.flower.split import (
    EvalItem,
    Tensors,
    cache_for,
    eval_items,
    recommender,
    server_blocks,
    sides,
)
from fedrec.flower.split_wire import GenHeadRequest, GenTailReply, Hidden, Stats
from fedrec.models.split import Message

if TYPE_CHECKING:
    from transformers import DynamicCache

    from fedrec.fl.simulate import EmbeddedEngine
    from fedrec.flower.split_server import Link, Nodes

log = logging.getLogger("fedrec.flower")


def decode(
    link: Link, eng: EmbeddedEngine, nodes: Nodes, server_side: dict[int, Tensors]
) -> tuple[list[Stats], int]:
    """Greedy decoding of every evaluated row, a message pair per token.

    ``nodes``: ``{partition: (clients, their node-side θ stacked)}``;
    ``server_side``: each client's server-side θ_i. Returns the nodes'
    statistics, and how many (row, token) tail steps found the node's block
    ``L−1`` cache (those got only the newest position).
    """
    run = _Decoding(link, eng, nodes, server_side)
    for step in range(recommender(eng).max_new_tokens):
        if not run.still:
            break
        log.info(
            "round %d evaluate: token %d/%d, %d rows decoding",
            link.rnd,
            step + 1,
            recommender(eng).max_new_tokens,
            sum(map(len, run.still.values())),
        )
        run.token(step)
    stats = [r.stats for r in run.done.values() if r.stats is not None]
    return stats, run.n_cached


@dataclass
class _Decoding:
    """One round's decoding on the server.

    ``items[p]``: node ``p``'s evaluated rows; ``still[p]``: those still
    decoding (indices into ``items[p]``); per ``(p, row)``: ``caches``, the KV
    cache of the server's blocks, and ``prefix``, ``h_{L−1}`` ``(1, n, d)`` of
    the prefix so far (a node without its cache rebuilds block ``L−1`` from
    it; one that reports its cache gets only the newest position); ``done``:
    each finished node's last reply (its statistics).
    """

    link: Link
    eng: EmbeddedEngine
    nodes: Nodes
    server_side: dict[int, Tensors]
    items: dict[int, list[EvalItem]] = field(init=False)
    still: dict[int, list[int]] = field(init=False)
    caches: dict[tuple[int, int], DynamicCache] = field(default_factory=dict)
    prefix: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    done: dict[int, GenTailReply] = field(default_factory=dict)
    n_cached: int = 0

    def __post_init__(self) -> None:
        self.items = {p: eval_items(self.eng, cs) for p, (cs, _) in self.nodes.items()}
        self.still = {p: list(range(len(v))) for p, v in self.items.items() if v}

    def token(self, step: int) -> None:
        """Token ``step`` of every open row: a head and a tail message per node."""
        heads = {
            p: GenHeadRequest(
                round=self.link.rnd,
                step=step,
                clients=self.nodes[p][0],
                open=self.still[p],
                received=None if step else self.nodes[p][1],
            )
            for p in self.still
        }
        cached = {}  # per node that answered: rows whose block L−1 cache it holds
        for p, rep in self.link.send("evaluate", heads).items():
            cached[p] = set(rep.tail_cached)
            self.n_cached += len(cached[p])
            for i in self.still[p]:
                self.extend(p, i, rep.hidden[i], step)
        rows = {p: {i: self.prefix[p, i] for i in self.still[p]} for p in cached}
        tails = self.link.send(
            "evaluate", {p: heads[p].tail(_down(rows[p], cached[p])) for p in rows}
        )
        again = [p for p, rep in tails.items() if rep.missing]
        if again:  # served by a process without the caches: the whole prefixes
            tails |= self.link.send(
                "evaluate", {p: heads[p].tail(_down(rows[p], set())) for p in again}
            )
        self.close(tails)

    def extend(self, p: int, i: int, up: Message, step: int) -> None:
        """Row ``i``'s ``prefix`` extended by the server's blocks over ``up``.

        ``up``: the newest positions' ``h_k`` (all of the prompt's at step 0).
        """
        if not step:
            self.caches[p, i] = cache_for(sides(self.eng))
        theta = self.server_side[self.items[p][i].client]
        h = server_blocks(self.eng, theta, up, self.caches[p, i]).tensor
        self.prefix[p, i] = torch.cat([self.prefix[p, i], h], 1) if step else h

    def close(self, tails: dict[int, GenTailReply]) -> None:
        """Each node's rows still open; a node done or failed leaves ``still``."""
        for p in list(self.still):
            rep = tails.get(p)
            if rep is not None and rep.open:
                self.still[p] = list(rep.open)
                continue
            del self.still[p]  # done (its reply holds its stats) or failed (logged)
            if rep is not None:
                self.done[p] = rep


def _down(rows: dict[int, torch.Tensor], cached: set[int]) -> Hidden:
    """The ``hidden`` of a decoding tail message.

    ``rows``: each open row's ``h_{L−1}`` of its whole prefix ``(1, n, d)``;
    sent whole, or only the newest position for the rows in ``cached`` (the
    node holds their block L−1 cache). The mask always spans the prefix.
    """
    out = {}
    for i, h in rows.items():
        n = h.shape[1]
        pos = torch.arange(n)[None]
        if i in cached:
            h, pos = h[:, -1:], pos[:, -1:]
        out[i] = Message(h, torch.ones(1, n, dtype=torch.long), pos)
    return out
