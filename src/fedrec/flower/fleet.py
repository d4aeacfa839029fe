"""The ServerApp's view of its SuperNodes, and how a round's replies close it.

:class:`Fleet` sends a round's messages and collects the replies that come;
:func:`close_round` aggregates what the served clients uploaded and
:func:`pooled_metrics` pools the nodes' evaluation statistics. Shared by the
ServerApp's rounds (:mod:`fedrec.flower.server`) and the split's
(:mod:`fedrec.flower.split_server`), which both sit above this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedrec.errors import FedrecError
from fedrec.flower.internals import REPLIED, wait_for_replies
from fedrec.flower.pacing import ReplyPacer
from fedrec.flower.runconfig import eval_splits

log = logging.getLogger("fedrec.flower")


@dataclass
class Fleet:
    """The run's SuperNodes as the ServerApp reaches them.

    ``host``: ``{partition-id: node id}`` (:func:`_discover`); ``opts``: the
    run config's ``min-nodes`` and timeouts; ``key`` names the nodes' stores of
    this run (stable across a resume).
    """

    grid: Any
    host: dict[int, int]
    opts: dict[str, Any]
    key: str = ""

    @property
    def parts(self) -> int:
        """The number of partitions (``num-partitions``)."""
        return len(self.host)

    def live(self, rnd: int) -> set[int]:
        """Partitions whose node is connected; waits for ``min-nodes`` of them."""
        need, t0 = int(self.opts["min-nodes"]), time.monotonic()
        while True:
            alive = set(self.grid.get_node_ids())
            live = {p for p, n in self.host.items() if n in alive}
            if len(live) >= need:
                gone = sorted(set(self.host) - live)
                if gone:
                    log.warning(
                        "round %d: SuperNodes of partitions %s are gone", rnd, gone
                    )
                return live
            if time.monotonic() - t0 > float(self.opts["node-timeout"]):
                raise FedrecError(
                    f"round {rnd}: {len(live)} SuperNode(s) left, min-nodes = {need}"
                )
            time.sleep(0.5)

    def collect(self, msgs: list[Any], rnd: int, kind: str) -> dict[int, Any]:
        """Send and receive; ``{partition: reply content}`` of those that succeeded.

        A node that answers with an error (it died — the SuperLink then answers
        for it —, the audit refused, the app raised) or not within
        ``round-timeout`` is logged and left out. Replies are matched to
        partitions by message id. Polls are paced to the replies' arrival
        (:class:`~fedrec.flower.pacing.ReplyPacer`), so a round ends about a
        millisecond after its last reply; in the simulation a stored reply
        wakes the poll at once (:mod:`fedrec.flower.internals`).
        """
        part_of = {n: p for p, n in self.host.items()}
        ids = list(self.grid.push_messages(msgs))
        waiting = {
            i: part_of[m.metadata.dst_node_id] for i, m in zip(ids, msgs, strict=True)
        }
        got, pacer = {}, ReplyPacer()
        end = time.monotonic() + float(self.opts["round-timeout"])
        while waiting and time.monotonic() < end:
            REPLIED.clear()  # before the poll: a reply stored meanwhile re-wakes
            replies = list(self.grid.pull_messages(list(waiting)))
            pacer.seen(time.monotonic(), len(replies))
            for rep in replies:
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
            if waiting:
                wait_for_replies(pacer.pause(time.monotonic()))
        for p in waiting.values():
            log.warning("round %d %s: no reply from partition %d in time", rnd, kind, p)
        return got

    def finish(self) -> None:
        """Tell every connected node the run is over (best effort)."""
        from flwr.app import ConfigRecord, Message, RecordDict

        alive = set(self.grid.get_node_ids())
        content = RecordDict({"config": ConfigRecord({"store": self.key})})
        msgs = [
            Message(content, n, "query.finish")
            for n in self.host.values()
            if n in alive
        ]
        self.collect(msgs, -1, "finish")


def close_round(
    eng: Any,
    rnd: int,
    clients: torch.Tensor,
    served: torch.Tensor,
    uploads: dict[str, torch.Tensor],
    received: dict[str, torch.Tensor],
    losses: torch.Tensor,
    t0: float,
    failed: set[int],
) -> dict[str, Any]:
    """Aggregate what the ``served`` clients uploaded; the round's train metrics.

    ``uploads``, ``received`` ``(C, ...)`` and ``losses`` ``(C,)`` cover every
    sampled client (``served``: bool ``(C,)``); ``failed``: partitions left out.
    """
    kept, uploads = clients[served], {n: t[served] for n, t in uploads.items()}
    rec = {n: t[served] for n, t in received.items()}
    ok = eng.server_update(rnd, kept, uploads, rec, {}, losses[served])
    m = eng.round_metrics(
        rnd, kept, ok, losses[served], uploads, rec, time.perf_counter() - t0
    )
    m.update(
        sampled=len(clients),
        failed_partitions=sorted(failed),
        received_on_server=sorted(uploads),  # what crossed the wire up
    )
    return m


def pooled_metrics(eng: Any, stats: Iterable[dict[str, np.ndarray]]) -> dict[str, Any]:
    """``<split>_<metric>``: the task's metrics of the nodes' ``stats`` summed.

    A node's ``stats`` entries are ``"<split>/<name>"``, the task's additive
    statistics of its rows (fixed shapes, ``task.stat_shapes()``); pooled by
    an elementwise sum over nodes, then ``task.metrics_from_stats``.
    """
    summed: dict[str, dict[str, np.ndarray]] = {}
    for record in stats:
        for k, v in record.items():
            split, _, name = k.partition("/")
            acc = summed.setdefault(split, {})
            acc[name] = acc[name] + v if name in acc else v
    out: dict[str, Any] = {}
    for split in eval_splits(eng):
        if split in summed:
            metrics = eng.task.metrics_from_stats(summed[split])
            out.update({f"{split}_{k}": v for k, v in metrics.items()})
    return out
