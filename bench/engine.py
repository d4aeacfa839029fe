"""Clients/s of the stacked engine vs the per-client loop, in one run.

    .venv/bin/python bench/engine.py --config configs/kuaisar-r-fedavg.toml --rounds 3

Times only local training + aggregation (``train_round``), not evaluation, on
the same config, seed and rounds for both engines; round 0 of each is a warm-up
and is not counted. Writes ``bench/results/engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from fedrec.build import build_engine, load_data
from fedrec.config import load_config


def clients_per_s(cfg_path: str, engine: str, rounds: int, data) -> tuple[float, int]:
    cfg = load_config(cfg_path, [f'train.engine="{engine}"'])
    eng = build_engine(cfg, data)
    eng.train_round(0)  # warm-up
    n, t0 = 0, time.perf_counter()
    for r in range(1, rounds + 1):
        n += eng.train_round(r)["clients"]
    return n / (time.perf_counter() - t0), eng.fed.n_clients


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/kuaisar-r-fedavg.toml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench/results/engine.json")
    args = p.parse_args()
    data = load_data(load_config(args.config))
    stacked, n_clients = clients_per_s(args.config, "stacked", args.rounds, data)
    loop, _ = clients_per_s(args.config, "loop", args.rounds, data)
    result = {
        "stacked_clients_per_s": round(stacked, 1),
        "loop_clients_per_s": round(loop, 1),
        "ratio": round(stacked / loop, 2),
        "config": args.config,
        "clients_per_round": n_clients,
        "timed_rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "command": f"bench/engine.py --config {args.config} --rounds {args.rounds}",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
