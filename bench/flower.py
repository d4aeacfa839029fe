"""Per-client overhead of fedrec on Flower vs a trivial echo ClientApp, in one run.

    .venv/bin/python bench/flower.py --clients 100 1000 --rounds 21 --repeats 3

For each number of clients (one user each, FedPA on synthetic data, every client
every round), four runs on the same config:

- **fedrec on Flower** (simulation, Ray, one actor at a time so node work is
  sequential): per round, ``train_s`` (server sampling → broadcast → nodes →
  aggregation) minus the time the nodes spent inside ``client_update``
  (``client_compute_s``) is what Flower and fedrec's glue cost; divided by the
  clients, the *per-client overhead*.
- **echo on Flower**: the same ServerApp (same messages, same aggregation) with
  a trivial ClientApp that returns what it received; its ``train_s`` per client
  is Flower's own per-client cost for these messages.
- **busy echo on Flower**: the echo app, but each message first keeps the
  node's core busy (a Python loop) for as long as fedrec's
  ``client_update`` took on average per message; its ``train_s`` minus that
  busy time is Flower's cost when the nodes compute.
- **idle echo on Flower**: the echo app sleeping that long instead (no CPU):
  Flower's cost when the nodes take as long as fedrec's, on no CPU at all.
  The idle and busy echoes cost about the same, and both more than the echo:
  what makes Flower slower per message is that a node takes time, not that it
  computes (after ≈ 15 ms idle, this VM's processes wake slowly and run
  Flower's path from cold caches). fedrec's overhead minus the idle echo's is
  what fedrec's own glue and compute add.
- **embedded**: ``train_round`` of the in-process engine, per client (the
  compute itself, for scale).

Flower's simulation moves new messages from the SuperLink to the workers by
polling every 100 ms, so a round first waits 0–100 ms for that pickup,
depending on where it starts in the cycle (three runs of the same code
measured ratios of 1.30 to 1.55 with it), and the ServerApp polls for the
replies. Every app here runs inside :func:`fedrec.flower.internals.woken`, as
fedrec's own simulation does: a stored message wakes the pickup, a stored
reply the ServerApp's wait, for all the apps alike, so the numbers compare
the apps, not their luck with the cycle, and no polling thread takes CPU
from them.

Each row runs in one of two **placements**, interleaved repeat by repeat:
``shared`` (every process may use every CPU) and ``pinned`` (the node worker
on a CPU of its own, the server side and Ray on the rest; see
:func:`placement`), which emulates on one box a deployment's separate server
and node machines.

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
import contextlib
import json
import math
import platform
import statistics
import threading
import time
from collections.abc import Iterator
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


def echo_client_app(busy_s: float = 0.0, idle_s: float = 0.0) -> Any:
    """A trivial ClientApp: answers the partition query, echoes what it received.

    With ``busy_s`` > 0, each train message first keeps one core busy for
    ``busy_s`` seconds; with ``idle_s`` > 0, it first sleeps that long (no
    CPU). Either is reported as ``compute_s``, as fedrec reports
    ``client_update``. Only names imported here are used: the simulation
    pickles this app by value with every message, and a global like ``torch``
    makes that 10× slower (1.5 vs 0.2 ms a message), which would bill the echo for it.
    """
    from time import perf_counter, sleep

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
        t0 = perf_counter()
        while perf_counter() - t0 < busy_s:  # a busy core, as a computing node's
            pass
        if idle_s:
            sleep(idle_s)  # a node that takes as long, on no CPU
        compute_s = perf_counter() - t0 if busy_s or idle_s else 0.0
        metrics = MetricRecord({"losses": [0.0] * n, "compute_s": compute_s})
        content = RecordDict({"uploads": msg.content["received"], "metrics": metrics})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg, context):
        return Message(RecordDict({"scores": ArrayRecord()}), reply_to=msg)

    return app


def flower_rounds(
    raw: dict[str, Any],
    nodes: int,
    echo: bool,
    busy_s: float = 0.0,
    idle_s: float = 0.0,
) -> list[dict[str, Any]]:
    from flwr.simulation import run_simulation

    from fedrec.flower.apps import flower_apps
    from fedrec.flower.internals import woken

    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    history: list[dict[str, Any]] = []
    server_app, client_app = flower_apps(raw, nodes, history)
    cpus = len(os.sched_getaffinity(0))
    ACTOR_CALLS.clear()
    with woken():  # as fedrec's own simulation runs (fedrec.flower.internals)
        run_simulation(
            server_app=server_app,
            client_app=echo_client_app(busy_s, idle_s) if echo else client_app,
            num_supernodes=nodes,
            # one actor: it asks for every CPU this process may use (one if pinned)
            backend_config={
                "client_resources": {"num_cpus": cpus},
                "init_args": {"num_cpus": cpus},
            },
        )
    for h in history:
        calls = [back - handed for r, handed, back, _ in ACTOR_CALLS if r == h["round"]]
        h["actor_s"] = sum(calls) if calls else math.nan
    return history


# per train message of the last run: (round, handed to the actor, reply back,
# the reply's metrics), on the perf_counter clock
ACTOR_CALLS: list[tuple[int, float, float, Any]] = []


def time_actor_calls() -> None:
    """Record in :data:`ACTOR_CALLS` when Flower's worker handed each train
    message to the Ray actor and got the reply back (a round's sum:
    ``actor_s``); the rest of a round's ``train_s`` is spent outside the actor
    (the ServerApp, the link state, the worker's queues)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    call = RayBackend.process_message

    def process_message(self, message, context):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = call(self, message, context)
        t1 = time.perf_counter()
        if message.metadata.message_type == "train":
            rnd = int(message.content["config"]["round"])
            ACTOR_CALLS.append((rnd, t0, t1, out[0].content["metrics"]))
        return out

    RayBackend.process_message = process_message


@contextlib.contextmanager
def placement(pinned: bool) -> Iterator[None]:
    """With ``pinned``: the node workers on the last CPU, all else on the others.

    Emulates on one box a deployment, where nodes compute on their own
    machines: this thread (and so the ServerApp, Flower's simulation threads,
    and Ray's raylet, GCS and workers, started per run and inheriting it) gets
    the other CPUs, and a watcher thread moves every thread of each
    ``ray::ClientAppActor`` process to the last CPU as it appears. Linux only.
    """
    if not pinned:
        yield
        return
    cpus = sorted(os.sched_getaffinity(0))
    node_cpu, rest = {cpus[-1]}, set(cpus[:-1]) or {cpus[-1]}
    stop, seen = threading.Event(), set()

    def watch() -> None:
        while not stop.wait(0.2):
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid in seen:
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if cmd.startswith(b"ray::ClientAppActor"):
                        for tid in os.listdir(f"/proc/{pid}/task"):
                            os.sched_setaffinity(int(tid), node_cpu)
                        seen.add(pid)
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    os.sched_setaffinity(0, rest)
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        os.sched_setaffinity(0, set(cpus))


def wake_latency(
    pauses_ms: tuple[float, ...] = (0.0, 2.0, 16.0), other_cpu: bool = False
) -> dict[str, float]:
    """Median round trip (µs) of one byte to a child process and back, each
    sent after ``pause`` ms of this process sleeping: what waking costs here.

    Both processes on the first CPU, or (``other_cpu``) the child on the last:
    a wake that crosses CPUs costs several times more on this VM, whose idle
    CPUs halt at once (``haltpoll``, ``guest_halt_poll_ns`` 0), and Flower's
    path crosses processes and threads several times a message.
    """
    cpus = sorted(os.sched_getaffinity(0))
    ping, pong = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:  # the echo: answers each byte until it reads "q"
        os.sched_setaffinity(0, {cpus[-1] if other_cpu else cpus[0]})
        while os.read(ping[0], 1) != b"q":
            os.write(pong[1], b"x")
        os._exit(0)
    os.sched_setaffinity(0, {cpus[0]})
    out = {}
    for pause in pauses_ms:
        trips = []
        for _ in range(200):
            time.sleep(pause / 1e3)
            t0 = time.perf_counter()
            os.write(ping[1], b"p")
            os.read(pong[0], 1)
            trips.append(time.perf_counter() - t0)
        out[f"after_{pause:g}_ms"] = round(1e6 * statistics.median(trips), 1)
    os.write(ping[1], b"q")
    os.waitpid(child, 0)
    os.sched_setaffinity(0, set(cpus))
    for fd in (*ping, *pong):
        os.close(fd)
    return out


def per_client(
    history: list[dict[str, Any]], key: str, of: Any = statistics.median
) -> float:
    """``of`` (median, else e.g. mean) over the counted rounds of a round's
    ``train_s`` minus its ``key`` (time spent computing), per client."""
    return of((h["train_s"] - h.get(key, 0.0)) / h["clients"] for h in history[1:])


def measure(n: int, nodes: int, rounds: int, pinned: bool) -> dict[str, Any]:
    """One row: the three Flower runs and the embedded engine at ``n`` clients."""
    raw = config(n, rounds)
    t0 = time.perf_counter()
    with placement(pinned):
        fedrec = flower_rounds(raw, nodes, echo=False)
        echo = flower_rounds(raw, nodes, echo=True)
        per_msg = statistics.median(h["client_compute_s"] for h in fedrec[1:])
        busy = flower_rounds(raw, nodes, echo=True, busy_s=per_msg / nodes)
        idle = flower_rounds(raw, nodes, echo=True, idle_s=per_msg / nodes)
    eng = build_engine(config_from_raw(raw))
    embedded = [eng.train_round(r) for r in range(rounds)]
    row = {
        "clients": fedrec[0]["clients"],
        "placement": "pinned" if pinned else "shared",
        "nodes": nodes,
        "fedrec_overhead_ms_per_client": 1e3 * per_client(fedrec, "client_compute_s"),
        "echo_ms_per_client": 1e3 * per_client(echo, "none"),
        "busy_echo_ms_per_client": 1e3 * per_client(busy, "client_compute_s"),
        "idle_echo_ms_per_client": 1e3 * per_client(idle, "client_compute_s"),
        "fedrec_node_glue_ms_per_client": 1e3
        * statistics.median(
            (h["client_node_s"] - h["client_compute_s"]) / h["clients"]
            for h in fedrec[1:]
        ),
        "fedrec_compute_ms_per_client": 1e3
        * statistics.median(h["client_compute_s"] / h["clients"] for h in fedrec[1:]),
        "fedrec_round_train_s": statistics.median(h["train_s"] for h in fedrec[1:]),
        "echo_round_train_s": statistics.median(h["train_s"] for h in echo[1:]),
        "embedded_ms_per_client": 1e3 * per_client(embedded, "none"),
        # means: every round counts, a round with a collector's pause too
        "fedrec_mean_overhead_ms_per_client": 1e3
        * per_client(fedrec, "client_compute_s", statistics.fmean),
        "echo_mean_ms_per_client": 1e3 * per_client(echo, "none", statistics.fmean),
        "wall_s": time.perf_counter() - t0,
    }
    for name, hist in (("fedrec", fedrec), ("echo", echo)):  # per message
        row[f"{name}_actor_call_ms_per_message"] = 1e3 * statistics.median(
            (h["actor_s"] - h.get("client_node_s", 0.0)) / nodes for h in hist[1:]
        )
        row[f"{name}_outside_actor_ms_per_message"] = 1e3 * statistics.median(
            (h["train_s"] - h["actor_s"]) / nodes for h in hist[1:]
        )
    row["fedrec_node_glue_ms_per_message"] = 1e3 * statistics.median(
        (h["client_node_s"] - h["client_compute_s"]) / nodes for h in fedrec[1:]
    )
    fo = row["fedrec_overhead_ms_per_client"]
    row["overhead_ratio"] = fo / row["echo_ms_per_client"]
    row["overhead_ratio_vs_busy_echo"] = fo / row["busy_echo_ms_per_client"]
    row["overhead_ratio_vs_idle_echo"] = fo / row["idle_echo_ms_per_client"]
    row["mean_overhead_ratio"] = (
        row["fedrec_mean_overhead_ms_per_client"] / row["echo_mean_ms_per_client"]
    )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over the repeats of one client count."""
    out: dict[str, Any] = {
        "clients": rows[0]["clients"],
        "placement": rows[0]["placement"],
        "repeats": len(rows),
    }
    for key in (
        "overhead_ratio",
        "overhead_ratio_vs_busy_echo",
        "overhead_ratio_vs_idle_echo",
        "mean_overhead_ratio",
    ):
        vals = [r[key] for r in rows]
        mid = statistics.median(vals)
        out[key] = {"median": mid, "min": min(vals), "max": max(vals)}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--placements",
        nargs="+",
        choices=["shared", "pinned"],
        default=["shared", "pinned"],
        help="shared: all processes on all CPUs; pinned: node workers on their own",
    )
    p.add_argument("--out", default="bench/results/flower.json")
    args = p.parse_args()
    time_actor_calls()
    rows, summaries = [], []
    for n in args.clients:
        mine: dict[str, list[dict[str, Any]]] = {p: [] for p in args.placements}
        for _ in range(args.repeats):  # placements interleaved: drift hits both
            for p in args.placements:
                mine[p].append(measure(n, args.nodes, args.rounds, p == "pinned"))
                print(json.dumps(mine[p][-1]), flush=True)
        for p in args.placements:
            rows += mine[p]
            summaries.append(summary(mine[p]))
    result = {
        "summary": summaries,
        "wake_round_trip_us": {
            "same_cpu": wake_latency(),
            "other_cpu": wake_latency(other_cpu=True),
        },
        "rows": rows,
        "rounds": args.rounds,
        "counted_rounds": args.rounds - 1,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "command": "bench/flower.py --clients "
        + " ".join(map(str, args.clients))
        + f" --nodes {args.nodes} --rounds {args.rounds} --repeats {args.repeats}"
        + " --placements "
        + " ".join(args.placements),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
