"""The ServerApp's side of the FELLRec split (see :mod:`fedrec.flower.split`).

:func:`train_round` and :func:`evaluate_round` replace the ServerApp's
unsplit rounds for a config with ``backbone.split_k``; around them the run is
the same (:mod:`fedrec.flower.server`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from fedrec.flower.fleet import Fleet, close_round, pooled_metrics
from fedrec.flower.mods import HIDDEN, STATS, UPLOADS
from fedrec.flower.records import from_record, to_record
from fedrec.flower.runconfig import eval_splits
from fedrec.flower.split import (
    ENTRIES_PER_MESSAGE,
    Tensors,
    cache_for,
    encode_plan,
    eval_items,
    generative,
    hidden,
    hidden_record,
    optimise,
    sides,
    snapshot,
)
from fedrec.models.causal_lm import swapped_in
from fedrec.models.split import Message

log = logging.getLogger("fedrec.flower")


class _Link:
    """The server's end of one round's split messages; counts hidden-state bytes.

    ``send(kind, {partition: (records, config)})`` sends one message per node
    and returns ``{partition: reply}`` of the nodes that answered (a failed or
    late node is logged by :meth:`~fedrec.flower.server.Fleet.collect` and
    left out).
    """

    def __init__(self, fleet: Fleet, rnd: int):
        self.fleet, self.rnd = fleet, rnd
        self.bytes = 0  # hidden states and their gradients, both ways

    def send(
        self, kind: str, by_node: dict[int, tuple[dict[str, Tensors], dict[str, Any]]]
    ) -> dict[int, Any]:
        from flwr.app import ConfigRecord, RecordDict
        from flwr.app import Message as FlwrMessage

        msgs = []
        for p, (records, cfg) in sorted(by_node.items()):
            content = RecordDict({k: to_record(v) for k, v in records.items()})
            content["config"] = ConfigRecord(
                {**cfg, "round": self.rnd, "store": self.fleet.key}
            )
            self.bytes += sum(t.nbytes for t in records.get(HIDDEN, {}).values())
            msgs.append(FlwrMessage(content, self.fleet.host[p], kind))
        got = self.fleet.collect(msgs, self.rnd, kind)
        for rep in got.values():
            if HIDDEN in rep.array_records:
                self.bytes += sum(t.nbytes for t in from_record(rep[HIDDEN]).values())
        return got


def train_round(fleet: Fleet, eng: Any, live: set[int], rnd: int) -> dict[str, Any]:
    """The split's version of the ServerApp's ``_train_round``; the metrics.

    Clients of a node that fails are left out of the round from that step
    on (logged, ``failed_partitions``), as in the unsplit round.
    """
    t0, s, parts = time.perf_counter(), sides(eng), fleet.parts
    link = _Link(fleet, rnd)
    clients = eng.sample(rnd)
    ids = clients.tolist()
    received, _ = eng.client_params(clients)
    plans = dict(zip(ids, eng.client_plans(rnd, clients), strict=True))
    mine = {c: {n: received[n][i] for n in s.server} for i, c in enumerate(ids)}
    node_side = {c: {n: received[n][i] for n in s.node} for i, c in enumerate(ids)}
    opt: dict[int, Tensors] = {c: {} for c in ids}
    loss_sum = dict.fromkeys(ids, 0.0)
    failed = {p for p in range(parts) if p not in live}

    def send(kind: str, step: int, active: list[int], records: Callable) -> dict:
        """One message per node with active clients.

        ``records(clients)``: the message's records for them. Returns
        ``{partition: (reply, its clients)}`` of the nodes that answered.
        """
        by_node, of = {}, {}
        for p in sorted({c % parts for c in active}):
            cs = of[p] = [c for c in active if c % parts == p]
            last = [c for c in cs if step == len(plans[c]) - 1]
            by_node[p] = (records(cs), {"step": step, "clients": cs, "last": last})
        got = link.send(f"train.{kind}", by_node)
        failed.update(set(by_node) - set(got))
        return {p: (rep, of[p]) for p, rep in got.items()}

    def hidden_of(per_client: dict[int, Tensors]) -> Callable:
        return lambda cs: {HIDDEN: hidden_record({c: per_client[c] for c in cs})}

    def stacked(cs: list[int]) -> Tensors:
        return {n: torch.stack([node_side[c][n] for c in cs]) for n in s.node}

    if not generative(eng):  # stage 1: each training client's item table
        tabled = [c for c in ids if plans[c] and c % parts not in failed]
        nodes = {
            p: (cs, stacked(cs))
            for p in sorted({c % parts for c in tabled})
            if (cs := [c for c in tabled if c % parts == p])
        }
        got = _encode(link, eng, "train", nodes, mine, [])
        failed.update(set(nodes) - set(got))

    for step in range(max((len(p) for p in plans.values()), default=0)):
        active = [c for c in ids if len(plans[c]) > step and c % parts not in failed]

        def start(cs: list[int], step: int = step) -> dict[str, Tensors]:
            """Step 0: each client's node-side θ_i (unless stage 1 sent it)."""
            return {"received": stacked(cs)} if not step and generative(eng) else {}

        got = send("split_head", step, active, start)
        ups = {
            c: Message.of(hidden(from_record(rep[HIDDEN]), c))
            for rep, cs in got.values()
            for c in cs
        }
        active = [c for c in active if c in ups]
        downs = {}
        for c in active:
            with swapped_in(eng.model, mine[c]), torch.no_grad():
                downs[c] = s.split.server(ups[c]).tensors()
        got = send("split_tail", step, active, hidden_of(downs))
        grads: dict[int, Tensors] = {}
        for rep, cs in got.values():
            rec = from_record(rep[HIDDEN])
            for c, loss in zip(cs, rep["metrics"]["losses"], strict=True):
                loss_sum[c] += float(loss) * len(plans[c][step])
                with swapped_in(eng.model, mine[c]):  # the forward again, with graph
                    leaf, mid = s.split.server_forward(ups[c])
                    g = s.split.server_backward(leaf, mid, Message(rec[f"{c}/tensor"]))
                    opt[c] = optimise(s.server, opt[c], s.lr, s.optimizer)
                    mine[c] = snapshot(s.server)
                grads[c] = {"tensor": g.tensor}
        active = [c for c in active if c in grads]
        got = send("split_back", step, active, hidden_of(grads))
        for rep, cs in got.values():
            last = [c for c in cs if step == len(plans[c]) - 1]
            if last:
                new = from_record(rep[UPLOADS])
                for i, c in enumerate(last):
                    node_side[c] = {n: new[n][i] for n in s.node}
    served = torch.tensor([c % parts not in failed for c in ids], dtype=torch.bool)
    rows = {c: sum(len(b) for b in plans[c]) for c in ids}
    losses = torch.tensor(
        [loss_sum[c] / rows[c] if rows[c] else float("nan") for c in ids],
        dtype=torch.float64,
    )
    whole = [{**node_side[c], **mine[c]} for c in ids]  # each client's trained θ_i
    uploads = {n: torch.stack([t[n] for t in whole]) for n in received}
    m = close_round(eng, rnd, clients, served, uploads, received, losses, t0, failed)
    m.update(received_on_server=sorted(s.node), split_hidden_bytes=link.bytes)
    return m


