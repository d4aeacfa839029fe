"""Per-client overhead of fedrec on Flower vs a trivial echo ClientApp, in one run.

    .venv/bin/python bench/flower.py --clients 100 1000 --nodes 10 --rounds 3

For each number of clients (one user each, FedPA on synthetic data, every client
every round), three runs on the same config:

- **fedrec on Flower** (simulation, Ray, one actor at a time so node work is
  sequential): per round, ``train_s`` (server sampling → broadcast → nodes →
  aggregation) minus the time the nodes spent inside ``client_update``
  (``client_compute_s``) is what Flower and fedrec's glue cost; divided by the
  clients, the *per-client overhead*.
- **echo on Flower**: the same ServerApp (same messages, same aggregation) with
  a trivial ClientApp that returns what it received; its ``train_s`` per client
  is Flower's own per-client cost for these messages.
- **embedded**: ``train_round`` of the in-process engine, per client (the
  compute itself, for scale).

Also reported: ``fedrec_node_glue`` — the time a node spends in fedrec's train
handler outside ``client_update`` (store, records), per client.

Round 0 of each run is a warm-up (actors start, models build) and is not
counted; the median over the other rounds is reported. Torch runs one thread
per process (``OMP_NUM_THREADS=1``, set here before torch loads): the per-user
models are tiny, and on 2 cores a second thread only contends with the server
(measured: node compute 2.4 vs 3.2 ms a client). Writes
``bench/results/flower.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads; see above

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from fedrec.build import build_engine
from fedrec.config import config_from_raw


def config(n_users: int, rounds: int) -> dict[str, Any]:
    return config_from_raw(
        {
            "data": {
                "options": {"n_users": n_users, "n_items": 400, "seed": 0},
                "min_interactions": 5,
            },
            "model": {"dim": 8, "layers": [32, 8]},
            "train": {"rounds": rounds, "lr": 0.05, "batch_size": 64},
            "method": {"name": "fedpa", "group_attrs": ["group"], "adapter_lr": 0.01},
            "eval": {"select_metric": "auc"},
        }
    ).to_dict()


def echo_client_app() -> Any:
    """A trivial ClientApp: answers the partition query, echoes what it received."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def query(msg, context):
        nc = context.node_config
        rec = {
            "partition-id": nc["partition-id"],
            "num-partitions": nc["num-partitions"],
        }
        return Message(RecordDict({"node": ConfigRecord(rec)}), reply_to=msg)

    @app.train()
    def train(msg, context):
        n = len(msg.content["config"]["clients"])
        metrics = MetricRecord({"losses": [0.0] * n, "compute_s": 0.0})
        content = RecordDict({"uploads": msg.content["received"], "metrics": metrics})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg, context):
        return Message(RecordDict({"scores": ArrayRecord()}), reply_to=msg)

    return app


def flower_rounds(raw: dict[str, Any], nodes: int, echo: bool) -> list[dict[str, Any]]:
    from flwr.simulation import run_simulation

    from fedrec.flower.apps import flower_apps

    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    history: list[dict[str, Any]] = []
    server_app, client_app = flower_apps(raw, nodes, history)
    run_simulation(
        server_app=server_app,
        client_app=echo_client_app() if echo else client_app,
        num_supernodes=nodes,
        backend_config={"client_resources": {"num_cpus": os.cpu_count() or 1}},
    )
    return history


def per_client(history: list[dict[str, Any]], key: str) -> float:
    return statistics.median(
        (h["train_s"] - h.get(key, 0.0)) / h["clients"] for h in history[1:]
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench/results/flower.json")
    args = p.parse_args()
    rows = []
    for n in args.clients:
        raw = config(n, args.rounds)
        t0 = time.perf_counter()
        fedrec = flower_rounds(raw, args.nodes, echo=False)
        echo = flower_rounds(raw, args.nodes, echo=True)
        eng = build_engine(config_from_raw(raw))
        embedded = [eng.train_round(r) for r in range(args.rounds)]
        row = {
            "clients": fedrec[0]["clients"],
            "nodes": args.nodes,
            "fedrec_overhead_ms_per_client": 1e3
            * per_client(fedrec, "client_compute_s"),
            "echo_ms_per_client": 1e3 * per_client(echo, "none"),
            "fedrec_node_glue_ms_per_client": 1e3
            * statistics.median(
                (h["client_node_s"] - h["client_compute_s"]) / h["clients"]
                for h in fedrec[1:]
            ),
            "fedrec_compute_ms_per_client": 1e3
            * statistics.median(
                h["client_compute_s"] / h["clients"] for h in fedrec[1:]
            ),
            "fedrec_round_train_s": statistics.median(h["train_s"] for h in fedrec[1:]),
            "echo_round_train_s": statistics.median(h["train_s"] for h in echo[1:]),
            "embedded_ms_per_client": 1e3 * per_client(embedded, "none"),
            "wall_s": time.perf_counter() - t0,
        }
        row["overhead_ratio"] = (
            row["fedrec_overhead_ms_per_client"] / row["echo_ms_per_client"]
        )
        rows.append(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        )
        print(json.dumps(rows[-1]))
    result = {
        "rows": rows,
        "rounds": args.rounds,
        "counted_rounds": args.rounds - 1,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "command": "bench/flower.py --clients "
        + " ".join(map(str, args.clients))
        + f" --nodes {args.nodes} --rounds {args.rounds}",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
