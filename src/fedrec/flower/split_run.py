"""A config's FELLRec split over Flower: ``fedrec run`` with ``backbone.split_k``.

A generative (causal-LM) config with ``backbone.split_k = k`` on
``--engine flower`` trains through FELLRec's flexible storage (fellrec.md §5):
each client's node runs the embeddings, blocks ``[0, k)``, the last block and
the head on its own prompts; the ServerApp runs blocks ``[k, L−1)`` with that
client's own adapters. The round is the embedded engine's — the same sampled
clients, mini-batch plans (``client_plans``), fresh Adam with the method's
learning rates, then ``server_update`` (update guard, FELLRec's dynamic
balance) — only each step's forward and backward are cut into messages, one
of each kind per node and step, for all of the node's clients that have a
batch at that step (:meth:`~fedrec.models.split.SplitModel.step`'s parts):

- ``train.split_head`` (round, step, clients; at step 0 also each client's
  node-side θ_i) — the node replies ``h_k`` (with mask and positions) per client;
- ``train.split_tail`` (``h_{L−1}`` per client) — the loss on the node's own
  labels and ``∂loss/∂h_{L−1}``; the node keeps its tail gradients;
- ``train.split_back`` (``∂loss/∂h_k``) — the head backward and the node's
  optimiser step; a client's last step replies its node-side θ_i (its upload).

The server steps each client's server-side θ_i with its own Adam state
between the tail and the back message. Between messages a node keeps each
client's node-side parameters, pending gradients and moments in a scratch
:class:`~fedrec.flower.store.NodeStore` (the run's, ``-split``); the server
recomputes its blocks' forward for the backward, so no graph is held across
messages and one model serves every client (adapters are swapped in). Token
ids, labels and logits never leave a node: only the ``hidden`` record (hidden
states and their gradients, checked by the wire audit) and the uploads cross.

Evaluation is the unsplit path's: each node scores its clients under their θ_i
(:mod:`fedrec.flower.client`), with the split computed on the node. Not on
Flower: per-client depths (``backbone.split_k_per_client``), the
discriminative backbone's split (a text-encoder config runs the split on each
node), LDP, and methods with private parameters (FELLRec has none).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedrec.errors import ConfigError, FedrecError
from fedrec.fl.partition import PRIVATE
from fedrec.flower.client import store_of
from fedrec.flower.mods import HIDDEN, UPLOADS
from fedrec.flower.records import from_record, to_record
from fedrec.flower.split import _as_dict, _as_message, optimise, snapshot
from fedrec.models.causal_lm import GenerativeRecommender, swapped_in
from fedrec.models.split import Message, SplitModel

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


def uses_split(eng: Any) -> bool:
    """Whether ``eng`` trains a generative backbone through the split."""
    from fedrec.fl.seq import GenRecTask

    return isinstance(eng.task, GenRecTask) and eng.model.split_k > 0


@functools.cache
def sides(eng: Any) -> Sides:
    """The split of ``eng``'s model; refuses what the Flower split cannot run."""
    why = (
        "backbone.split_k_per_client (one k for every client on Flower)"
        if eng.task.split_ks
        else "privacy (LDP)"
        if eng.mods
        else "private parameters"
        if eng.partition.names(PRIVATE)
        else ""
    )
    if why:
        raise ConfigError(f"the FELLRec split over Flower does not support {why}")
    split = SplitModel(eng.model.lm, eng.model.split_k)
    on_server = split.server_parameters()
    named = dict(eng.model.named_parameters())
    up = eng.partition.uploaded
    tc = eng.cfg.train
    return Sides(
        split,
        node={n: named[n] for n in up if id(named[n]) not in on_server},
        server={n: named[n] for n in up if id(named[n]) in on_server},
        lr={n: eng.strategy.learning_rate(n, tc.lr) for n in up},
        optimizer=tc.optimizer,
    )


def _rows(eng: Any, rnd: int, client: int, step: int) -> torch.Tensor:
    return torch.as_tensor(eng.client_plans(rnd, torch.tensor([client]))[0][step])


def _loss_fn(ids: torch.Tensor, mask: torch.Tensor) -> Callable[..., torch.Tensor]:
    return lambda logits: GenerativeRecommender.logits_loss(logits, ids, mask)


def _per_client(record: Tensors, client: int) -> Tensors:
    """``{field: tensor}`` of ``client`` in a ``hidden`` record (``"<c>/<field>"``)."""
    head = f"{client}/"
    return {k[len(head) :]: v for k, v in record.items() if k.startswith(head)}


