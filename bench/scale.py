"""FedPA's round cost as the number of clients grows (the engine as it is).

    .venv/bin/python bench/scale.py --users 10000 30000 100000

For each size, in a fresh process (peak RSS is per process): synthetic
KuaiSAR-like data with that many users (one client per private user, 25%
open users pre-train the foundation model for one epoch), FedPA with its
user- and group-level adapters, then one training round over every private
client on the stacked engine (no evaluation). Reports the round's clients/s,
the engine's private state in bytes (``ClientStore``, every client's dense
copy), the process's peak RSS and the setup time. Writes
``bench/results/scale.json``. A size that runs out of memory or time is
recorded as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def config(n_users: int) -> dict[str, Any]:
    """The synthetic FedPA config at ``n_users`` users."""
    return {
        "data": {
            "options": {
                "n_users": n_users,
                "n_items": 2000,
                "n_user_groups": 20,
                "interactions_per_user": [10, 20],
                "seed": 0,
            },
            "users": {"clients": "private", "open_ratio": 0.25},
        },
        "model": {"dim": 8, "layers": [32, 8], "init_from": "pretrain"},
        "pretrain": {"epochs": 1, "batch_size": 1024},
        "train": {"rounds": 1, "batch_size": 16, "lr": 0.01},
        "method": {"name": "fedpa", "group_attrs": ["group"]},
        "eval": {"splits": ["val"]},
    }


def one_size(n_users: int) -> dict[str, Any]:
    """Build the engine at ``n_users`` and time one round (in this process)."""
    import torch

    from fedrec.build import build_engine
    from fedrec.config import config_from_raw

    t0 = time.perf_counter()
    eng = build_engine(config_from_raw(config(n_users)))
    setup_s = time.perf_counter() - t0
    m = eng.train_round(0)
    store = sum(t.numel() * t.element_size() for t in eng.store.get(
        torch.arange(eng.fed.n_clients)).values())  # fmt: skip
    return {
        "users": n_users,
        "clients": m["clients"],
        "round_train_s": round(m["train_s"], 2),
        "clients_per_s": round(m["clients_per_s"], 1),
        "private_state_bytes": store,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "setup_s": round(setup_s, 1),
    }


def main() -> None:
    """Run each size in its own process; write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    p.add_argument("--timeout", type=int, default=900, help="seconds per size")
    p.add_argument("--out", default="bench/results/scale.json")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child's size
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one)))
        return
    rows = []
    for n in args.users:
        cmd = [sys.executable, __file__, "--one", str(n)]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout
            )
            out = done.stdout.strip().splitlines()
            failed = {"users": n, "failed": done.stderr.strip().splitlines()[-1:]}
            row = json.loads(out[-1]) if done.returncode == 0 and out else failed
        except subprocess.TimeoutExpired:
            row = {"users": n, "failed": f"over {args.timeout} s"}
        print(row, flush=True)
        rows.append(row)
    from fedrec.rundir import current_commit

    result = {
        "command": "bench/scale.py " + " ".join(sys.argv[1:]),
        "commit": current_commit(),
        "rows": rows,
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