def evaluate_round(fleet: Fleet, eng: Any, live: set[int], rnd: int) -> dict[str, Any]:
    """The split's version of the ServerApp's ``_evaluate_round``; the metrics.

    Every live node's clients score their evaluated rows through the split: a
    generative config decodes each row's title, a message pair per token
    (:func:`_decode`); a discriminative one encodes item tables and rows
    (:func:`_encode`). The nodes score and reduce their rows to the task's
    statistics; the server sums them (:func:`~fedrec.flower.server.pooled_metrics`).
    """
    s, parts, link = sides(eng), fleet.parts, _Link(fleet, rnd)
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
        replies, extra["split_eval_cached_rows"] = _decode(
            link, eng, nodes, server_side, rnd
        )
    else:
        got = _encode(link, eng, "evaluate", nodes, server_side, eval_splits(eng))
        replies = [r for rs in got.values() for r in rs if STATS in r.array_records]
    return (
        pooled_metrics(eng, replies) | extra | {"split_eval_hidden_bytes": link.bytes}
    )


def _encode(
    link: _Link,
    eng: Any,
    kind: str,
    nodes: dict[int, tuple[list[int], Tensors]],
    server_side: dict[int, Tensors],
    splits: list[str],
) -> dict[int, list[Any]]:
    """Encode each node's :func:`~fedrec.flower.split.encode_plan` through the split.

    ``nodes``: ``{partition: (clients, their node-side θ stacked)}``;
    ``server_side``: each client's server-side θ_i. ``ENTRIES_PER_MESSAGE``
    batches a message pair (``<kind>.split_enc_head``: ``h_k``; the server's
    blocks; ``<kind>.split_enc_tail``: the node pools, keeps item tables and
    scores rows). Returns the tail replies of every node that answered them all.
    """
    s, per = sides(eng), ENTRIES_PER_MESSAGE
    plans = {p: encode_plan(eng, cs, splits) for p, (cs, _) in nodes.items()}
    out: dict[int, list[Any]] = {p: [] for p in nodes}
    for first in range(0, max(map(len, plans.values()), default=0), per):
        cfg = {
            p: {
                "step": first // per,
                "clients": nodes[p][0],
                "splits": splits,
                "entries": [first, min(first + per, len(plans[p]))],
            }
            for p in out
            if first < len(plans[p])
        }
        heads = link.send(
            f"{kind}.split_enc_head",
            {
                p: ({} if first else {"received": nodes[p][1]}, c)
                for p, c in cfg.items()
            },
        )
        downs = {}
        for p, rep in heads.items():
            rec, mid = from_record(rep[HIDDEN]), {}
            for i in range(*cfg[p]["entries"]):
                with swapped_in(eng.model, server_side[plans[p][i].client]):
                    with torch.no_grad():
                        mid[i] = s.split.server(Message.of(hidden(rec, i))).tensors()
            downs[p] = ({HIDDEN: hidden_record(mid)}, cfg[p])
        tails = link.send(f"{kind}.split_enc_tail", downs)
        for p in cfg:
            if p in tails:
                out[p].append(tails[p])
            else:  # failed (logged): out of this exchange
                del out[p]
    return out


