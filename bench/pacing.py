"""Does the ServerApp's reply pacer (``fedrec.flower.pacing``) still pay?

    .venv/bin/python bench/pacing.py --clients 100 --rounds 11 --repeats 3

FedPA on synthetic data in Flower's simulation (``bench/flower.py``'s config
and runner, 10 SuperNodes, one torch thread), each repeat running four ways,
interleaved: the ServerApp's reply wait paced by :class:`ReplyPacer` or by a
plain back-off (1 ms growing ×1.5 to 10 ms, the pacer's own rule before it
has seen two replies), each with Flower's simulation woken by its messages
(:mod:`fedrec.flower.internals`, fedrec's default on flwr 1.41.0) and stock
(``FEDREC_FLOWER_STOCK=1``, what another flwr version or a deployment's
polling gets). Per run, the median ``train_s`` of the rounds after the first
(round 0 starts the actors); per way, the median over repeats. ``gain``:
back-off time / paced time − 1 (> 0: the pacer saves that fraction).
Writes ``bench/results/pacing.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fedrec.flower import fleet  # noqa: E402
from fedrec.flower.internals import STOCK_ENV  # noqa: E402
from fedrec.flower.pacing import COARSE, ReplyPacer  # noqa: E402
from fedrec.runs import current_commit  # noqa: E402
from flower import config, flower_rounds  # noqa: E402  (bench/flower.py)


class Backoff(ReplyPacer):
    """The pacer without its pace: always the growing back-off."""

    def pause(self, now: float) -> float:
        """1 ms, then ×1.5 per empty poll up to 10 ms; reset by a reply."""
        pause, self.backoff = self.backoff, min(self.backoff * 1.5, COARSE)
        return pause


def one_run(clients: int, rounds: int, paced: bool, woken: bool) -> float:
    """Median ``train_s`` of rounds 1.. of one Flower simulation."""
    fleet.ReplyPacer = ReplyPacer if paced else Backoff  # type: ignore[misc]
    os.environ.pop(STOCK_ENV, None)
    if not woken:
        os.environ[STOCK_ENV] = "1"
    try:
        history = flower_rounds(config(clients, rounds), nodes=10, echo=False)
    finally:
        fleet.ReplyPacer = ReplyPacer  # type: ignore[misc]
        os.environ.pop(STOCK_ENV, None)
    return statistics.median(h["train_s"] for h in history if h["round"] > 0)


def main() -> None:
    """Run every way ``--repeats`` times, interleaved; write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench/results/pacing.json")
    args = p.parse_args()
    ways = [(paced, woken) for woken in (True, False) for paced in (True, False)]
    times: dict[tuple[bool, bool], list[float]] = {w: [] for w in ways}
    for rep in range(args.repeats):
        for w in ways:
            times[w].append(one_run(args.clients, args.rounds, *w))
            print(rep, "paced" if w[0] else "backoff", "woken" if w[1] else "stock",
                  f"{times[w][-1]:.4f} s/round", flush=True)  # fmt: skip
    summary = []
    for woken in (True, False):
        paced = statistics.median(times[(True, woken)])
        plain = statistics.median(times[(False, woken)])
        summary.append(
            {
                "simulation": "woken" if woken else "stock",
                "paced_train_s": paced,
                "backoff_train_s": plain,
                "gain": plain / paced - 1,
                "paced_runs": times[(True, woken)],
                "backoff_runs": times[(False, woken)],
            }
        )
    out = {
        "command": "bench/pacing.py " + " ".join(sys.argv[1:]),
        "commit": current_commit(),
        "clients": args.clients,
        "nodes": 10,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "cpus": len(os.sched_getaffinity(0)),
        "machine": platform.machine(),
        "summary": summary,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
