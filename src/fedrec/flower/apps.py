"""The fedrec ServerApp and ClientApp (Flower 1.41 Message API).

``flower_apps(raw, nodes)`` builds a pair for one config (in-process
simulation); the module-level ``server_app`` / ``client_app`` (named in
``pyproject.toml`` ``[tool.flwr.app.components]``) read the config from the
run config instead (``flwr run``: keys ``config``, ``preset``, ``set``,
``out``, ``min-nodes``, ``node-timeout``, ``round-timeout``).

Who hosts whom: a SuperNode with ``partition-id = p`` of ``num-partitions = P``
(Flower's simulation sets these; a deployed SuperNode gets them with
``--node-config``) hosts the clients ``c ≡ p (mod P)`` — for FedPA many users'
clients, for FELLRec one user group per node when ``P`` = the number of groups.
Their private tensors live in the node's ``Context.state`` and never in a
message. A round:

1. the server samples clients, drops those whose node is gone (logged), and
   broadcasts what each client receives (``strategy.broadcast``);
2. each node runs the engine's batched ``client_update`` for its clients; the
   client mods add LDP noise and audit the reply at the wire;
3. the server aggregates the replies that arrived (``server_update``); a node
   that fails or times out is logged and its clients sit the round out;
4. each live node scores its clients' validation/test rows; the server pools.

The server waits for ``min-nodes`` SuperNodes (up to ``node-timeout`` s) before
each round, and fails with a clear error when too few remain.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.config import config_from_raw, load_config
from fedrec.errors import FedrecError
from fedrec.flower.mods import SCORES, UPLOADS, upload_mods, wire_audit
from fedrec.flower.records import arrays, from_record, to_record

log = logging.getLogger("fedrec.flower")
_ENGINES: dict[str, Any] = {}
DEFAULTS = {"min-nodes": 1, "node-timeout": 300.0, "round-timeout": 600.0}


def engine_for(raw: dict[str, Any]) -> Any:
    """One engine (data, model, strategy) per process and config."""
    from fedrec.build import build_engine

    key = json.dumps(raw, sort_keys=True)
    if key not in _ENGINES:
        _ENGINES[key] = build_engine(config_from_raw(raw))
    return _ENGINES[key]


def config_from_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The fedrec config named by a Flower run config (``config``, ``preset``, ``set``).

    ``set`` holds ``;``-separated overrides (``"train.rounds=3; train.lr=0.1"``).
    """
    path = str(run_config.get("config", ""))
    if not path:
        raise FedrecError("Flower run config: 'config' (a fedrec TOML path) is empty")
    sets = [s.strip() for s in str(run_config.get("set", "")).split(";") if s.strip()]
    preset = str(run_config.get("preset", "")) or None
    return load_config(path, sets, preset).to_dict()


