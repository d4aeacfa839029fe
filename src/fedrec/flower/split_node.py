"""A node's side of the FELLRec split (see :mod:`fedrec.flower.split`).

Training: ``train.split_head`` / ``train.split_tail`` / ``train.split_back``
(a discriminative config first encodes each client's item table:
``train.split_enc_head`` / ``train.split_enc_tail``); evaluation:
``evaluate.split_gen_head`` / ``evaluate.split_gen_tail`` (generative, a pair
per token) or ``evaluate.split_enc_head`` / ``evaluate.split_enc_tail``
(discriminative: item tables and evaluated rows). Each message serves every
client (or evaluated row) of the node it names; what a node holds between
messages is in its scratch store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedrec.fl.seq import concat_scores
from fedrec.flower.growing_log import GrowingLog
from fedrec.flower.mods import HIDDEN, STATS, UPLOADS
from fedrec.flower.node import store_of
from fedrec.flower.records import from_record, to_record
from fedrec.flower.split import (
    Batch,
    Tensors,
    cache_for,
    encode_plan,
    eval_items,
    hidden,
    hidden_record,
    optimise,
    params_of,
    put,
    rows_of,
    scratch_of,
    sides,
    snapshot,
)
from fedrec.models.causal_lm import swapped_in
from fedrec.models.split import Message


def register(app: Any, engine_of: Callable[[Any], Any]) -> None:
    """Register the split's message handlers on a fedrec ClientApp."""
    from flwr.app import Context, MetricRecord, RecordDict
    from flwr.app import Message as FlwrMessage

    def setup(msg: FlwrMessage, context: Context):
        eng = engine_of(context)
        cfg = msg.content["config"]
        store = store_of(msg, context, "-split")
        return eng, sides(eng), int(cfg["round"]), int(cfg["step"]), cfg, store

    def reply(msg: FlwrMessage, records: dict[str, Tensors], **metrics: Any):
        content = RecordDict({k: to_record(v) for k, v in records.items()})
        if metrics:
            content["metrics"] = MetricRecord(metrics)
        return FlwrMessage(content=content, reply_to=msg)

    def scratch(msg: FlwrMessage, store: Any, clients: list[int]) -> Tensors:
        """The node's scratch; a fresh one if the message carries θ_i.

        The first message of a round's training or evaluation carries each
        client's node-side θ_i as received.
        """
        if "received" not in msg.content.array_records:
            return store.load() or {}
        got, saved = from_record(msg.content["received"]), {}
        for i, c in enumerate(clients):
            put(saved, c, {n: t[i] for n, t in got.items()})
        store.save(saved)
        return saved

    # ------------------------------------------------------------ training
    @app.train("split_head")
    def head(msg: FlwrMessage, context: Context) -> FlwrMessage:
        eng, s, rnd, step, cfg, store = setup(msg, context)
        clients = list(cfg["clients"])
        saved, out = scratch(msg, store, clients), {}
        for c in clients:
            ids, mask = eng.task.inputs(rows_of(eng, rnd, c, step))
            with swapped_in(eng.model, params_of(saved, c)):
                out[c] = s.split.head_forward(ids, mask).tensors()
        return reply(msg, {HIDDEN: hidden_record(out)})

    @app.train("split_tail")
    def tail(msg: FlwrMessage, context: Context) -> FlwrMessage:
        eng, s, rnd, step, cfg, store = setup(msg, context)
        saved, down = store.load() or {}, from_record(msg.content[HIDDEN])
        out, losses = {}, []
        for c in cfg["clients"]:
            ids, mask = eng.task.inputs(rows := rows_of(eng, rnd, c, step))
            table = scratch_of(saved, c, "tab:").get("table")  # discriminative

            def loss_fn(out, rows=rows, ids=ids, mask=mask, table=table):
                return eng.task.out_loss(out, rows, ids, mask, table)

            with swapped_in(eng.model, params_of(saved, c)):
                loss, grad = s.split.tail_backward(Message.of(hidden(down, c)), loss_fn)
                grads = {n: p.grad for n, p in s.node.items() if p.grad is not None}
                for p in s.node.values():
                    p.grad = None
            put(saved, c, grads, "grad:")  # until the head's backward
            out[c] = {"tensor": grad.tensor}
            losses.append(float(loss))
        store.save(saved)
        return reply(msg, {HIDDEN: hidden_record(out)}, losses=losses)

    @app.train("split_back")
    def back(msg: FlwrMessage, context: Context) -> FlwrMessage:
        eng, s, rnd, step, cfg, store = setup(msg, context)
        saved, up = store.load() or {}, from_record(msg.content[HIDDEN])
        done: dict[int, Tensors] = {}
        for c in cfg["clients"]:
            ids, mask = eng.task.inputs(rows_of(eng, rnd, c, step))
            pending = scratch_of(saved, c, "grad:")
            with swapped_in(eng.model, params_of(saved, c)):
                for n, p in s.node.items():
                    g = pending.get(n)
                    p.grad = None if g is None else g.clone()
                s.split.head_backward(ids, mask, Message(up[f"{c}/tensor"]))
                opt = optimise(s.node, scratch_of(saved, c, "opt:"), s.lr, s.optimizer)
                values = snapshot(s.node)
            put(saved, c, {}, "grad:")
            put(saved, c, opt, "opt:")
            put(saved, c, values)
            done[c] = values
        store.save(saved)
        last = list(cfg["last"])  # clients whose local phase ends here: upload
        if not last:
            return reply(msg, {})
        return reply(
            msg, {UPLOADS: {n: torch.stack([done[c][n] for c in last]) for n in s.node}}
        )

    # ------------------------------------- encoding (discriminative configs)
    def enc_head(msg: FlwrMessage, context: Context) -> FlwrMessage:
        """``h_k`` of the batches ``entries`` of the node's encoding plan."""
        eng, s, _, _, cfg, store = setup(msg, context)
        clients = list(cfg["clients"])
        saved, out = scratch(msg, store, clients), {}
        plan = encode_plan(eng, clients, list(cfg["splits"]))
        for i in range(*cfg["entries"]):
            ids, mask = _tokens(eng, plan[i])
            with swapped_in(eng.model, params_of(saved, plan[i].client)):
                out[i] = s.split.head_forward(ids, mask).tensors()
        return reply(msg, {HIDDEN: hidden_record(out)})

    def enc_tail(msg: FlwrMessage, context: Context) -> FlwrMessage:
        """Block ``L−1`` and pooling of each batch of ``entries``.

        Item chunks make a client's item table (kept in the scratch); evaluated
        rows are scored against it, and the reply's ``stats`` hold the task's
        statistics of their top-K metrics (no row).
        """
        eng, s, _, _, cfg, store = setup(msg, context)
        saved, down = store.load() or {}, from_record(msg.content[HIDDEN])
        plan = encode_plan(eng, list(cfg["clients"]), list(cfg["splits"]))
        n_chunks = len(eng.model.item_batches()[0])
        parts: dict[str, list[dict[str, np.ndarray]]] = {}
        for i in range(*cfg["entries"]):
            b, (_, mask) = plan[i], _tokens(eng, plan[i])
            with swapped_in(eng.model, params_of(saved, b.client)), torch.no_grad():
                e = eng.model.pool(
                    s.split.client_tail(Message.of(hidden(down, i))), mask
                )
            if b.split == "items":
                put(saved, b.client, {"e": e}, f"item{b.index}:")
                if b.index == n_chunks - 1:  # the client's table is complete
                    es = [
                        scratch_of(saved, b.client, f"item{j}:")["e"]
                        for j in range(n_chunks)
                    ]
                    put(saved, b.client, {"table": eng.model.in_item_order(es)}, "tab:")
                    for j in range(n_chunks):
                        put(saved, b.client, {}, f"item{j}:")
                continue
            table = scratch_of(saved, b.client, "tab:")["table"]
            rows = eng.task.eval_rows(b.split, b.client)[b.index : b.index + len(e)]
            parts.setdefault(b.split, []).append(
                eng.task.row_metrics(b.split, rows, e @ table.T)
            )
        store.save(saved)
        return reply(msg, {STATS: _stats(eng, parts)} if parts else {})

    for kind in ("train", "evaluate"):
        getattr(app, kind)("split_enc_head")(enc_head)
        getattr(app, kind)("split_enc_tail")(enc_tail)

    # ---------------------------------------------------------- evaluation
    def prefix(eng: Any, saved: Tensors, item: tuple[str, int, int], i: int):
        """Row ``i``'s prompt ids ``(1, P)`` and its tokens so far ``(1, T)``."""
        split, _, row = item
        history = eng.task.fed.samples[split].history[row]
        ids, _ = eng.model.encode(eng.model.prompt_texts([history]))
        return ids, scratch_of(saved, i, "tok:").get("ids", ids[:, :0])

    @app.evaluate("split_gen_head")
    def gen_head(msg: FlwrMessage, context: Context) -> FlwrMessage:
        eng, s, rnd, step, cfg, store = setup(msg, context)
        clients = list(cfg["clients"])
        saved, out = scratch(msg, store, clients), {}
        items = eval_items(eng, clients)
        # the caches as the node's last message left them (a fresh process)
        disk = _kv_log(msg, context)
        _restore(disk, store.root, s)
        if not step:  # a new decoding: the caches of others go
            _forget(store.root)
            disk.reset()
        tail_cached = []  # rows whose block L−1 cache this process holds
        for i in cfg["open"]:
            ids, new = prefix(eng, saved, items[i], i)
            seq = torch.cat([ids, new], 1)
            n = seq.shape[1]
            kv = _KV.setdefault((store.root, rnd, i), {})
            head = kv.get("head")
            start = n - 1  # with this process's cache: the newest token only
            if not step or not _holds(head, 0, n):
                head = kv["head"] = cache_for(s)
                start = 0  # the whole prefix
            if step and _holds(kv.get("tail"), s.split.L - 1, n):
                tail_cached.append(i)
            pos = torch.arange(start, n).unsqueeze(0)
            mask = torch.ones_like(seq)
            with swapped_in(eng.model, params_of(saved, items[i][1])):
                with torch.no_grad():
                    up = s.split.client_head(seq[:, start:], mask, pos, head)
            keep = slice(-1, None) if step else slice(None)  # the server has the rest
            out[i] = Message(up.tensor[:, keep], mask, pos[:, keep]).tensors()
        _persist(disk, store.root)
        return reply(msg, {HIDDEN: hidden_record(out)}, tail_cached=tail_cached)

    @app.evaluate("split_gen_tail")
    def gen_tail(msg: FlwrMessage, context: Context) -> FlwrMessage:
        eng, s, rnd, step, cfg, store = setup(msg, context)
        clients = list(cfg["clients"])
        saved, down = store.load() or {}, from_record(msg.content[HIDDEN])
        items, still = eval_items(eng, clients), []
        eos = eng.model.tok.eos_token_id
        disk = _kv_log(msg, context)
        _restore(disk, store.root, s)
        # h_{L−1} of the whole prefix, or of the newest position only where
        # the head reported this node's cache: a reported cache now gone
        # (its store lost since the head) makes the server resend them all
        downs = {i: Message.of(hidden(down, i)) for i in cfg["open"]}
        kvs = {i: _KV.setdefault((store.root, rnd, i), {}) for i in cfg["open"]}
        missing = [
            i
            for i, h in downs.items()
            if h.tensor.shape[1] < (n := h.attention_mask.shape[1])
            and not _holds(kvs[i].get("tail"), s.split.L - 1, n)
        ]
        if missing:
            return reply(msg, {}, open=list(cfg["open"]), missing=missing)
        for i, h in downs.items():
            new = scratch_of(saved, i, "tok:").get("ids", torch.zeros(1, 0).long())
            kv, n = kvs[i], h.attention_mask.shape[1]
            tail = kv.get("tail")
            if _holds(tail, s.split.L - 1, n):
                h = Message(h.tensor[:, -1:], h.attention_mask, h.position_ids[:, -1:])
            else:  # no cache in this process: block L−1 over the whole prefix
                tail = kv["tail"] = cache_for(s)
            with swapped_in(eng.model, params_of(saved, items[i][1])):
                with torch.no_grad():
                    logits = s.split.client_tail(h, tail, last=True)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            put(saved, i, {"ids": torch.cat([new, nxt], 1)}, "tok:")
            if int(nxt) != eos and step + 1 < eng.model.max_new_tokens:
                still.append(i)
        store.save(saved)
        if not still:  # decoding done: no caches to keep
            _forget(store.root)
            disk.reset()
        _persist(disk, store.root)
        if still or not items:
            return reply(msg, {}, open=still)
        return reply(msg, {STATS: _scores(eng, saved, items)}, open=[])


