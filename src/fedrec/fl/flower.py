"""Flower engine (first slice): the same strategy and client update over Flower.

``flower_apps(cfg)`` returns a ``ServerApp`` and a ``ClientApp`` (Flower 1.41
Message API) that run ``cfg`` exactly as the embedded engine does:

- the ServerApp samples clients, broadcasts with ``strategy.broadcast``, and
  aggregates with the engine's ``server_update`` (guard + ``strategy.aggregate``)
  — it never receives a private tensor;
- the i-th SuperNode (by node id) hosts the clients ``c ≡ i (mod nodes)``; its
  ClientApp calls the engine's batched ``client_update`` with its sampled
  clients and keeps their private tensors in the node's ``Context.state``
  (a bank indexed by client id, for simplicity sized for every client);
- evaluation: each node scores its clients' validation and test rows with their
  own models and returns scores, labels and user ids; the server pools them.

Only in-process simulation (``flwr.simulation.run_simulation``, Ray) is wired
here; ``flwr run`` deployments and the privacy mod at the wire are to come.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
import torch

from fedrec.config import ExperimentConfig, config_from_raw
from fedrec.fl.simulate import EmbeddedEngine, bytes_per_client

_ENGINES: dict[str, EmbeddedEngine] = {}


def _engine(raw: dict[str, Any]) -> EmbeddedEngine:
    """One engine per process and config (the model, data and strategy code)."""
    import json

    from fedrec.build import build_engine

    key = json.dumps(raw, sort_keys=True)
    if key not in _ENGINES:
        _ENGINES[key] = build_engine(config_from_raw(raw))
    return _ENGINES[key]


def _to_record(params: dict[str, torch.Tensor]) -> Any:
    from flwr.app import ArrayRecord

    return ArrayRecord({n: _array(t) for n, t in params.items()})


def _array(t: torch.Tensor) -> Any:
    from flwr.app import Array

    return Array(t.detach().contiguous().numpy())


def _from_record(record: Any) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(a.numpy().copy()) for n, a in record.items()}


def flower_apps(cfg: ExperimentConfig, num_nodes: int) -> tuple[Any, Any, list]:
    """(ServerApp, ClientApp, history list filled by the ServerApp) for ``cfg``."""
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    raw = cfg.to_dict()
    history: list[dict[str, Any]] = []
    client_app, server_app = ClientApp(), ServerApp()

    def private_state(context: Context, eng: EmbeddedEngine) -> dict[str, torch.Tensor]:
        if "private" not in context.state:  # every client starts from the model
            everyone = torch.arange(eng.fed.n_clients)
            context.state["private"] = _to_record(eng.store.get(everyone))
        return _from_record(context.state["private"])

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        eng, cfg = _engine(raw), msg.content["config"]
        clients = torch.as_tensor(np.array(cfg["clients"], dtype=np.int64))
        bank = private_state(context, eng)
        private = {n: b[clients].clone() for n, b in bank.items()}
        received = _from_record(msg.content["received"])
        uploads, private, losses = eng.client_update(
            int(cfg["round"]), clients, received, private
        )
        for n, b in bank.items():  # the private state stays on this node
            b[clients] = private[n]
        context.state["private"] = _to_record(bank)
        content = RecordDict(
            {
                "uploads": _to_record(uploads),
                "metrics": MetricRecord({"losses": losses.tolist()}),
            }
        )
        return Message(content=content, reply_to=msg)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        eng = _engine(raw)
        mine = torch.as_tensor(
            np.array(msg.content["config"]["clients"], dtype=np.int64)
        )
        bank = private_state(context, eng)
        received = _from_record(msg.content["received"])
        params = {**received, **{n: b[mine] for n, b in bank.items()}}
        out = {}
        for split in eng.cfg.eval.splits:
            scores = eng.task.client_scores(split, [(mine, params)], eng.cfg.train)
            out.update(
                {f"{split}_{k}": v.astype(float).tolist() for k, v in scores.items()}
            )
        return Message(content=RecordDict({"metrics": MetricRecord(out)}), reply_to=msg)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        eng = _engine(raw)  # the server uses its strategy, sampling and server state
        while len(nodes := sorted(grid.get_node_ids())) < num_nodes:
            time.sleep(0.1)
        node_of = dict(enumerate(nodes))
        all_ids = torch.arange(eng.fed.n_clients)
        for rnd in range(eng.cfg.train.rounds):
            t0 = time.perf_counter()
            clients = eng.sample(rnd)
            groups = {a: g[clients] for a, g in eng.groups.items()}
            received = eng.strategy.broadcast(
                eng.server, eng.partition, clients, groups
            )
            msgs = []
            for i in range(num_nodes):
                sel = (clients % num_nodes) == i
                if not sel.any():
                    continue
                content = RecordDict(
                    {
                        "received": _to_record(
                            {n: t[sel] for n, t in received.items()}
                        ),
                        "config": ConfigRecord(
                            {"round": rnd, "clients": clients[sel].tolist()}
                        ),
                    }
                )
                msgs.append(
                    Message(
                        content=content, message_type="train", dst_node_id=node_of[i]
                    )
                )
            replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(msgs)}
            uploads = {
                n: torch.empty_like(t)
                for n, t in received.items()
                if n in eng.partition.uploaded
            }
            losses = torch.empty(len(clients), dtype=torch.float64)
            for i in range(num_nodes):
                sel = (clients % num_nodes) == i
                if not sel.any():
                    continue
                rep = replies[node_of[i]].content
                for n, t in _from_record(rep["uploads"]).items():
                    uploads[n][sel] = t
                losses[sel] = torch.tensor(
                    rep["metrics"]["losses"], dtype=torch.float64
                )
            ok = eng.server_update(rnd, clients, uploads, received, {}, losses)
            train_s = time.perf_counter() - t0
            m = {
                "round": rnd,
                "clients": len(clients),
                "rejected": int((~ok).sum()),
                "train_loss": eng.train_loss(clients, losses),
                "upload_bytes_per_client": bytes_per_client(uploads),
                "download_bytes_per_client": bytes_per_client(received),
                "received_on_server": sorted(uploads),  # what crossed the wire up
                "train_s": train_s,
                "clients_per_s": len(clients) / max(train_s, 1e-9),
            }
            msgs = []
            for i in range(num_nodes):
                mine = all_ids[all_ids % num_nodes == i]
                g = {a: t[mine] for a, t in eng.groups.items()}
                rec = eng.strategy.broadcast(eng.server, eng.partition, mine, g)
                msgs.append(
                    Message(
                        content=RecordDict(
                            {
                                "received": _to_record(rec),
                                "config": ConfigRecord({"clients": mine.tolist()}),
                            }
                        ),
                        message_type="evaluate",
                        dst_node_id=node_of[i],
                    )
                )
            reps = list(grid.send_and_receive(msgs))
            for split in eng.cfg.eval.splits:
                cat = {
                    k: np.concatenate(
                        [np.array(r.content["metrics"][f"{split}_{k}"]) for r in reps]
                    )
                    for k in ("probs", "labels", "users")
                }
                pooled = eng.task.pooled_metrics(cat)
                m.update({f"{split}_{k}": v for k, v in pooled.items()})
            m["round_s"] = time.perf_counter() - t0
            m["eval_s"] = m["round_s"] - train_s
            m["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            history.append(m)

    return server_app, client_app, history


def run_flower_simulation(
    cfg: ExperimentConfig, num_nodes: int = 3
) -> list[dict[str, Any]]:
    """Run ``cfg`` on Flower's simulation engine; the per-round metrics."""
    from flwr.simulation import run_simulation

    server_app, client_app, history = flower_apps(cfg, num_nodes)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_nodes,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    return history