def flower_apps(
    raw: dict[str, Any] | None = None,
    nodes: int | None = None,
    history: list[dict[str, Any]] | None = None,
) -> tuple[Any, Any]:
    """(ServerApp, ClientApp) for config ``raw`` (``None``: from the run config).

    ``nodes`` overrides ``min-nodes``; ``history`` receives each round's metrics.
    """
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    def raw_of(context: Context) -> dict[str, Any]:
        return raw if raw is not None else config_from_run_config(context.run_config)

    def engine_of(context: Context) -> Any:
        return engine_for(raw_of(context))

    def shared(context: Context) -> set[str]:
        return set(engine_of(context).partition.uploaded)

    client_app = ClientApp(mods=[wire_audit(shared), upload_mods(engine_of)])
    server_app = ServerApp()

    def partition(context: Context) -> tuple[int, int]:
        nc = context.node_config
        if "partition-id" not in nc or "num-partitions" not in nc:
            raise FedrecError(
                "start each SuperNode with --node-config "
                "'partition-id=<i> num-partitions=<n>'"
            )
        return int(nc["partition-id"]), int(nc["num-partitions"])

    def bank(context: Context, eng: Any) -> dict[str, torch.Tensor]:
        """Private tensors of the node's clients, one row per hosted client."""
        if "private" not in context.state:  # every client starts from the model
            p, parts = partition(context)
            hosted = torch.arange(p, eng.fed.n_clients, parts)
            context.state["private"] = to_record(eng.store.get(hosted))
        return from_record(context.state["private"])

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        p, parts = partition(context)
        info = ConfigRecord({"partition-id": p, "num-partitions": parts})
        return Message(content=RecordDict({"node": info}), reply_to=msg)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        eng, cfg = engine_of(context), msg.content["config"]
        clients = torch.as_tensor(list(cfg["clients"]), dtype=torch.long)
        mine = bank(context, eng)
        slots = clients // partition(context)[1]
        private = {n: b[slots] for n, b in mine.items()}
        received = from_record(msg.content["received"])
        t0 = time.perf_counter()
        uploads, private, losses = eng.client_update(
            int(cfg["round"]), clients, received, private, mods=False
        )
        compute_s = time.perf_counter() - t0
        for n, b in mine.items():  # the private state stays on this node
            b[slots] = private[n]
        context.state["private"] = to_record(mine)
        metrics = {"losses": losses.tolist(), "compute_s": compute_s}
        content = RecordDict(
            {UPLOADS: to_record(uploads), "metrics": MetricRecord(metrics)}
        )
        return Message(content=content, reply_to=msg)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        eng = engine_of(context)
        p, parts = partition(context)
        hosted = torch.arange(p, eng.fed.n_clients, parts)
        params = {**from_record(msg.content["received"]), **bank(context, eng)}
        out = {}
        for split in eval_splits(eng):
            scores = eng.task.client_scores(split, [(hosted, params)], eng.cfg.train)
            out.update({f"{split}/{k}": v for k, v in scores.items()})
        return Message(content=RecordDict({SCORES: to_record(out)}), reply_to=msg)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = {**DEFAULTS, **dict(context.run_config)}
        opts = {k: rc[k] for k in DEFAULTS}
        if nodes is not None:
            opts["min-nodes"] = nodes
        raw_ = raw_of(context)
        eng = engine_for(raw_)
        writer = _RunWriter(Path(str(rc["out"])), raw_, opts) if rc.get("out") else None
        host = _discover(grid, int(opts["min-nodes"]), opts)
        for rnd in range(eng.cfg.train.rounds):
            t0 = time.perf_counter()
            live = _wait_live(grid, host, int(opts["min-nodes"]), opts, rnd)
            m = _train_round(grid, eng, host, live, rnd, opts)
            t1 = time.perf_counter()
            m.update(_evaluate_round(grid, eng, host, live, rnd, opts))
            m["eval_s"] = time.perf_counter() - t1
            m["round_s"] = time.perf_counter() - t0
            m["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if history is not None:
                history.append(m)
            if writer:
                writer.round(m)
            log.info("round %d: %d/%d clients served", rnd, m["clients"], m["sampled"])
        if writer:
            writer.finish(len(host))

    return server_app, client_app


def eval_splits(eng: Any) -> list[str]:
    """Splits scored every round on Flower: the config's, and test (no best.pt here)."""
    return list(dict.fromkeys([*eng.cfg.eval.splits, "test"]))


def _train_round(
    grid: Any,
    eng: Any,
    host: dict[int, int],
    live: set[int],
    rnd: int,
    opts: dict[str, Any],
) -> dict[str, Any]:
    """Sample, broadcast to the live nodes, aggregate what came back; the metrics."""
    from flwr.app import ConfigRecord, Message, RecordDict

    t0 = time.perf_counter()
    parts = len(host)
    clients = eng.sample(rnd)
    groups = {a: g[clients] for a, g in eng.groups.items()}
    received = eng.strategy.broadcast(eng.server, eng.partition, clients, groups)
    sel = {p: (clients % parts) == p for p in sorted(live)}
    sel = {p: s for p, s in sel.items() if s.any()}
    msgs = []
    for p, s in sel.items():
        cfg = ConfigRecord({"round": rnd, "clients": clients[s].tolist()})
        part = to_record({n: t[s] for n, t in received.items()})
        msgs.append(
            Message(RecordDict({"received": part, "config": cfg}), host[p], "train")
        )
    replies = _collect(grid, msgs, host, opts, rnd, "train")
    served = torch.zeros(len(clients), dtype=torch.bool)
    uploads = {n: torch.empty_like(received[n]) for n in eng.partition.uploaded}
    losses = torch.full((len(clients),), float("nan"), dtype=torch.float64)
    compute_s = 0.0
    for p, rep in replies.items():
        for n, t in from_record(rep[UPLOADS]).items():
            uploads[n][sel[p]] = t
        losses[sel[p]] = torch.tensor(rep["metrics"]["losses"], dtype=torch.float64)
        compute_s += float(rep["metrics"]["compute_s"])
        served |= sel[p]
    kept, uploads = clients[served], {n: t[served] for n, t in uploads.items()}
    rec = {n: t[served] for n, t in received.items()}
    ok = eng.server_update(rnd, kept, uploads, rec, {}, losses[served])
    m = eng.round_metrics(
        rnd, kept, ok, losses[served], uploads, rec, time.perf_counter() - t0
    )
    m.update(
        sampled=len(clients),
        failed_partitions=sorted((set(sel) - set(replies)) | (set(host) - live)),
        received_on_server=sorted(uploads),  # what crossed the wire up
        client_compute_s=compute_s,
    )
    return m


def _evaluate_round(
    grid: Any,
    eng: Any,
    host: dict[int, int],
    live: set[int],
    rnd: int,
    opts: dict[str, Any],
) -> dict[str, Any]:
    """Every live node scores its clients; the task pools the scores."""
    from flwr.app import Message, RecordDict

    all_ids, parts, msgs = torch.arange(eng.fed.n_clients), len(host), []
    for p in sorted(live):
        mine = all_ids[all_ids % parts == p]
        g = {a: t[mine] for a, t in eng.groups.items()}
        part = to_record(eng.strategy.broadcast(eng.server, eng.partition, mine, g))
        msgs.append(Message(RecordDict({"received": part}), host[p], "evaluate"))
    scores = _collect(grid, msgs, host, opts, rnd, "evaluate")
    out: dict[str, Any] = {}
    for split in eval_splits(eng):
        pooled: dict[str, list[np.ndarray]] = {}
        for rep in scores.values():
            for k, v in arrays(rep[SCORES]).items():
                if k.startswith(f"{split}/"):
                    pooled.setdefault(k.split("/", 1)[1], []).append(v)
        if pooled:
            cat = {k: np.concatenate(v) for k, v in pooled.items()}
            metrics = eng.task.pooled_metrics(cat)
            out.update({f"{split}_{k}": v for k, v in metrics.items()})
    return out


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


def _wait_live(
    grid: Any, host: dict[int, int], need: int, opts: dict[str, Any], rnd: int
) -> set[int]:
    """Partitions whose node is connected; waits for ``need`` of them."""
    t0 = time.monotonic()
    while True:
        alive = set(grid.get_node_ids())
        live = {p for p, n in host.items() if n in alive}
        if len(live) >= need:
            gone = sorted(set(host) - live)
            if gone:
                log.warning("round %d: SuperNodes of partitions %s are gone", rnd, gone)
            return live
        if time.monotonic() - t0 > float(opts["node-timeout"]):
            raise FedrecError(
                f"round {rnd}: {len(live)} SuperNode(s) left, min-nodes = {need}"
            )
        time.sleep(0.5)


def _collect(
    grid: Any,
    msgs: list[Any],
    host: dict[int, int],
    opts: dict[str, Any],
    rnd: int,
    kind: str,
) -> dict[int, Any]:
    """Send and receive; ``{partition: reply content}`` of the replies that succeeded.

    A node that answers with an error (it died — the SuperLink then answers for
    it —, the audit refused, the app raised) or not within ``round-timeout`` is
    logged and left out. Replies are matched to partitions by message id.
    """
    part_of = {n: p for p, n in host.items()}
    ids = list(grid.push_messages(msgs))
    waiting = {
        i: part_of[m.metadata.dst_node_id] for i, m in zip(ids, msgs, strict=True)
    }
    got, end = {}, time.monotonic() + float(opts["round-timeout"])
    while waiting and time.monotonic() < end:
        for rep in grid.pull_messages(list(waiting)):
            p = waiting.pop(rep.metadata.reply_to_message_id)
            if rep.has_error():
                log.warning(
                    "round %d %s: partition %d failed: %s",
                    rnd,
                    kind,
                    p,
                    rep.error.reason,
                )
            else:
                got[p] = rep.content
        time.sleep(0.05)
    for p in waiting.values():
        log.warning("round %d %s: no reply from partition %d in time", rnd, kind, p)
    return got


class _RunWriter:
    """The run directory of a ``flwr run``: config, env, metrics per round, summary."""

    def __init__(self, out: Path, raw: dict[str, Any], opts: dict[str, Any]) -> None:
        from fedrec.runs import environment, write_json

        self.out, self.cfg, self.history = out, config_from_raw(raw), []
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", self.cfg.to_dict())
        write_json(
            out / "env.json", {**environment(self.cfg), "engine": "flower", **opts}
        )

    def round(self, m: dict[str, Any]) -> None:
        from fedrec.runs import write_metrics

        self.history.append(m)
        write_metrics(self.out, self.history)

    def finish(self, parts: int) -> None:
        from fedrec.runs import finish_run

        finish_run(self.out, self.cfg, self.history, engine="flower", nodes=parts)


server_app, client_app = flower_apps()
