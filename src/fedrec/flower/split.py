"""FELLRec's flexible storage over Flower: a config with ``backbone.split_k``.

A config with ``backbone.split_k = k`` on ``--engine flower``, generative
(causal LM) or discriminative (text encoder), runs through FELLRec's split
(fellrec.md §5): each client's node runs the embeddings, blocks ``[0, k)``,
the last block and the output part (LM head; mean pooling) on its own
tokens; the ServerApp runs blocks ``[k, L−1)`` with that client's own
adapters. Token ids, labels, logits, generated titles and pooled embeddings
never leave a node: only the ``hidden`` record (hidden states and their
gradients, ``"<i>/<field>"`` with ``i`` a client, an evaluated row or a batch,
checked by the wire audit) and the node-side adapters cross.

**Training** (:func:`fedrec.flower.split_server.train_round`) is the embedded
engine's round — the same sampled clients, mini-batch plans
(``client_plans``), fresh Adam with the method's learning rates, then
``server_update`` (update guard, FELLRec's dynamic balance) — with each step's
forward and backward cut into messages, one of each kind per node and step for
all of its clients that have a batch then (the parts of
:meth:`~fedrec.models.split.SplitModel.step`):

- ``train.split_head`` (round, step, clients; at step 0 of a generative
  round also each client's node-side θ_i) — the node replies ``h_k`` (with
  mask and positions);
- ``train.split_tail`` (``h_{L−1}``) — the loss on the node's own labels and
  ``∂loss/∂h_{L−1}``; the node keeps its tail gradients;
- ``train.split_back`` (``∂loss/∂h_k``; the clients whose local phase ends
  here) — the head backward and the node's optimiser step; those clients'
  node-side θ_i come back (their uploads).

The server steps each client's server-side θ_i with its own Adam state
between the tail and the back message, recomputing its blocks' forward for the
backward, so no graph is held across messages. A discriminative config's
round first encodes each training client's item table under its θ_i (the
local phase's stage 1, as in one process): ``train.split_enc_head`` (its
first message carries the clients' node-side θ_i) / ``train.split_enc_tail``
over the batches of :func:`encode_plan`; the node keeps the table in its
scratch, and its tail messages' loss is the
temperature-scaled cross-entropy of the pooled sequence against it
(:meth:`~fedrec.fl.seq.SeqRecTask.out_loss`).

**Evaluation** (:func:`fedrec.flower.split_server.evaluate_round`) of a
discriminative config encodes each client's item table and evaluated rows
through the split, ``ENTRIES_PER_MESSAGE`` batches a message pair
(``evaluate.split_enc_head`` / ``evaluate.split_enc_tail``; the node scores its
rows against the table and replies the task's statistics of their top-K
metrics). A generative config
decodes each evaluated row's title greedily through the split, a message pair per
token for all of a node's open rows: ``evaluate.split_gen_head`` (step 0 also
carries each client's node-side θ_i; the node replies ``h_k`` of the row's
prompt and the tokens so far, and the rows whose block ``L−1`` cache its
process holds) and ``evaluate.split_gen_tail`` (``h_{L−1}``: the node takes
the next token, keeps it, and replies which rows are still open). The server
keeps a KV cache of its blocks per row for the round, so after the prompt only
the newest position's ``h_k`` goes up; down go the newest position's
``h_{L−1}`` for the rows whose cache the node reported, the whole prefix's for
the others. A node keeps its KV caches (blocks ``[0, k)`` and ``L−1``) in its
process and leaves them in its ``-kv`` store after each message, so a message
served by another process (a deployed SuperNode starts one per message)
restores them; where they are gone it rebuilds them from the prefix — the
tokens of :meth:`~fedrec.models.split.SplitModel.greedy` either way. A tail
message that finds a reported cache gone changes nothing and replies
``missing``; the server resends it with whole prefixes. When a node's rows are
all done, its last reply holds the task's statistics of their top-K metrics:
the node grounds its titles to items itself (the frozen base model's last
hidden states, as in one process) and the server pools.

Between messages a node keeps each client's node-side parameters, pending
gradients, moments and item table, and each evaluated row's tokens, in its
scratch (:class:`~fedrec.flower.split_scratch.Scratch`, saved in the run's
``-split`` :class:`~fedrec.flower.store.NodeStore`), so any worker can serve
any message and one model serves every client (adapters are swapped in). Not
on Flower: per-client depths (``backbone.split_k_per_client``), LDP, and
methods with private parameters (FELLRec has none).

Where: each message kind is a request dataclass and a reply dataclass with
named, typed fields, packed into Flower's records only in
:mod:`fedrec.flower.split_wire` (e.g. ``train.split_tail``:
:class:`~fedrec.flower.split_wire.TailRequest` →
:class:`~fedrec.flower.split_wire.TailReply`). The server builds the requests
(:mod:`fedrec.flower.split_server`; decoding:
:mod:`fedrec.flower.split_server_decode`); a node serves each kind with its
handler in :data:`fedrec.flower.split_node.HANDLERS` (training and encoding:
:mod:`fedrec.flower.split_node_steps`). This module holds what both sides
share.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from fedrec.errors import ConfigError
from fedrec.fl.partition import PRIVATE
from fedrec.fl.seq import GenRecTask, SeqRecTask, concat_scores
from fedrec.fl.stacked import StackedAdam
from fedrec.flower.runconfig import eval_splits
from fedrec.flower.split_scratch import params_of as params_of
from fedrec.flower.split_scratch import put as put
from fedrec.flower.split_scratch import scratch_of as scratch_of
from fedrec.models.causal_lm import swapped_in
from fedrec.models.split import Message, SplitModel

if TYPE_CHECKING:
    from transformers import DynamicCache

    from fedrec.fl.simulate import EmbeddedEngine

Tensors = dict[str, torch.Tensor]


@dataclass
class Sides:
    """Where a config engine's trainable parameters sit in the split.

    ``node``: embeddings side, blocks ``[0, k)``, block ``L−1`` and the head;
    ``server``: blocks ``[k, L−1)``. Names are the engine's (its partition's).
    """

    split: SplitModel
    node: dict[str, nn.Parameter]
    server: dict[str, nn.Parameter]
    lr: dict[str, float]
    optimizer: str


def seq_task(eng: EmbeddedEngine) -> SeqRecTask:
    """``eng``'s task as the sequential (FELLRec) task the split runs."""
    task = eng.task
    if not isinstance(task, SeqRecTask):
        raise ConfigError("the FELLRec split runs sequential (top-K) configs only")
    return task