# (node store, round, row) -> this process's KV caches of that row's decoding
# ("head": blocks [0, k), "tail": block L−1). Each message appends what they
# gained to the node's "-kv" log, so that a message served by another process
# (a deployed SuperNode starts one per message) restores them; where they are
# gone, the node rebuilds them from the prefix, with the same tokens
_KV: dict[tuple[Any, int, int], dict[str, Any]] = {}
# node store -> the version of its "-kv" log that this process's _KV is
_KV_GEN: dict[Any, tuple[int, int]] = {}
# (node store, round, row, head or tail) -> (the cache, {layer: positions in
# the log}): what _persist has appended of each cache this process holds
_SAVED: dict[tuple[Any, int, int, str], tuple[Any, dict[int, int]]] = {}


def _kv_log(msg: Any, context: Any) -> GrowingLog:
    """The node's log of its decoding caches (in the run's ``-kv`` store)."""
    return GrowingLog(store_of(msg, context, "-kv").root)


def _persist(kv: GrowingLog, root: Any) -> None:
    """Append to ``kv`` the positions this process's caches of ``root`` gained.

    Entries ``"<round>|<row>|<head or tail>|<layer>|<k or v>"``, slices of the
    layers' keys and values ``(1, heads, positions, head_dim)``; a cache
    rebuilt since (a new object) goes from position 0, replacing its entry.
    """
    new = {}
    for (r, rnd, i), caches in _KV.items():
        if r != root:
            continue
        for which, cache in caches.items():
            held, done = _SAVED.get((r, rnd, i, which), (None, {}))
            if held is not cache:
                done = {}
            for layer, lay in enumerate(cache.layers):
                keys = getattr(lay, "keys", None)
                if keys is None or not keys.numel():
                    continue
                n, start = keys.shape[-2], done.get(layer, 0)
                start = start if start <= n else 0
                if n > start:
                    name = f"{rnd}|{i}|{which}|{layer}"
                    new[f"{name}|k"] = (start, keys[..., start:, :])
                    new[f"{name}|v"] = (start, lay.values[..., start:, :])
                    done[layer] = n
            _SAVED[(r, rnd, i, which)] = (cache, done)
    kv.append(new)
    _KV_GEN[root] = kv.version()


