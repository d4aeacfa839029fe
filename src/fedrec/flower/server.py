"""The fedrec ServerApp: sampling, broadcast, aggregation and the run directory.

A round:

1. the server samples clients, drops those whose node is gone (logged), and
   broadcasts what each client receives (``strategy.broadcast``);
2. each node runs the engine's batched ``client_update`` for its clients (see
   :mod:`fedrec.flower.client`);
3. the server aggregates the replies that arrived (``server_update``); a node
   that fails or times out is logged and its clients sit the round out;
4. each live node scores its clients' validation/test rows and replies with
   their additive statistics (``task.stats``, no row); the server sums them
   and computes the metrics (``task.metrics_from_stats``).

With ``eval.initial``, step 4 first runs once before round 0 on the untrained
model (every node's store is still empty, so each client holds the initial
state): the history's round ``-1``, as in the embedded engine.

The server waits for ``min-nodes`` SuperNodes (up to ``node-timeout`` s) before
each round, and fails with a clear error when too few remain.
"""

from __future__ import annotations

import logging
import resource
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from fedrec.atomic import atomic_write
from fedrec.build import build_engine, load_checkpoint
from fedrec.config import config_from_raw
from fedrec.errors import CheckpointError, FedrecError
from fedrec.fl.simulate import INITIAL_ROUND, initial_entry
from fedrec.flower.fleet import Fleet, close_round, pooled_metrics
from fedrec.flower.mods import STATS, UPLOADS
from fedrec.flower.records import arrays, from_record, to_record
from fedrec.flower.runconfig import flower_config, raw_of
from fedrec.rundir import environment, finish_run, write_json, write_metrics

log = logging.getLogger("fedrec.flower")
DEFAULTS = {"min-nodes": 1, "node-timeout": 300.0, "round-timeout": 600.0}


