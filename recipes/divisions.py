"""The open/private divisions of a FedPA config, and the data that chose them.

    .venv/bin/python recipes/divisions.py configs/fedpa-kuaisar-r.toml \
        --attribute onehot_feat1 --out results/fedpa-kuaisar-r/divisions.json

For the config's own division and each ``[presets]`` entry that changes
``data.users``: open and private user counts, and for each value of
``--attribute`` its share of open and of private users. For every user
attribute of the data: per value, users, median rows per user and the mean of
the users' click rates (what an attribute division shifts). docs/fedpa.md
quotes the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from fedrec.build import load_data
from fedrec.config import load_config
from fedrec.pretrain import divide_users


def main() -> None:
    """Write the divisions' JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--attribute", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    raw_presets = load_config(args.config).presets
    presets = [None] + [
        p for p, sets in raw_presets.items() if any("data.users" in s for s in sets)
    ]
    data = None
    out: dict = {
        "command": "python " + " ".join(sys.argv),
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "divisions": {},
    }
    for preset in presets:
        cfg = load_config(args.config, preset=preset)
        data = data or load_data(cfg)
        col = data.user_features[:, data.user_feature_names.index(args.attribute)]
        open_, private = divide_users(data, cfg.data.users)
        values = np.unique(col)
        out["divisions"][preset or "config"] = {
            "users": cfg.data.users.__dict__,
            "open": len(open_),
            "private": len(private),
            f"{args.attribute}_share": {
                int(v): {
                    "open": round(float(np.mean(col[open_] == v)), 4),
                    "private": round(float(np.mean(col[private] == v)), 4),
                }
                for v in values
            },
        }
    df = data.interactions
    per_user = df.groupby("user")["label"].agg(["size", "mean"])
    users = per_user.index.to_numpy()
    out["attributes"] = {}
    for j, name in enumerate(data.user_feature_names):
        col = data.user_features[users, j]
        out["attributes"][name] = {
            int(v): {
                "users": int(np.sum(col == v)),
                "median_rows": float(np.median(per_user["size"].to_numpy()[col == v])),
                "mean_click_rate": round(
                    float(np.mean(per_user["mean"].to_numpy()[col == v])), 4
                ),
            }
            for v in np.unique(col)
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
