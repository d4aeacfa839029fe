"""A fedrec node's own work per train message, in one process (no Ray, no wire).

    .venv/bin/python bench/flower_glue.py --clients 100 1000

The fedrec ClientApp (with its mods) answers the train messages of
``bench/flower.py``'s FedPA config for one node of ten, called directly;
``glue`` is a call's time minus the node's ``client_update`` (store, records,
mods, Flower's ClientApp wrapper). Three ways, 50 messages each, median:

- ``trained``: the real update between messages;
- ``warm``: no compute (each update replayed from a first run), so the glue
  runs with warm caches;
- ``evicted``: the replayed update plus 30 ms of touching 32 MB, so the glue
  runs from cold caches as after a real update.

Also the echo ClientApp's call, for scale. Writes ``bench/results/flower_glue.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as bench/flower.py

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.flower.client import client_app_for
from fedrec.flower.server import train_contents
from flower import config, echo_client_app  # bench/flower.py, this directory

NODES, NODE = 10, 3


def messages(eng: Any, n: int) -> list[Any]:
    """Node ``NODE``'s train messages of rounds ``0..n-1``, as the ServerApp's."""
    from flwr.app import Message, Metadata

    out = []
    for rnd in range(n):
        contents = train_contents(eng, rnd, NODES, {NODE}, "glue")[3]
        md = Metadata(1, f"m{rnd}", 0, 100 + NODE, "", "", 0.0, 1e6, "train")
        out.append(Message(metadata=md, content=contents[NODE]))
    return out


def glue_ms(app: Any, msgs: list[Any], context: Any) -> float:
    """Median over ``msgs`` of a call's time minus its reported compute, in ms."""
    out = []
    for msg in msgs:
        t0 = time.perf_counter()
        reply = app(msg, context)
        out.append(time.perf_counter() - t0 - reply.content["metrics"]["compute_s"])
    return 1e3 * statistics.median(out)


def measure(n_users: int, warmup: int = 5, n: int = 50) -> dict[str, Any]:
    from flwr.app import Context, RecordDict

    raw = config(n_users, warmup + 3 * n)
    eng = build_engine(config_from_raw(raw))
    msgs = messages(eng, warmup + 3 * n)
    app, echo = client_app_for(raw), echo_client_app()
    node_config = {"partition-id": NODE, "num-partitions": NODES}
    context = Context(1, 100 + NODE, node_config, RecordDict(), {})
    glue_ms(app, msgs[:warmup], context)
    glue_ms(echo, msgs[:warmup], context)
    row: dict[str, Any] = {"clients": n_users, "clients_per_message": n_users // NODES}
    batches = [msgs[warmup + i * n : warmup + (i + 1) * n] for i in range(3)]
    row["trained_glue_ms"] = glue_ms(app, batches[0], context)

    cls = type(eng)  # the node's engine is of the same class
    update = cls.client_update
    replay: dict[tuple[int, ...], Any] = {}

    def replayed(self, rnd, clients, received, private, mods=True):  # type: ignore[no-untyped-def]
        key = tuple(clients.tolist())
        if key not in replay:
            replay[key] = update(self, rnd, clients, received, private, mods)
        return replay[key]

    def evicting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = replayed(self, *args, **kwargs)
        big, t0 = torch.ones(8 << 20), time.perf_counter()
        while time.perf_counter() - t0 < 0.03:
            big.mul_(1.0)  # 32 MB through the caches, as an update's tensors
        return out

    try:
        cls.client_update = replayed
        row["warm_glue_ms"] = glue_ms(app, batches[1], context)
        cls.client_update = evicting
        row["evicted_glue_ms"] = glue_ms(app, batches[2], context)
    finally:
        cls.client_update = update
    row["echo_call_ms"] = glue_ms(echo, batches[0], context)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--out", default="bench/results/flower_glue.json")
    args = p.parse_args()
    os.environ["FEDREC_NODE_STORE"] = tempfile.mkdtemp()
    torch.set_num_threads(1)
    rows = [measure(n) for n in args.clients]
    result = {
        "rows": rows,
        "torch_threads": torch.get_num_threads(),
        "command": "bench/flower_glue.py --clients " + " ".join(map(str, args.clients)),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