def recommender(eng: EmbeddedEngine) -> Any:
    """``eng``'s text recommender, a text encoder's or a causal LM's.

    Typed ``Any`` on purpose: the split calls the methods of whichever kind
    :func:`generative` says it is (``item_batches``/``pool`` or
    ``prompt_texts``/``ground``), and both kinds share ``split_k`` and
    ``backbone_attr``.
    """
    return eng.model


def uses_split(eng: EmbeddedEngine) -> bool:
    """Whether ``eng`` trains a text backbone (either kind) through the split."""
    return isinstance(eng.task, SeqRecTask) and int(recommender(eng).split_k) > 0


def generative(eng: EmbeddedEngine) -> bool:
    """Whether ``eng``'s backbone is a causal LM (recommends by decoding)."""
    return isinstance(eng.task, GenRecTask)


@functools.cache
def sides(eng: EmbeddedEngine) -> Sides:
    """The split of ``eng``'s model; refuses what the Flower split cannot run."""
    why = (
        "backbone.split_k_per_client (one k for every client on Flower)"
        if seq_task(eng).split_ks
        else "privacy (LDP)"
        if eng.mods
        else "private parameters"
        if eng.partition.names(PRIVATE)
        else "a learning-rate schedule (train.warmup_rounds, train.lr_decay)"
        if eng.cfg.train.warmup_rounds or eng.cfg.train.lr_decay != 1
        else ""
    )
    if why:
        raise ConfigError(f"the FELLRec split over Flower does not support {why}")
    backbone = getattr(eng.model, recommender(eng).backbone_attr)
    split = SplitModel(backbone, recommender(eng).split_k)
    on_server = split.server_parameters()
    named = dict(recommender(eng).named_parameters())
    up = eng.partition.uploaded
    tc = eng.cfg.train
    return Sides(
        split,
        node={n: named[n] for n in up if id(named[n]) not in on_server},
        server={n: named[n] for n in up if id(named[n]) in on_server},
        lr={n: eng.strategy.learning_rate(n, tc.lr) for n in up},
        optimizer=tc.optimizer,
    )


def node_side_only(eng: EmbeddedEngine) -> int:
    """Free the server's blocks ``[k, L−1)`` of a discriminative node's model.

    FELLRec's flexible storage: a node keeps only its own layers in memory
    (it read the whole checkpoint once, to build them). Each such parameter
    becomes an empty tensor, so a node that ran a server block would fail
    loudly. A generative node keeps them: it grounds titles with the whole
    frozen base model. Returns the number of parameters freed.
    """
    if not uses_split(eng) or generative(eng):
        return 0
    s, freed = sides(eng), 0
    for block in s.split.layers[s.split.k : s.split.L - 1]:
        for p in block.parameters():
            freed += p.numel()
            p.data = torch.empty(0, dtype=p.dtype)
    return freed