def server_app_for(
    raw: dict[str, Any] | None = None,
    nodes: int | None = None,
    history: list[dict[str, Any]] | None = None,
    out: Path | None = None,
    resume: bool = False,
) -> Any:
    """The ServerApp for config ``raw`` (``None``: from the run config).

    ``nodes`` overrides the run config's ``min-nodes``; ``history`` receives
    each round's metrics (a resumed run's earlier rounds first). ``out`` (else
    the run config's ``out``) is the run directory; ``resume`` (else the run
    config's) continues the run whose checkpoint it holds.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from fedrec.flower import split, split_server

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = {**DEFAULTS, **dict(context.run_config)}
        opts = {k: rc[k] for k in DEFAULTS}
        if nodes is not None:
            opts["min-nodes"] = nodes
        raw_ = raw_of(raw, context)
        eng = build_engine(flower_config(raw_))  # fresh: this run's own state
        run_dir = out or (Path(str(rc["out"])) if rc.get("out") else None)
        writer = None
        if run_dir is not None:
            again = resume or str(rc.get("resume", "")).lower() in ("1", "true")
            writer = _RunWriter(run_dir, raw_, opts, again)
        key = writer.restore(eng) if writer else ""
        if history is not None:
            history.extend(eng.history)
        fleet = Fleet(grid, _discover(grid, int(opts["min-nodes"]), opts), opts, key)
        train, evaluate = _train_round, _evaluate_round
        if split.uses_split(eng):  # FELLRec's split: steps and decoding as messages
            train, evaluate = split_server.train_round, split_server.evaluate_round
        val = f"val_{eng.cfg.eval.select_metric}"

        def record(m: dict[str, Any]) -> None:
            """Append a round's metrics (and the caller's copy); checkpoint."""
            eng.history.append(m)
            if history is not None:
                history.append(m)
            if writer:
                writer.round(eng, key)

        if eng.needs_initial():  # round -1: the untrained model
            t0 = time.perf_counter()
            rnd = INITIAL_ROUND
            record(initial_entry(evaluate(fleet, eng, fleet.live(rnd), rnd), t0))
            m = eng.history[-1]
            log.info("untrained model: %s=%.4f", val, m.get(val, float("nan")))
        for rnd in range(eng.round, eng.cfg.train.rounds):
            t0 = time.perf_counter()
            live = fleet.live(rnd)
            m = train(fleet, eng, live, rnd)
            t1 = time.perf_counter()
            m.update(evaluate(fleet, eng, live, rnd))
            m["eval_s"] = time.perf_counter() - t1
            m["round_s"] = time.perf_counter() - t0
            m["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            eng.round = rnd + 1
            record(m)
            log.info(
                "round %d (%d/%d): %d/%d clients served, %s=%.4f, %.1f s",
                rnd,
                rnd + 1,
                eng.cfg.train.rounds,
                m["clients"],
                m["sampled"],
                val,
                m.get(val, float("nan")),
                m["round_s"],
            )
        fleet.finish()
        if writer:
            writer.finish(eng.history, fleet.parts)

    return server_app


def _train_round(fleet: Fleet, eng: Any, live: set[int], rnd: int) -> dict[str, Any]:
    """Sample, broadcast to the ``live`` partitions, aggregate; the metrics."""
    from flwr.app import Message

    t0 = time.perf_counter()
    clients, received, sel, contents = train_contents(
        eng, rnd, fleet.parts, live, fleet.key
    )
    msgs = [Message(contents[p], fleet.host[p], "train") for p in sel]
    replies = fleet.collect(msgs, rnd, "train")
    served = torch.zeros(len(clients), dtype=torch.bool)
    uploads = {n: torch.empty_like(received[n]) for n in eng.partition.uploaded}
    losses = torch.full((len(clients),), float("nan"), dtype=torch.float64)
    compute_s = node_s = 0.0
    for p, rep in replies.items():
        for n, t in from_record(rep[UPLOADS]).items():
            uploads[n][sel[p]] = t
        losses[sel[p]] = torch.tensor(rep["metrics"]["losses"], dtype=torch.float64)
        compute_s += float(rep["metrics"]["compute_s"])
        node_s += float(rep["metrics"].get("node_s", 0.0))
        served |= sel[p]
    failed = (set(sel) - set(replies)) | (set(fleet.host) - live)
    m = close_round(eng, rnd, clients, served, uploads, received, losses, t0, failed)
    m.update(
        client_compute_s=compute_s,  # inside client_update, summed over nodes
        client_node_s=node_s,  # inside the train handler, summed over nodes
    )
    return m


def train_contents(
    eng: Any, rnd: int, parts: int, live: set[int], key: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[int, Any], dict[int, Any]]:
    """Round ``rnd``'s train messages to the live partitions of ``parts``.

    ``(clients, received, {p: clients' mask}, {p: message content})``: the
    round's sample and its broadcast, and for each live partition hosting
    sampled clients their share (``received``, ``config``: round, clients,
    the run's store ``key``).
    """
    from flwr.app import ConfigRecord, RecordDict

    clients = eng.sample(rnd)
    groups = {a: g[clients] for a, g in eng.groups.items()}
    received = eng.strategy.broadcast(eng.server, eng.partition, clients, groups)
    sel = {p: (clients % parts) == p for p in sorted(live)}
    sel = {p: s for p, s in sel.items() if s.any()}
    contents = {}
    for p, s in sel.items():
        cfg = ConfigRecord({"round": rnd, "clients": clients[s].tolist(), "store": key})
        part = to_record({n: t[s] for n, t in received.items()})
        contents[p] = RecordDict({"received": part, "config": cfg})
    return clients, received, sel, contents


def _evaluate_round(fleet: Fleet, eng: Any, live: set[int], rnd: int) -> dict[str, Any]:
    """Every live node reduces its clients' scores to stats; the task pools them."""
    from flwr.app import ConfigRecord, Message, RecordDict

    cfg = ConfigRecord({"round": rnd, "store": fleet.key})
    all_ids, parts, msgs = torch.arange(eng.fed.n_clients), fleet.parts, []
    for p in sorted(live):
        mine = all_ids[all_ids % parts == p]
        g = {a: t[mine] for a, t in eng.groups.items()}
        part = to_record(eng.strategy.broadcast(eng.server, eng.partition, mine, g))
        content = RecordDict({"received": part, "config": cfg})
        msgs.append(Message(content, fleet.host[p], "evaluate"))
    scores = fleet.collect(msgs, rnd, "evaluate")
    return pooled_metrics(eng, [arrays(rep[STATS]) for rep in scores.values()])


def _discover(grid: Any, need: int, opts: dict[str, Any]) -> dict[int, int]:
    """Ask every SuperNode for its partition; ``{partition-id: node id}``."""
    from flwr.app import Message, RecordDict

    ids = _wait_nodes(grid, need, float(opts["node-timeout"]))
    msgs = [Message(RecordDict(), n, "query") for n in ids]
    host, parts = {}, set()
    for rep in grid.send_and_receive(msgs, timeout=float(opts["node-timeout"])):
        if rep.has_error():
            raise FedrecError(
                f"SuperNode {rep.metadata.src_node_id}: {rep.error.reason}"
            )
        info = rep.content["node"]
        host[int(info["partition-id"])] = rep.metadata.src_node_id
        parts.add(int(info["num-partitions"]))
    if len(parts) != 1 or set(host) != set(range(next(iter(parts)))):
        raise FedrecError(
            f"SuperNodes disagree on partitions: ids {sorted(host)}, "
            f"counts {sorted(parts)} (give each node a distinct partition-id "
            "in 0..num-partitions-1)"
        )
    return host


def _wait_nodes(grid: Any, need: int, timeout: float) -> list[int]:
    t0 = time.monotonic()
    while len(ids := sorted(grid.get_node_ids())) < need:
        if time.monotonic() - t0 > timeout:
            raise FedrecError(
                f"only {len(ids)} SuperNode(s) connected, min-nodes = {need} "
                f"(waited {timeout:.0f} s)"
            )
        time.sleep(0.2)
    return ids


class _RunWriter:
    """The run directory: config, env, metrics per round, checkpoint, summary.

    ``checkpoint.pt`` (written atomically after every round) holds the
    server's state — the model, aggregated parameters, history, round — and the
    key of the nodes' stores; the clients' private tensors stay on the nodes,
    whose round-tagged saves (:mod:`fedrec.flower.store`) match any round the
    checkpoint can stand at.
    """

    def __init__(
        self, out: Path, raw: dict[str, Any], opts: dict[str, Any], resume: bool
    ) -> None:
        self.out, self.cfg, self.resume = out, config_from_raw(raw), resume
        self.ckpt = out / "checkpoint.pt"
        check_run_dir(out, resume)
        if resume:
            _same_config(out / "config.json", self.cfg.to_dict())
            return
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", self.cfg.to_dict())
        write_json(
            out / "env.json", {**environment(self.cfg), "engine": "flower", **opts}
        )

    def restore(self, eng: Any) -> str:
        """Load the checkpoint into ``eng`` when resuming; the nodes' store key."""
        if self.resume and self.ckpt.exists():
            state = load_checkpoint(self.ckpt)
            eng.load_state_dict({**eng.state_dict(), **state})
            log.info("resuming %s at round %d", self.out, eng.round)
            return str(state["store_key"])
        return f"fedrec-{uuid.uuid4().hex[:12]}"

    def round(self, eng: Any, key: str) -> None:
        """After each round: the metrics, then the checkpoint."""
        write_metrics(self.out, eng.history)
        state = {k: v for k, v in eng.state_dict().items() if k != "store"}
        atomic_write(self.ckpt, lambda p: torch.save({**state, "store_key": key}, p))

    def finish(self, history: list[dict[str, Any]], parts: int) -> None:
        """Summary and plot."""
        finish_run(self.out, self.cfg, history, engine="flower", nodes=parts)


def check_run_dir(out: Path, resume: bool) -> None:
    """``out`` can take this run: new and free, or (``resume``) a killed one."""
    if (out / "summary.json").exists():
        raise CheckpointError(f"{out} already holds a finished run")
    if resume and not (out / "config.json").exists():
        raise CheckpointError(f"{out} is not a run directory (no config.json)")
    if not resume and (out / "checkpoint.pt").exists():
        raise CheckpointError(
            f"{out} already holds a run: continue it with "
            f"`fedrec run --resume {out}` (or run config resume=true)"
        )


def _same_config(path: Path, want: dict[str, Any]) -> None:
    """A run directory to resume must hold the same config."""
    import json

    try:
        have = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt ({e})") from None
    if have != json.loads(json.dumps(want)):
        raise CheckpointError(f"{path} holds another config than this run's")
