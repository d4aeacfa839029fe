"""A node's side of the FELLRec split (see :mod:`fedrec.flower.split`).

One handler per message kind, a function ``(Node, request) -> reply`` over the
typed messages of :mod:`fedrec.flower.split_wire`; :data:`HANDLERS` maps each
``(phase, request type)`` to its handler and :func:`register` puts them on a
ClientApp. Training: ``train.split_head`` / ``train.split_tail`` /
``train.split_back`` (a discriminative config first encodes each client's
item table: ``train.split_enc_head`` / ``train.split_enc_tail``); evaluation:
``evaluate.split_gen_head`` / ``evaluate.split_gen_tail`` (generative, a pair
per token; here, with the KV caches they keep) or ``evaluate.split_enc_head``
/ ``evaluate.split_enc_tail`` (discriminative: item tables and evaluated
rows). The training and encoding handlers are in
:mod:`fedrec.flower.split_node_steps`. Each message serves every client (or
evaluated row) of the node it names; what a node holds between messages is
its :class:`~fedrec.flower.split_scratch.Scratch` (its ``-split`` store) and,
while decoding, its KV caches (this process, and its ``-kv`` log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import numpy as np
import torch

from fedrec.flower.growing_log import GrowingLog
from fedrec.flower.node import store_of
from fedrec.flower.split import (
    EvalItem,
    Sides,
    Tensors,
    cache_for,
    eval_items,
    recommender,
    seq_task,
    sides,
    stats_of,
)
from fedrec.flower.split_node_steps import (
    enc_head,
    enc_tail,
    train_back,
    train_head,
    train_tail,
)
from fedrec.flower.split_scratch import Scratch
from fedrec.flower.split_wire import (
    BackRequest,
    EncHeadRequest,
    EncTailRequest,
    GenHeadReply,
    GenHeadRequest,
    GenTailReply,
    GenTailRequest,
    HeadRequest,
    Reply,
    Request,
    Stats,
    TailRequest,
)
from fedrec.models.causal_lm import swapped_in
from fedrec.models.split import Message

if TYPE_CHECKING:
    from flwr.app import Context
    from flwr.app import Message as FlwrMessage
    from flwr.clientapp import ClientApp
    from transformers import DynamicCache

    from fedrec.fl.simulate import EmbeddedEngine
    from fedrec.flower.store import NodeStore

EngineOf = Callable[["Context"], "EmbeddedEngine"]
# a row's decoding caches in a process: "head" (blocks [0, k)), "tail" (L−1)
Side = Literal["head", "tail"]
RowCaches = dict[Side, "DynamicCache"]


@dataclass
class Node:
    """What a handler works with: the node's engine, its split, its run's stores.

    ``store``: the scratch (``-split``); ``kv``: the log of its decoding caches
    (``-kv``).
    """

    eng: EmbeddedEngine
    sides: Sides
    store: NodeStore
    kv: GrowingLog

    @classmethod
    def of(cls, msg: FlwrMessage, context: Context, engine_of: EngineOf) -> Node:
        """The node serving ``msg``."""
        eng = engine_of(context)
        kv = GrowingLog(store_of(msg, context, "-kv").root)
        return cls(eng, sides(eng), store_of(msg, context, "-split"), kv)

    @property
    def root(self) -> Path:
        """The node's store: keys this process's caches of its decoding."""
        return self.store.root

    def load(self) -> Scratch:
        """The scratch as the node's last message left it."""
        return Scratch.of(self.store.load() or {})

    def scratch(self, clients: list[int], received: Tensors | None) -> Scratch:
        """The scratch; a fresh one (saved) if the request carries θ_i.

        The first message of a round's training or evaluation carries each
        client's node-side θ_i as received.
        """
        if received is None:
            return self.load()
        scratch = Scratch.fresh(clients, received)
        self.save(scratch)
        return scratch

    def save(self, scratch: Scratch) -> None:
        """Leave ``scratch`` for the node's next message."""
        self.store.save(scratch.flat())


