"""FedPA on KuaiSAR-R, step by step, with the library's API only.

    .venv/bin/python recipes/fedpa_kuaisar.py --seeds 3 --out runs/recipe-fedpa

Setup (the config → data, the foundation model pre-trained on the open users,
one client per private user) → rounds (sample, each client's update, the
server's update, evaluation) → the best round by validation → a table of
mean ± std over seeds per variant of the config. ``fedrec table`` runs these
same steps (and keeps run directories, resumes, plots, intervals); copy this
file to change one of them.
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

METRICS = ("val_auc", "test_auc", "test_gauc")


def one_run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train ``cfg`` round by round; the best validation round's metrics."""
    eng = build_engine(cfg)  # data, pre-training on open users, clients, strategy
    # the untrained model is a candidate too (round -1), if the config says so
    history = [evaluated(eng, {"round": -1})] if cfg.eval.initial else []
    for rnd in range(cfg.train.rounds):
        clients = eng.sample(rnd)  # this round's private clients, sorted ids
        received, private = eng.client_params(clients)  # what each one holds
        # every client at once, as stacked tensors: (C, ...) each
        uploads, private, losses = eng.client_update(rnd, clients, received, private)
        ok = eng.server_update(rnd, clients, uploads, received, private, losses)
        metrics = eng.round_metrics(rnd, clients, ok, losses, uploads, received, 0.0)
        history.append(evaluated(eng, metrics))
    return summarise(history, cfg)  # the best round by val, ties to the earliest


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every variant × seed; write ``table.md`` under ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fedpa-kuaisar-r.toml")
    ap.add_argument(
        "--variants", nargs="+", default=["local", "fedavg-full", "fedper", "fedpa"]
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("runs/recipe-fedpa"))
    args = ap.parse_args(argv)
    base = load_config(args.config, args.set)
    rows = []
    for label, cfg in variants(base, only=args.variants, source=args.config):
        for seed in range(args.seeds):
            rows.append(one_run(with_seed(cfg, seed)) | {"variant": label})
            print(label, seed, {m: rows[-1].get(m) for m in ("best_round", *METRICS)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table(rows, METRICS))
    print(table(rows, METRICS))
    return rows


if __name__ == "__main__":
    main()