def _decode(
    link: _Link,
    eng: Any,
    nodes: dict[int, tuple[list[int], Tensors]],
    server_side: dict[int, Tensors],
    rnd: int,
) -> tuple[list[Any], int]:
    """Greedy decoding of every evaluated row, a message pair per token.

    ``nodes``, ``server_side``: as for :func:`_encode`. Returns the replies
    that hold a node's scores, and how many (row, token) tail steps found the
    node's block ``L−1`` cache (those got only the newest position).
    """
    s = sides(eng)
    items = {p: eval_items(eng, cs) for p, (cs, _) in nodes.items()}
    still = {p: list(range(len(items[p]))) for p in nodes if items[p]}
    scores = {}
    # per (partition, row): the KV cache of the server's blocks, and h_{L−1}
    # of the prefix so far (a node without its cache rebuilds block L−1 from
    # it; a node that reports its cache gets only the newest position)
    caches: dict[tuple[int, int], Any] = {}
    done: dict[tuple[int, int], torch.Tensor | None] = {}
    n_cached = 0
    for step in range(eng.model.max_new_tokens):
        if not still:
            break
        log.info(
            "round %d evaluate: token %d/%d, %d rows decoding",
            rnd,
            step + 1,
            eng.model.max_new_tokens,
            sum(map(len, still.values())),
        )

        def config(p: int, step: int = step) -> dict[str, Any]:
            return {"step": step, "clients": nodes[p][0], "open": still[p]}

        heads = link.send(
            "evaluate.split_gen_head",
            {
                p: ({"received": nodes[p][1]} if not step else {}, config(p))
                for p in still
            },
        )
        cached = {}  # per node: rows whose block L−1 cache the node holds
        for p, rep in heads.items():
            rec = from_record(rep[HIDDEN])
            cached[p] = set(rep["metrics"]["tail_cached"])
            n_cached += len(cached[p])
            for i in still[p]:
                if not step:
                    caches[p, i], done[p, i] = cache_for(s), None
                up = Message.of(hidden(rec, i))  # the newest positions' h_k
                theta = server_side[items[p][i][1]]
                with swapped_in(eng.model, theta), torch.no_grad():
                    h = s.split.server(up, caches[p, i]).tensor
                if done[p, i] is not None:
                    h = torch.cat([done[p, i], h], 1)
                done[p, i] = h

        kind = "evaluate.split_gen_tail"
        rows = {p: {i: done[p, i] for i in still[p]} for p in heads}
        tails = link.send(
            kind, {p: (_down(rows[p], cached[p]), config(p)) for p in rows}
        )
        again = [
            p for p, rep in tails.items() if list(rep["metrics"].get("missing", []))
        ]
        if again:  # served by a process without the caches: the whole prefixes
            tails |= link.send(
                kind, {p: (_down(rows[p], set()), config(p)) for p in again}
            )
        for p in list(still):
            rep = tails.get(p)
            if rep is not None and list(rep["metrics"]["open"]):
                still[p] = list(rep["metrics"]["open"])
                continue
            del still[p]  # done (its reply holds its scores) or failed (logged)
            if rep is not None:
                scores[p] = rep
    return list(scores.values()), n_cached


def _down(rows: dict[int, torch.Tensor], cached: set[int]) -> dict[str, Tensors]:
    """The ``hidden`` record of a decoding tail message.

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
        out[i] = Message(h, torch.ones(1, n, dtype=torch.long), pos).tensors()
    return {HIDDEN: hidden_record(out)}
