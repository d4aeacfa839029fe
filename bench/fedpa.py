"""FedPA on KuaiSAR-R: stacked engine vs per-client loop, and a full run's wall time.

    .venv/bin/python bench/fedpa.py --config configs/fedpa-kuaisar-r.toml --rounds 3

One run: clients/s of local training + aggregation on both engines (round 0 is
a warm-up), then the wall time of the config's full FedPA run (30 rounds, every
private client every round, evaluation included; the foundation model is
pre-trained first if not cached, and that time is reported apart). Writes
``bench/results/fedpa.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from engine import clients_per_s

from fedrec.build import build_engine, load_data
from fedrec.config import load_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/fedpa-kuaisar-r.toml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench/results/fedpa.json")
    args = p.parse_args()
    cfg = load_config(args.config)
    data = load_data(cfg)
    t0 = time.perf_counter()
    build_engine(cfg, data)  # pre-trains the foundation model if it is not cached
    pretrain_s = time.perf_counter() - t0
    stacked, n_clients = clients_per_s(args.config, "stacked", args.rounds, data)
    loop, _ = clients_per_s(args.config, "loop", args.rounds, data)
    t0 = time.perf_counter()
    eng = build_engine(cfg, data)
    for r in range(cfg.train.rounds):
        eng.run_round(r)
    full_s = time.perf_counter() - t0
    best = max(eng.history, key=lambda h: h["val_auc"])
    result = {
        "stacked_clients_per_s": round(stacked, 1),
        "loop_clients_per_s": round(loop, 1),
        "ratio": round(stacked / loop, 2),
        "full_run_s": round(full_s, 1),
        "full_run_rounds": cfg.train.rounds,
        "full_run_best_val_auc": round(best["val_auc"], 4),
        "full_run_test_auc_at_best": round(best["test_auc"], 4),
        "pretrain_s_if_not_cached": round(pretrain_s, 1),
        "clients_per_round": n_clients,
        "timed_rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "command": f"bench/fedpa.py --config {args.config} --rounds {args.rounds}",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