def _of(saved: Tensors, client: int, prefix: str = "p:") -> Tensors:
    """Client ``client``'s entries (``"<c>|<prefix><name>"``) of a node's scratch.

    Prefixes: ``p:`` its parameters, ``grad:`` pending gradients, ``opt:``
    optimiser state.
    """
    head = f"{client}|{prefix}"
    return {k[len(head) :]: v for k, v in saved.items() if k.startswith(head)}


def _params(saved: Tensors, client: int) -> Tensors:
    """Client ``client``'s node-side parameters in the scratch; refuses a gap."""
    values = _of(saved, client)
    if not values:
        raise FedrecError(
            f"split: this node holds no state of client {client} mid-round "
            "(restarted, or its store was removed); it sits the round out"
        )
    return values


def _put(saved: Tensors, client: int, values: Tensors, prefix: str = "p:") -> None:
    for k in [k for k in saved if k.startswith(f"{client}|{prefix}")]:
        del saved[k]
    saved.update({f"{client}|{prefix}{n}": t for n, t in values.items()})


# ------------------------------------------------------------------ the node
def register(app: Any, engine_of: Callable[[Any], Any]) -> None:
    """The node's side: ``train.split_head`` / ``split_tail`` / ``split_back``."""
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

    @app.train("split_head")
    def head(msg: FlwrMessage, context: Context) -> FlwrMessage:
        eng, s, rnd, step, cfg, store = setup(msg, context)
        clients = list(cfg["clients"])
        if step == 0:  # a round starts from what each client received
            got = from_record(msg.content["received"])
            saved: Tensors = {}
            for i, c in enumerate(clients):
                _put(saved, c, {n: t[i] for n, t in got.items()})
            store.save(saved)
        else:
            saved = store.load() or {}
        out: Tensors = {}
        for c in clients:
            ids, mask = eng.task.prompts(_rows(eng, rnd, c, step))
            with swapped_in(eng.model, _params(saved, c)):
                up = s.split.head_forward(ids, mask)
            out.update({f"{c}/{k}": v for k, v in _as_dict(up).items()})
        return reply(msg, {HIDDEN: out})

    @app.train("split_tail")
    def tail(msg: FlwrMessage, context: Context) -> FlwrMessage:
        eng, s, rnd, step, cfg, store = setup(msg, context)
        saved, down = store.load() or {}, from_record(msg.content[HIDDEN])
        out, losses = {}, []
        for c in cfg["clients"]:
            ids, mask = eng.task.prompts(_rows(eng, rnd, c, step))
            with swapped_in(eng.model, _params(saved, c)):
                msg_c = _as_message(_per_client(down, c))
                loss, grad = s.split.tail_backward(msg_c, _loss_fn(ids, mask))
                grads = {n: p.grad for n, p in s.node.items() if p.grad is not None}
                for p in s.node.values():
                    p.grad = None
            _put(saved, c, grads, "grad:")  # until the head's backward
            out[f"{c}/tensor"] = grad.tensor
            losses.append(float(loss))
        store.save(saved)
        return reply(msg, {HIDDEN: out}, losses=losses)

    @app.train("split_back")
    def back(msg: FlwrMessage, context: Context) -> FlwrMessage:
        eng, s, rnd, step, cfg, store = setup(msg, context)
        saved, up = store.load() or {}, from_record(msg.content[HIDDEN])
        done: dict[int, Tensors] = {}
        for c in cfg["clients"]:
            ids, mask = eng.task.prompts(_rows(eng, rnd, c, step))
            pending = _of(saved, c, "grad:")
            with swapped_in(eng.model, _params(saved, c)):
                for n, p in s.node.items():
                    g = pending.get(n)
                    p.grad = None if g is None else g.clone()
                s.split.head_backward(ids, mask, Message(up[f"{c}/tensor"]))
                opt = optimise(s.node, _of(saved, c, "opt:"), s.lr, s.optimizer)
                values = snapshot(s.node)
            _put(saved, c, {}, "grad:")
            _put(saved, c, opt, "opt:")
            _put(saved, c, values)
            done[c] = values
        store.save(saved)
        last = list(cfg["last"])  # clients whose local phase ends here: upload
        if not last:
            return reply(msg, {})
        return reply(
            msg, {UPLOADS: {n: torch.stack([done[c][n] for c in last]) for n in s.node}}
        )


