"""Where a train message's time goes on Flower's simulation path, hop by hop.

    .venv/bin/python bench/flower_hops.py --clients 100 1000 --repeats 3

fedrec, the echo and the idle echo of ``bench/flower.py`` (same config, same
simulation: one Ray actor, woken pickup and replies) with every train message
stamped on one clock across processes (``CLOCK_MONOTONIC``):

- ``to_actor``: Flower's worker hands the message to Ray → the ClientApp is
  called in the actor (pickling, Ray's submit and transport, unpickling);
- ``in_app``: the ClientApp's call minus the time the node computes (mods,
  Flower's wrappers, the handler's glue: fedrec's store and records, the
  echo's nothing);
- ``back``: the ClientApp returns → Flower's worker has the reply (Ray pickles
  the reply and the context, transport, ``ray.get``).

The actor stamps through a Ray worker setup hook (:func:`setup`), so no app is
changed. Medians over the counted rounds' messages, per repeat; ``compute_ms``
is fedrec's median compute per message, as long as the idle echo sleeps.
Every process on every CPU (``bench/flower.py``'s shared placement). Writes
``bench/results/flower_hops.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as bench/flower.py

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

# bench/flower.py, this directory
from flower import ACTOR_CALLS, config, flower_rounds, time_actor_calls


def setup() -> None:
    """In each Ray worker: stamp a train reply with its ClientApp call's times."""
    from flwr.clientapp.client_app import ClientApp

    call = ClientApp.__call__

    def stamped(self, message, context):  # type: ignore[no-untyped-def]
        t_in = time.perf_counter()
        out = call(self, message, context)
        if message.metadata.message_type == "train" and "metrics" in out.content:
            out.content["metrics"]["t_in"] = t_in
            out.content["metrics"]["t_out"] = time.perf_counter()
        return out

    ClientApp.__call__ = stamped


def stamp_driver() -> None:
    """Time each train message around Flower's call into the actor
    (:func:`flower.time_actor_calls`), and have Ray start its workers with
    :func:`setup`."""
    import ray

    init = ray.init

    def ray_init(*args, runtime_env=None, **kwargs):  # type: ignore[no-untyped-def]
        env = {**(runtime_env or {}), "worker_process_setup_hook": "flower_hops.setup"}
        return init(*args, runtime_env=env, **kwargs)

    ray.init = ray_init
    time_actor_calls()


def hops() -> dict[str, float]:
    """Median ms per message of each hop of the last run's counted rounds."""
    calls = [c for c in ACTOR_CALLS if c[0] > 0]
    parts = {
        "to_actor_ms": [m["t_in"] - handed for _, handed, _, m in calls],
        "in_app_ms": [m["t_out"] - m["t_in"] - m["compute_s"] for *_, m in calls],
        "back_ms": [back - m["t_out"] for _, _, back, m in calls],
    }
    return {k: round(1e3 * statistics.median(v), 3) for k, v in parts.items()}


def measure(n: int, nodes: int, rounds: int) -> dict[str, Any]:
    raw = config(n, rounds)
    row: dict[str, Any] = {"clients": n, "nodes": nodes}
    fedrec = flower_rounds(raw, nodes, echo=False)
    row["fedrec"] = hops()
    flower_rounds(raw, nodes, echo=True)
    row["echo"] = hops()
    per_msg = statistics.median(h["client_compute_s"] for h in fedrec[1:]) / nodes
    flower_rounds(raw, nodes, echo=True, idle_s=per_msg)
    row["idle_echo"] = hops()
    row["compute_ms"] = 1e3 * per_msg
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, nargs="+", default=[100])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench/results/flower_hops.json")
    args = p.parse_args()
    stamp_driver()
    rows = []
    for n in args.clients:
        for _ in range(args.repeats):
            rows.append(measure(n, args.nodes, args.rounds))
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "rows": rows,
        "command": "bench/flower_hops.py --clients "
        + " ".join(map(str, args.clients))
        + f" --nodes {args.nodes} --rounds {args.rounds} --repeats {args.repeats}",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
