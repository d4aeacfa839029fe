"""FELLRec's balance strategy as it ran: similarity, heating and self-mix per round.

    .venv/bin/python recipes/balance_log.py results/fellrec-ml100k

Reads every ``runs/*/fellrec-s*/metrics.jsonl`` under the table directory
(each FELLRec round logs ``fellrec_s_min/mean/max``, the off-diagonal range of
the similarity matrix S; ``fellrec_heat``, each client's curriculum-heating
weight; ``fellrec_self_weight``, the weight a_ii of its own θ in its mix;
uniform mixing of C clients is 1/C) and writes ``balance.json`` beside the
table: per seed and round those values, their ranges over all rounds, and the
commit of the runs. docs/fellrec.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS = ("fellrec_s_min", "fellrec_s_mean", "fellrec_s_max")


def main() -> None:
    """Write ``balance.json`` for the table directory given."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", type=Path, help="a `fedrec table` output directory")
    args = ap.parse_args()
    rounds, commits = [], set()
    for run in sorted(args.table.glob("runs/*/fellrec-s*")):
        commits.add(json.loads((run / "summary.json").read_text()).get("commit"))
        for line in (run / "metrics.jsonl").read_text().splitlines():
            h = json.loads(line)
            if "fellrec_s_mean" in h:
                log = {k: h[k] for k in (*KEYS, "fellrec_heat", "fellrec_self_weight")}
                rounds.append({"run": run.name, "round": h["round"], **log})
    if not rounds:
        sys.exit(f"{args.table}: no FELLRec run logs the balance strategy")
    flat = {
        "s_offdiag": [r[k] for r in rounds for k in KEYS],
        "heat": [w for r in rounds for w in r["fellrec_heat"]],
        "self_weight": [w for r in rounds for w in r["fellrec_self_weight"]],
    }
    out = {
        "command": "python recipes/balance_log.py " + " ".join(sys.argv[1:]),
        "commit": sorted(c for c in commits if c),
        "clients": len(rounds[0]["fellrec_heat"]),
        "range": {k: [min(v), max(v)] for k, v in flat.items()},
        "rounds": rounds,
    }
    path = args.table / "balance.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["range"]), f"-> {path}")


if __name__ == "__main__":
    main()