# ---------------------------------------------------------------- decoding
def gen_head(node: Node, req: GenHeadRequest) -> GenHeadReply:
    """``h_k`` of each open row's prompt and tokens so far (newest only after step 0).

    Also the rows whose block ``L−1`` cache this process holds.
    """
    scratch = node.scratch(req.clients, req.received)
    items = eval_items(node.eng, req.clients)
    _restore(node.kv, node.root, node.sides)  # as the node's last message left them
    if not req.step:  # a new decoding: the caches of others go
        _forget(node.root)
        node.kv.reset()
    out, tail_cached = {}, []
    for i in req.open:
        caches = _KV.setdefault((node.root, req.round, i), {})
        tokens = scratch.tokens.get(i)
        params = scratch.client(items[i].client).params
        out[i], cached = _row_head(node, caches, items[i], tokens, params, req.step)
        if cached:
            tail_cached.append(i)
    _persist(node.kv, node.root)
    return GenHeadReply(hidden=out, tail_cached=tail_cached)


def _row_head(
    node: Node,
    caches: RowCaches,
    item: EvalItem,
    tokens: torch.Tensor | None,
    params: Tensors,
    step: int,
) -> tuple[Message, bool]:
    """One row's ``h_k`` message, and whether its block ``L−1`` cache is held.

    Blocks ``[0, k)`` run over the newest token with this process's cache of
    them, else (step 0, or no cache) over the whole prefix, rebuilding it.
    """
    eng, s = node.eng, node.sides
    history = seq_task(eng).fed.samples[item.split].history[item.row]
    ids, _ = recommender(eng).encode(recommender(eng).prompt_texts([history]))  # (1, P)
    seq = torch.cat([ids, ids[:, :0] if tokens is None else tokens], 1)
    n = seq.shape[1]
    head, start = caches.get("head"), n - 1
    if not step or not _holds(head, 0, n):
        head = caches["head"] = cache_for(s)
        start = 0
    tail_held = bool(step) and _holds(caches.get("tail"), s.split.L - 1, n)
    pos = torch.arange(start, n).unsqueeze(0)
    mask = torch.ones_like(seq)
    with swapped_in(eng.model, params), torch.no_grad():
        up = s.split.client_head(seq[:, start:], mask, pos, head)
    keep = slice(-1, None) if step else slice(None)  # the server has the rest
    return Message(up.tensor[:, keep], mask, pos[:, keep]), tail_held


def gen_tail(node: Node, req: GenTailRequest) -> GenTailReply:
    """Each open row's next token (kept); the rows still open, or the stats.

    ``h_{L−1}`` is of the whole prefix, or of the newest position only where
    the head reported this node's cache: a reported cache now gone (its store
    lost since the head) changes nothing and replies ``missing``.
    """
    eng, last = node.eng, node.sides.split.L - 1
    scratch, items = node.load(), eval_items(eng, req.clients)
    _restore(node.kv, node.root, node.sides)
    caches = {i: _KV.setdefault((node.root, req.round, i), {}) for i in req.open}
    missing = [i for i in req.open if _lost(req.hidden[i], caches[i], last)]
    if missing:
        return GenTailReply(open=list(req.open), missing=missing)
    still = []
    for i in req.open:
        params = scratch.client(items[i].client).params
        nxt = _next_token(node, caches[i], req.hidden[i], params)  # (1, 1)
        new = scratch.tokens.get(i, torch.zeros(1, 0).long())
        scratch.tokens[i] = torch.cat([new, nxt], 1)
        if int(nxt) != recommender(eng).tok.eos_token_id:
            if req.step + 1 < recommender(eng).max_new_tokens:
                still.append(i)
    node.save(scratch)
    if not still:  # decoding done: no caches to keep
        _forget(node.root)
        node.kv.reset()
    _persist(node.kv, node.root)
    if still or not items:
        return GenTailReply(open=still)
    return GenTailReply(open=[], stats=_scores(eng, scratch, items))