def _restore(kv: GrowingLog, root: Any, s: Any) -> None:
    """Make this process's caches of ``root`` those its ``-kv`` log holds.

    Nothing to do when this process committed the log's newest version itself.
    """
    gen = kv.version()
    if _KV_GEN.get(root) == gen:
        return
    _forget(root)
    saved = kv.read()
    for name in sorted(n for n in saved if n.endswith("|k")):
        values = saved.get(name[:-1] + "v")
        if values is None or values.shape != saved[name].shape:
            continue  # a half entry: that cache is rebuilt from the prefix
        rnd, i, which, layer, _ = name.split("|")
        key = (root, int(rnd), int(i))
        cache = _KV.setdefault(key, {}).setdefault(which, cache_for(s))
        cache.update(saved[name], values, int(layer))
        _, done = _SAVED.setdefault((*key, which), (cache, {}))
        done[int(layer)] = saved[name].shape[-2]
    _KV_GEN[root] = gen


def _holds(cache: Any, layer: int, n: int) -> bool:
    """Whether ``cache`` holds the first ``n − 1`` positions at ``layer``."""
    return cache is not None and cache.get_seq_length(layer) == n - 1


def _forget(root: Any) -> None:
    """Drop this process's KV caches of node store ``root``'s decoding."""
    for key in [k for k in _KV if k[0] == root]:
        del _KV[key]
    for key in [k for k in _SAVED if k[0] == root]:
        del _SAVED[key]


