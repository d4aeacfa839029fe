"""A node's handlers of the split's training steps and encodings.

``train.split_head`` / ``train.split_tail`` / ``train.split_back`` (one step
of each client's mini-batches) and ``<phase>.split_enc_head`` /
``<phase>.split_enc_tail`` (a discriminative config's item tables and
evaluated rows), each ``(Node, request) -> reply`` over the typed messages of
:mod:`fedrec.flower.split_wire`; :data:`fedrec.flower.split_node.HANDLERS`
registers them. Between messages they keep what they need in the node's
:class:`~fedrec.flower.split_scratch.Scratch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from fedrec.flower.split import (
    Batch,
    encode_plan,
    optimise,
    recommender,
    rows_of,
    seq_task,
    snapshot,
    stats_of,
)
from fedrec.flower.split_scratch import ClientScratch
from fedrec.flower.split_wire import (
    BackReply,
    BackRequest,
    EncHeadRequest,
    EncTailReply,
    EncTailRequest,
    HeadRequest,
    HiddenReply,
    TailReply,
    TailRequest,
)
from fedrec.models.causal_lm import swapped_in
from fedrec.models.split import Message

if TYPE_CHECKING:
    from fedrec.fl.simulate import EmbeddedEngine
    from fedrec.flower.split_node import Node


# ------------------------------------------------------------------ training
def train_head(node: Node, req: HeadRequest) -> HiddenReply:
    """``h_k`` of each client's mini-batch ``step`` under its θ_i."""
    eng, split = node.eng, node.sides.split
    scratch, out = node.scratch(req.clients, req.received), {}
    for c in req.clients:
        ids, mask = seq_task(eng).inputs(rows_of(eng, req.round, c, req.step))
        with swapped_in(eng.model, scratch.client(c).params):
            out[c] = split.head_forward(ids, mask)
    return HiddenReply(hidden=out)


def train_tail(node: Node, req: TailRequest) -> TailReply:
    """Each client's loss and ``∂loss/∂h_{L−1}``; keeps its tail gradients."""
    eng, s = node.eng, node.sides
    scratch, grads, losses = node.load(), {}, []
    for c in req.clients:
        ids, mask = seq_task(eng).inputs(rows := rows_of(eng, req.round, c, req.step))
        mine = scratch.client(c)

        def loss_fn(out, rows=rows, ids=ids, mask=mask, table=mine.table):
            return seq_task(eng).out_loss(out, rows, ids, mask, table)

        with swapped_in(eng.model, mine.params):
            loss, grad = s.split.tail_backward(req.hidden[c], loss_fn)
            mine.grads = {n: p.grad for n, p in s.node.items() if p.grad is not None}
            for p in s.node.values():
                p.grad = None
        grads[c] = Message(grad.tensor)
        losses.append(float(loss))
    node.save(scratch)
    return TailReply(grads=grads, losses=losses)


def train_back(node: Node, req: BackRequest) -> BackReply:
    """The head's backward and the optimiser step; uploads of the ``last``."""
    eng, s = node.eng, node.sides
    scratch = node.load()
    for c in req.clients:
        ids, mask = seq_task(eng).inputs(rows_of(eng, req.round, c, req.step))
        mine = scratch.client(c)
        with swapped_in(eng.model, mine.params):
            for n, p in s.node.items():
                g = mine.grads.get(n)
                p.grad = None if g is None else g.clone()
            s.split.head_backward(ids, mask, req.grads[c])
            mine.opt = optimise(s.node, mine.opt, s.lr, s.optimizer)
            mine.params = snapshot(s.node)
        mine.grads = {}
    node.save(scratch)
    if not req.last:  # no client's local phase ends here
        return BackReply()
    params = [scratch.client(c).params for c in req.last]
    return BackReply(uploads={n: torch.stack([t[n] for t in params]) for n in s.node})


# ----------------------------------------- encoding (discriminative configs)
def enc_head(node: Node, req: EncHeadRequest) -> HiddenReply:
    """``h_k`` of the batches ``entries`` of the node's encoding plan."""
    eng, split = node.eng, node.sides.split
    scratch, out = node.scratch(req.clients, req.received), {}
    plan = encode_plan(eng, req.clients, req.splits)
    for i in req.entries:
        ids, mask = _tokens(eng, plan[i])
        with swapped_in(eng.model, scratch.client(plan[i].client).params):
            out[i] = split.head_forward(ids, mask)
    return HiddenReply(hidden=out)


def enc_tail(node: Node, req: EncTailRequest) -> EncTailReply:
    """Block ``L−1`` and pooling of each batch of ``entries``.

    Item chunks make a client's item table (kept in the scratch); evaluated
    rows are scored against it, and the reply's ``stats`` hold the task's
    statistics of their top-K metrics (no row).
    """
    eng, split = node.eng, node.sides.split
    scratch = node.load()
    plan = encode_plan(eng, req.clients, req.splits)
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    for i in req.entries:
        b, (_, mask) = plan[i], _tokens(eng, plan[i])
        mine = scratch.client(b.client)
        with swapped_in(eng.model, mine.params), torch.no_grad():
            e = recommender(eng).pool(split.client_tail(req.hidden[i]), mask)
        if b.split == "items":
            _keep_chunk(eng, mine, b.index, e)
            continue
        rows = seq_task(eng).eval_rows(b.split, b.client)[b.index : b.index + len(e)]
        scores = e @ mine.item_table(b.client).T
        parts.setdefault(b.split, []).append(
            seq_task(eng).row_metrics(b.split, rows, scores)
        )
    node.save(scratch)
    return EncTailReply(stats=stats_of(eng, parts) if parts else None)


def _keep_chunk(
    eng: EmbeddedEngine, mine: ClientScratch, j: int, e: torch.Tensor
) -> None:
    """Keep pooled item chunk ``j`` ``(chunk, d)``; the last one makes the table."""
    mine.item_chunks[j] = e
    n_chunks = len(recommender(eng).item_batches()[0])
    if j == n_chunks - 1:  # the client's table is complete
        chunks = [mine.item_chunks[x] for x in range(n_chunks)]
        mine.table = recommender(eng).in_item_order(chunks)
        mine.item_chunks = {}


def _tokens(eng: EmbeddedEngine, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of encoding batch ``b`` (a :class:`Batch`)."""
    if b.split == "items":
        return recommender(eng).item_batches()[0][b.index]
    task = seq_task(eng)
    rows = task.eval_rows(b.split, b.client)[b.index : b.index + task.batch]
    history = task.fed.samples[b.split].history
    return recommender(eng).sequence_tokens([history[r] for r in rows])
