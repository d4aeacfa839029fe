"""The fedrec ClientApp: what a SuperNode does for the clients it hosts.

A SuperNode with ``partition-id = p`` of ``num-partitions = P`` (Flower's
simulation sets these; a deployed SuperNode gets them with ``--node-config``)
hosts the clients ``c ≡ p (mod P)``. Their private tensors live in the node's
:class:`~fedrec.flower.store.NodeStore` — one row per hosted client, client
``c`` in row ``c // P`` — and never in a message. The message types:

- ``query``: the node's partition (the server maps partitions to nodes);
- ``train``: the engine's batched ``client_update`` for the sampled clients the
  node hosts; the reply holds their ``uploads`` (after the client mods: LDP,
  then the wire audit);
- ``evaluate``: the task's additive statistics (``task.stats``: fixed shapes,
  e.g. CTR bin counts and sums, top-K per-group sums) of every hosted client's
  rows, the ``stats`` record (``"<split>/<name>"``); the per-row scores stay on
  the node, the server sums the statistics over nodes (``task.stat_shapes()``
  is what the wire audit lets through);
- ``train.split_*`` and ``evaluate.split_*``: the training steps and the
  evaluation of a config with ``backbone.split_k``, the FELLRec split
  (:mod:`fedrec.flower.split_node`);
- ``query.finish``: the run is over (a temporary store is removed).
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import torch
from flwr.clientapp import ClientApp

from fedrec.flower.mods import STATS, UPLOADS, upload_mods, wire_audit
from fedrec.flower.node import hosted, partition, store_of
from fedrec.flower.records import config_int, config_ints, from_record, to_record
from fedrec.flower.runconfig import engine_for, eval_splits, raw_of
from fedrec.flower.store import NodeStore

_APPS: dict[str, FedrecClientApp] = {}


class FedrecClientApp(ClientApp):
    """A ClientApp that pickles as a reference: (its factory, its config).

    Flower's simulation sends the ClientApp to a Ray actor with every message
    (cloudpickle). An app made of closures is pickled by value, walking every
    function's globals — ~13 ms a message, more than Flower's own cost. This one
    is rebuilt in the actor from :func:`client_app_for`'s per-process cache.
    """

    def __init__(self, key: str, raw: dict[str, Any] | None, mods: list[Any]) -> None:
        super().__init__(mods=mods)
        self.key, self.raw = key, raw

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _app_of, (self.key, self.raw)


def client_app_for(raw: dict[str, Any] | None = None) -> FedrecClientApp:
    """The ClientApp of config ``raw`` (``None``: the run config's); per process."""
    return _app_of(json.dumps(raw, sort_keys=True), raw)


def _app_of(key: str, raw: dict[str, Any] | None) -> FedrecClientApp:
    """The app of ``raw``, whose canonical JSON is ``key``.

    An unpickled app is found by its key (≈ 1 µs), not by encoding its config
    again (≈ 35 µs a message).
    """
    if key not in _APPS:
        _APPS[key] = _build(key, raw)
    return _APPS[key]


def node_queries(app: Any) -> None:
    """Register ``query`` (the node's partition) and ``query.finish`` (run over)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        p, parts = partition(context)
        info = ConfigRecord({"partition-id": p, "num-partitions": parts})
        return Message(content=RecordDict({"node": info}), reply_to=msg)

    @app.query("finish")
    def finish(msg: Message, context: Context) -> Message:
        store_of(msg, context).finish()
        for scratch in ("-split", "-kv"):  # the split's scratch and caches, if any
            store_of(msg, context, scratch).finish()
        return Message(content=RecordDict(), reply_to=msg)


def _build(key: str, raw: dict[str, Any] | None) -> FedrecClientApp:
    from flwr.app import Context, Message

    from fedrec.flower import split_node
    from fedrec.flower.split import node_side_only

    engines: dict[str, Any] = {}  # this app's engine per run config

    def engine_of(context: Context) -> Any:
        key = "" if raw is not None else json.dumps(dict(context.run_config))
        if key not in engines:
            eng = engines[key] = engine_for(raw_of(raw, context))
            node_side_only(eng)  # a split config's node: its own layers only
        return engines[key]

    @functools.cache  # per engine; engines live as long as the app
    def uploaded(eng: Any) -> frozenset[str]:
        return frozenset(eng.partition.uploaded)

    def shared(context: Context) -> frozenset[str]:
        return uploaded(engine_of(context))

    @functools.cache  # per engine, as ``uploaded``
    def schema(eng: Any) -> dict[str, tuple[int, ...]]:
        return eng.task.stat_shapes()

    def stat_shapes(context: Context) -> dict[str, tuple[int, ...]]:
        return schema(engine_of(context))

    audit = wire_audit(shared, stat_shapes)
    app = FedrecClientApp(key, raw, mods=[audit, upload_mods(engine_of)])

    node_queries(app)
    split_node.register(app, engine_of)  # a config with backbone.split_k

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _train(engine_of(context), msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _evaluate(engine_of(context), msg, context)

    return app


def _bank(store: NodeStore, at_most: int, context: Any, eng: Any) -> dict[str, Any]:
    """Private tensors of the node's clients, one row per hosted client.

    As saved by round ``at_most - 1`` (see :mod:`fedrec.flower.store`).
    """
    stored = store.load(at_most)
    if stored is None:  # every client starts from the model
        return eng.store.get(hosted(context, eng.fed.n_clients))
    return stored


def _train(eng: Any, msg: Any, context: Any) -> Any:
    """A train message: the sampled hosted clients' update; private state kept."""
    from flwr.app import Message, MetricRecord, RecordDict

    start = time.perf_counter()
    cfg = msg.content["config"]
    rnd, store = config_int(cfg["round"]), store_of(msg, context)
    clients = torch.as_tensor(config_ints(cfg["clients"]), dtype=torch.long)
    mine = _bank(store, rnd, context, eng)
    slots = clients // partition(context)[1]
    # every hosted client, in row order (full participation): the whole bank
    whole = all(len(b) == len(slots) for b in mine.values()) and torch.equal(
        slots, torch.arange(len(slots))
    )
    private = mine if whole else {n: b[slots] for n, b in mine.items()}
    received = from_record(msg.content["received"])
    t0 = time.perf_counter()
    uploads, private, losses = eng.client_update(
        rnd, clients, received, private, mods=False
    )
    compute_s = time.perf_counter() - t0
    # the private state stays on this node (new tensors: the store may
    # hand out its cached ones, never changed in place)
    if not whole:
        private = {n: b.index_put((slots,), private[n]) for n, b in mine.items()}
    store.save(private, generation=rnd + 1)
    content = RecordDict({UPLOADS: to_record(uploads)})
    metrics = {"losses": losses.tolist(), "compute_s": compute_s}
    metrics["node_s"] = time.perf_counter() - start  # handler, all but the mods
    content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


def _evaluate(eng: Any, msg: Any, context: Any) -> Any:
    """An evaluate message: the hosted clients' statistics of every split."""
    from flwr.app import Message, RecordDict

    rnd = config_int(msg.content["config"]["round"])
    mine = hosted(context, eng.fed.n_clients)
    private = _bank(store_of(msg, context), rnd + 1, context, eng)
    params = {**from_record(msg.content["received"]), **private}
    out = {}
    for split in eval_splits(eng):
        rows = eng.client_scores(split, [(mine, params)])
        out.update({f"{split}/{k}": v for k, v in eng.task.stats(rows).items()})
    return Message(content=RecordDict({STATS: to_record(out)}), reply_to=msg)