def _scores(eng: Any, saved: Tensors, items: list[tuple[str, int, int]]) -> Tensors:
    """``"<split>/<name>"``: the task's statistics of the decoded titles' metrics.

    Grounded on this node, in the chunks of one client's rows that
    :meth:`~fedrec.fl.seq.SeqRecTask.client_scores` scores in one process;
    the per-row metrics stay here.
    """
    tokens = [
        scratch_of(saved, i, "tok:")["ids"][0].tolist() for i in range(len(items))
    ]
    titles = eng.model.titles_of(tokens)
    chunks: dict[tuple[str, int], list[int]] = {}
    for i, (split, c, _) in enumerate(items):
        chunks.setdefault((split, c), []).append(i)
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    for (split, _), mine in chunks.items():
        for b in range(0, len(mine), eng.task.batch):
            idx = mine[b : b + eng.task.batch]
            rows = np.asarray([items[i][2] for i in idx])
            scores = eng.model.ground([titles[i] for i in idx])
            metrics = eng.task.row_metrics(split, rows, scores)
            parts.setdefault(split, []).append(metrics)
    return _stats(eng, parts)


def _stats(eng: Any, parts: dict[str, list[dict[str, np.ndarray]]]) -> Tensors:
    """The ``stats`` record (``"<split>/<name>"``) of per-split row metrics.

    ``eng.task.stats`` of each split's rows: fixed-shape per-group sums.
    """
    return {
        f"{split}/{k}": torch.as_tensor(v)
        for split, ps in parts.items()
        for k, v in eng.task.stats(concat_scores(ps)).items()
    }


def _tokens(eng: Any, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of encoding batch ``b`` (a :class:`Batch`)."""
    if b.split == "items":
        return eng.model.item_batches()[0][b.index]
    rows = eng.task.eval_rows(b.split, b.client)[b.index : b.index + eng.task.batch]
    history = eng.task.fed.samples[b.split].history
    return eng.model.sequence_tokens([history[r] for r in rows])