def _lost(h: Message, caches: RowCaches, last: int) -> bool:
    """Whether ``h`` is the newest position only, but block ``last``'s cache is gone."""
    n = h.length
    return h.tensor.shape[1] < n and not _holds(caches.get("tail"), last, n)


def _next_token(
    node: Node, caches: RowCaches, h: Message, params: Tensors
) -> torch.Tensor:
    """The greedy next token ``(1, 1)`` of a row from its ``h_{L−1}``."""
    s = node.sides
    n, tail = h.length, caches.get("tail")
    if _holds(tail, s.split.L - 1, n):
        h = h.newest()
    else:  # no cache in this process: block L−1 over the whole prefix
        tail = caches["tail"] = cache_for(s)
    with swapped_in(node.eng.model, params), torch.no_grad():
        logits = s.split.client_tail(h, tail, last=True)
    return logits[:, -1].argmax(-1, keepdim=True)


# ------------------------------------------------- the handlers on a ClientApp
Handler = Callable[[Node, Any], Reply]  # each takes its own kind's request
HANDLERS: dict[tuple[str, type[Request]], Handler] = {
    ("train", HeadRequest): train_head,
    ("train", TailRequest): train_tail,
    ("train", BackRequest): train_back,
    ("train", EncHeadRequest): enc_head,
    ("train", EncTailRequest): enc_tail,
    ("evaluate", EncHeadRequest): enc_head,
    ("evaluate", EncTailRequest): enc_tail,
    ("evaluate", GenHeadRequest): gen_head,
    ("evaluate", GenTailRequest): gen_tail,
}


def register(app: ClientApp, engine_of: EngineOf) -> None:
    """Register :data:`HANDLERS` on a fedrec ClientApp (``<phase>.<KIND>``)."""
    for (phase, request), handler in HANDLERS.items():
        getattr(app, phase)(request.KIND)(_served(request, handler, engine_of))


def _served(
    request: type[Request], handler: Handler, engine_of: EngineOf
) -> Callable[[FlwrMessage, Context], FlwrMessage]:
    """A Flower handler: unpack the request, run ``handler``, pack its reply."""
    from flwr.app import Message as FlwrMessage

    def serve(msg: FlwrMessage, context: Context) -> FlwrMessage:
        node = Node.of(msg, context, engine_of)
        reply = handler(node, request.from_content(msg.content))
        return FlwrMessage(content=reply.to_content(), reply_to=msg)

    return serve


# ------------------------------------------------------ the decoding's caches
_Row = tuple[Path, int, int]  # (node store, round, evaluated row)
# each row's KV caches in this process ("head": blocks [0, k), "tail": block
# L−1). Each message appends what they gained to the node's "-kv" log, so that
# a message served by another process (a deployed SuperNode starts one per
# message) restores them; where they are gone, the node rebuilds them from the
# prefix, with the same tokens
_KV: dict[_Row, RowCaches] = {}
# node store -> the version of its "-kv" log that this process's _KV is
_KV_GEN: dict[Path, tuple[int, int]] = {}
# (node store, round, row, head or tail) -> (the cache, {layer: positions in
# the log}): what _persist has appended of each cache this process holds
_SAVED: dict[tuple[Path, int, int, Side], tuple[DynamicCache, dict[int, int]]] = {}


class KvEntry(NamedTuple):
    """An entry of the ``-kv`` log: one layer's keys or values of a row's cache.

    Named ``"<round>|<row>|<side>|<layer>|<part>"``; ``side``: ``head``
    (blocks ``[0, k)``) or ``tail`` (block ``L−1``); ``part``: ``k`` or ``v``.
    """

    round: int
    row: int
    side: Side
    layer: int
    part: str

    @property
    def name(self) -> str:
        """The entry's name in the log."""
        return "|".join(map(str, self))

    @classmethod
    def parse(cls, name: str) -> KvEntry:
        """The entry named ``name``."""
        rnd, row, side, layer, part = name.split("|")
        return cls(int(rnd), int(row), cast(Side, side), int(layer), part)


