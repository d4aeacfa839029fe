"""FELLRec on ML-100K (text-features backbone), step by step, with the library's API.

    .venv/bin/python recipes/fellrec_ml100k.py --seeds 3 --out runs/recipe-fellrec

Setup (the config → ML-100K leave-one-out samples, 5 KMeans user groups as
clients, the frozen MiniLM item features and a small sequence tower) → rounds
(sample, each client's local training, the server's dynamic balance:
similarity-weighted mixing per client with curriculum heating, evaluation)
→ the best round by validation → a table of mean ± std over seeds per variant
of the config. Each FELLRec round prints the balance it applied: the range of
the off-diagonal similarities s_ij and of the heating weights w_i. ``fedrec
table`` runs these same steps; copy this file to change one of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedrec.build import build_engine
from fedrec.config import ExperimentConfig, load_config
from fedrec.runs import summarise
from fedrec.tables import variants

sys.path.insert(0, str(Path(__file__).parent))
from common import evaluated, table, with_seed  # noqa: E402  (recipes/common.py)

METRICS = ("test_recall@10", "test_ndcg@10", "test_ndcg@10_client_std")


def one_run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train ``cfg`` round by round; the best validation round's metrics."""
    eng = build_engine(cfg)  # samples, user groups as clients, backbone, strategy
    history = [evaluated(eng, {"round": -1})] if cfg.eval.initial else []
    for rnd in range(cfg.train.rounds):
        clients = eng.sample(rnd)  # this round's clients (user groups)
        received, private = eng.client_params(clients)  # FELLRec: each its own θ_i
        uploads, private, losses = eng.client_update(rnd, clients, received, private)
        # FELLRec's server: θ_i ← (θ_i + w_i Σ_j s_ij θ_j) / (1 + w_i Σ_j s_ij)
        ok = eng.server_update(rnd, clients, uploads, received, private, losses)
        metrics = eng.round_metrics(rnd, clients, ok, losses, uploads, received, 0.0)
        if "fellrec_heat" in metrics:  # what the balance did this round
            s = (metrics["fellrec_s_min"], metrics["fellrec_s_max"])
            w = (min(metrics["fellrec_heat"]), max(metrics["fellrec_heat"]))
            print(f"  round {rnd}: s_ij in [{s[0]:.3f}, {s[1]:.3f}], w_i in "
                  f"[{w[0]:.3f}, {w[1]:.3f}]")  # fmt: skip
        history.append(evaluated(eng, metrics))
    return summarise(history, cfg)  # the best round by val, ties to the earliest


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every variant × seed; write ``table.md`` under ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fellrec-ml100k-features.toml")
    ap.add_argument(
        "--variants", nargs="+", default=["popularity", "fedavg", "fellrec"]
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("runs/recipe-fellrec"))
    args = ap.parse_args(argv)
    base = load_config(args.config, args.set)
    rows = []
    for label, cfg in variants(base, only=args.variants, source=args.config):
        for seed in range(args.seeds):
            print(label, "seed", seed)
            rows.append(one_run(with_seed(cfg, seed)) | {"variant": label})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table(rows, METRICS))
    print(table(rows, METRICS))
    return rows


if __name__ == "__main__":
    main()