# ---------------------------------------------------------------- the server
def train_round(
    grid: Any,
    eng: Any,
    host: dict[int, int],
    live: set[int],
    rnd: int,
    opts: dict[str, Any],
    key: str,
) -> dict[str, Any]:
    """The split's version of the ServerApp's ``_train_round``; the metrics.

    Clients of a node that fails are left out of the round from that step
    on (logged, ``failed_partitions``), as in the unsplit round.
    """
    from flwr.app import ConfigRecord, RecordDict
    from flwr.app import Message as FlwrMessage

    from fedrec.flower.server import _collect, close_round

    t0, s, parts = time.perf_counter(), sides(eng), len(host)
    clients = eng.sample(rnd)
    ids = clients.tolist()
    received, _ = eng.client_params(clients)
    plans = dict(zip(ids, eng.client_plans(rnd, clients), strict=True))
    mine = {c: {n: received[n][i] for n in s.server} for i, c in enumerate(ids)}
    node_side = {c: {n: received[n][i] for n in s.node} for i, c in enumerate(ids)}
    opt: dict[int, Tensors] = {c: {} for c in ids}
    loss_sum = dict.fromkeys(ids, 0.0)
    failed = {p for p in range(parts) if p not in live}
    wire = 0  # bytes of hidden states and their gradients, both ways

    def send(kind: str, step: int, active: list[int], records: Callable) -> dict:
        """One message per node with active clients; ``{partition: reply}``.

        ``records(clients)``: the message's array records for those clients.
        """
        nonlocal wire
        msgs = []
        for p in sorted({c % parts for c in active}):
            cs = [c for c in active if c % parts == p]
            last = [c for c in cs if step == len(plans[c]) - 1]
            tensors = records(cs)
            content = RecordDict({k: to_record(v) for k, v in tensors.items()})
            cfg = {"round": rnd, "step": step, "clients": cs, "last": last}
            content["config"] = ConfigRecord({**cfg, "store": key})
            wire += sum(t.nbytes for t in tensors.get(HIDDEN, {}).values())
            msgs.append(FlwrMessage(content, host[p], f"train.{kind}"))
        got = _collect(grid, msgs, host, opts, rnd, kind)
        failed.update({c % parts for c in active} - set(got))
        for rep in got.values():
            if HIDDEN in rep.array_records:
                wire += sum(t.nbytes for t in from_record(rep[HIDDEN]).values())
        return got

    def hidden(per_client: dict[int, Tensors]) -> Callable:
        return lambda cs: {
            HIDDEN: {f"{c}/{k}": v for c in cs for k, v in per_client[c].items()}
        }

    def replied(got: dict, active: list[int]) -> list[tuple[int, Any, list[int]]]:
        """(partition, reply, its clients) of each node that answered."""
        return [(p, r, [c for c in active if c % parts == p]) for p, r in got.items()]

    for step in range(max((len(p) for p in plans.values()), default=0)):
        active = [c for c in ids if len(plans[c]) > step and c % parts not in failed]

        def start(cs: list[int], step: int = step) -> dict[str, Tensors]:
            """Step 0: each client's node-side θ_i, as it received it."""
            if step:
                return {}
            node = {n: torch.stack([node_side[c][n] for c in cs]) for n in s.node}
            return {"received": node}

        got = send("split_head", step, active, start)
        ups = {
            c: _per_client(from_record(r[HIDDEN]), c)
            for _, r, cs in replied(got, active)
            for c in cs
        }
        active = [c for c in active if c in ups]
        downs = {}
        for c in active:
            with swapped_in(eng.model, mine[c]), torch.no_grad():
                downs[c] = _as_dict(s.split.server(_as_message(ups[c])))
        got = send("split_tail", step, active, hidden(downs))
        grads: dict[int, Tensors] = {}
        for _, rep, cs in replied(got, active):
            rec = from_record(rep[HIDDEN])
            for c, loss in zip(cs, rep["metrics"]["losses"], strict=True):
                loss_sum[c] += float(loss) * len(plans[c][step])
                with swapped_in(eng.model, mine[c]):  # the forward again, with graph
                    leaf, mid = s.split.server_forward(_as_message(ups[c]))
                    g = s.split.server_backward(leaf, mid, Message(rec[f"{c}/tensor"]))
                    opt[c] = optimise(s.server, opt[c], s.lr, s.optimizer)
                    mine[c] = snapshot(s.server)
                grads[c] = {"tensor": g.tensor}
        active = [c for c in active if c in grads]
        got = send("split_back", step, active, hidden(grads))
        for _, rep, cs in replied(got, active):
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
    m.update(received_on_server=sorted(s.node), split_hidden_bytes=wire)
    return m