def _persist(kv: GrowingLog, root: Path) -> None:
    """Append to ``kv`` the positions this process's caches of ``root`` gained.

    Slices of the layers' keys and values ``(1, heads, positions, head_dim)``
    (:class:`KvEntry`); a cache rebuilt since (a new object) goes from
    position 0, replacing its entry.
    """
    new = {}
    for (r, rnd, i), caches in _KV.items():
        if r != root:
            continue
        for side, cache in caches.items():
            held, done = _SAVED.get((r, rnd, i, side), (None, {}))
            if held is not cache:
                done = {}
            for layer, lay in enumerate(cache.layers):
                keys = getattr(lay, "keys", None)
                values = getattr(lay, "values", None)
                if keys is None or values is None or not keys.numel():
                    continue
                n, start = keys.shape[-2], done.get(layer, 0)
                start = start if start <= n else 0
                if n > start:
                    k = KvEntry(rnd, i, side, layer, "k")
                    new[k.name] = (start, keys[..., start:, :])
                    new[k._replace(part="v").name] = (start, values[..., start:, :])
                    done[layer] = n
            _SAVED[(r, rnd, i, side)] = (cache, done)
    kv.append(new)
    _KV_GEN[root] = kv.version()


def _restore(kv: GrowingLog, root: Path, s: Sides) -> None:
    """Make this process's caches of ``root`` those its ``-kv`` log holds.

    Nothing to do when this process committed the log's newest version itself.
    """
    gen = kv.version()
    if _KV_GEN.get(root) == gen:
        return
    _forget(root)
    saved = kv.read()
    for entry in [KvEntry.parse(n) for n in sorted(saved)]:
        if entry.part != "k":
            continue
        keys, values = saved[entry.name], saved.get(entry._replace(part="v").name)
        if values is None or values.shape != keys.shape:
            continue  # a half entry: that cache is rebuilt from the prefix
        row: _Row = (root, entry.round, entry.row)
        cache = _KV.setdefault(row, {}).setdefault(entry.side, cache_for(s))
        cache.update(keys, values, entry.layer)
        _, done = _SAVED.setdefault((*row, entry.side), (cache, {}))
        done[entry.layer] = keys.shape[-2]
    _KV_GEN[root] = gen


def _holds(cache: DynamicCache | None, layer: int, n: int) -> bool:
    """Whether ``cache`` holds the first ``n − 1`` positions at ``layer``."""
    return cache is not None and cache.get_seq_length(layer) == n - 1


def _forget(root: Path) -> None:
    """Drop this process's KV caches of node store ``root``'s decoding."""
    for row in [r for r in _KV if r[0] == root]:
        del _KV[row]
    for cache in [c for c in _SAVED if c[0] == root]:
        del _SAVED[cache]


# ------------------------------------------------------------------- scoring
def _scores(eng: EmbeddedEngine, scratch: Scratch, items: list[EvalItem]) -> Stats:
    """``"<split>/<name>"``: the task's statistics of the decoded titles' metrics.

    Grounded on this node, in the chunks of one client's rows that
    :meth:`~fedrec.fl.seq.SeqRecTask.client_scores` scores in one process;
    the per-row metrics stay here.
    """
    titles = recommender(eng).titles_of(
        [scratch.tokens[i][0].tolist() for i in range(len(items))]
    )
    chunks: dict[tuple[str, int], list[int]] = {}
    for i, item in enumerate(items):
        chunks.setdefault((item.split, item.client), []).append(i)
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    for (split, _), mine in chunks.items():
        for b in range(0, len(mine), seq_task(eng).batch):
            idx = mine[b : b + seq_task(eng).batch]
            rows = np.asarray([items[i].row for i in idx])
            scores = recommender(eng).ground([titles[i] for i in idx])
            metrics = seq_task(eng).row_metrics(split, rows, scores)
            parts.setdefault(split, []).append(metrics)
    return stats_of(eng, parts)