def optimise(
    params: dict[str, nn.Parameter],
    state: Tensors,
    lr: float | dict[str, float],
    kind: str = "adam",
) -> Tensors:
    """One step of the engine's optimiser on every parameter with a gradient.

    :class:`~fedrec.fl.stacked.StackedAdam` (``kind``: adam or sgd; ``lr``
    one rate or one per name) on a batch of one client; the gradients are
    cleared. ``state`` holds the moments and the step count (``m:<name>``,
    ``v:<name>``, ``t``; empty at a round's start, as the embedded engine
    starts a fresh optimiser each round); the new state is returned for the
    caller to keep — a node in its scratch, the server per client. Adam is
    elementwise, so a client's two sides stepping apart equal one optimiser
    over both.
    """
    live = {n: p for n, p in params.items() if p.grad is not None}
    with torch.no_grad():
        views = {n: p.data.unsqueeze(0) for n, p in live.items()}  # write through
        opt = StackedAdam(views, lr, kind)
        if state:
            opt.m = {n: state[f"m:{n}"].unsqueeze(0).clone() for n in live}
            opt.v = {n: state[f"v:{n}"].unsqueeze(0).clone() for n in live}
            opt.t = state["t"].clone()
        grads = {n: p.grad.unsqueeze(0) for n, p in live.items()}  # type: ignore[union-attr]
        opt.step(views, grads, torch.ones(1, dtype=torch.bool))
    for p in live.values():
        p.grad = None
    if kind == "sgd":
        return {}
    return {
        **{f"m:{n}": opt.m[n][0] for n in live},
        **{f"v:{n}": opt.v[n][0] for n in live},
        "t": opt.t,
    }


def snapshot(params: dict[str, nn.Parameter]) -> Tensors:
    """Detached copies of ``params``."""
    return {n: p.detach().clone() for n, p in params.items()}


def cache_for(s: Sides) -> DynamicCache:
    """An empty KV cache for the model's blocks (one side's, during decoding)."""
    from transformers import DynamicCache

    return DynamicCache(config=s.split.body.config)


def server_blocks(
    eng: EmbeddedEngine,
    theta: Tensors,
    up: Message,
    cache: DynamicCache | None = None,
) -> Message:
    """The server's blocks ``[k, L−1)`` over ``up`` under a client's ``theta``.

    ``theta``: the client's server-side parameters; no graph is kept (the
    training step's backward runs the forward again).
    """
    with swapped_in(eng.model, theta), torch.no_grad():
        return sides(eng).split.server(up, cache)


def rows_of(eng: EmbeddedEngine, rnd: int, client: int, step: int) -> torch.Tensor:
    """Training rows of ``client``'s mini-batch ``step`` in round ``rnd``."""
    return torch.as_tensor(eng.client_plans(rnd, torch.tensor([client]))[0][step])


@dataclass(frozen=True)
class Batch:
    """One batch a discriminative config's node encodes through the split.

    ``split`` ``"items"``: chunk ``index`` of :meth:`item_batches
    <fedrec.models.text_encoder.TextSeqRecommender.item_batches>` under
    ``client``'s θ (its item table); ``"val"``/``"test"``: the evaluated rows
    ``eval_rows(split, client)[index : index + task.batch]``.
    """

    client: int
    split: str
    index: int


ENTRIES_PER_MESSAGE = 8  # batches per encoding message: ≲ 100 MB for MiniLM


def encode_plan(
    eng: EmbeddedEngine, clients: list[int], splits: list[str]
) -> list[Batch]:
    """Every batch ``clients`` encode: per client its item chunks, then its rows.

    In the order both sides number them (the entries of an encoding message);
    ``splits`` empty: the item tables only (a training round's stage 1).
    """
    n_chunks = len(recommender(eng).item_batches()[0])
    out = []
    for c in clients:
        out += [Batch(c, "items", j) for j in range(n_chunks)]
        for split in splits:
            n = len(seq_task(eng).eval_rows(split, c))
            out += [Batch(c, split, b) for b in range(0, n, seq_task(eng).batch)]
    return out


class EvalItem(NamedTuple):
    """An evaluated row: its split, its client, its index in the split."""

    split: str
    client: int
    row: int


def eval_items(eng: EmbeddedEngine, clients: list[int]) -> list[EvalItem]:
    """Every row ``clients`` evaluate.

    In the order both sides number them (the entries of a decoding message).
    """
    return [
        EvalItem(split, c, int(r))
        for split in eval_splits(eng)
        for c in clients
        for r in seq_task(eng).eval_rows(split, c)
    ]


def stats_of(
    eng: EmbeddedEngine, parts: dict[str, list[dict[str, np.ndarray]]]
) -> dict[str, np.ndarray]:
    """The ``stats`` (``"<split>/<name>"``) of per-split row metrics.

    ``parts``: per split, chunks of :meth:`~fedrec.fl.seq.SeqRecTask.row_metrics`;
    ``seq_task(eng).stats`` of each split's rows: fixed-shape per-group sums.
    """
    return {
        f"{split}/{k}": np.asarray(v)
        for split, ps in parts.items()
        for k, v in seq_task(eng).stats(concat_scores(ps)).items()
    }
