"""Command line: ``fedrec run``, ``fedrec table``, ``fedrec methods``.

Examples
--------
    fedrec run configs/demo.toml --set train.rounds=5
    fedrec run --resume runs/demo-fedavg-s0-20261123-101500
    fedrec table configs/demo.toml --methods fedavg local centralised --seeds 2
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import ExperimentConfig, config_from_raw, load_config
from fedrec.errors import FedrecError
from fedrec.registry import method_names
from fedrec.runs import Run, load_data, run_experiment

TABLE_COLUMNS = [
    "method",
    "seed",
    "best_round",
    "val_auc",
    "test_auc",
    "test_gauc",
    "test_logloss",
    "test_f1",
    "upload_bytes_per_round",
    "wall_s",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedrec", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("config", nargs="?", help="experiment TOML file")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=0.01 (repeatable)",
    )
    run.add_argument(
        "--out", type=Path, help="run directory (default: run.out_dir/...)"
    )
    run.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a killed run"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    table = sub.add_parser("table", help="run several methods and seeds; write a table")
    table.add_argument("config")
    table.add_argument("--methods", nargs="+", required=True, choices=method_names())
    table.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    table.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    table.add_argument("--out", type=Path, default=Path("results/table"))
    table.add_argument("--quiet", action="store_true")
    sub.add_parser("methods", help="list registered methods")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedrec`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.cmd == "methods":
            print("\n".join(method_names()))
        elif args.cmd == "run":
            _run(args)
        else:
            _table(args)
    except FedrecError as e:
        print(f"fedrec: error: {e}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.resume:
        if args.config or args.set:
            raise FedrecError(
                "--resume takes the run directory only (its config is kept)"
            )
        summary = Run.resume(args.resume).execute(not args.quiet)
    else:
        if not args.config:
            raise FedrecError("give a CONFIG file or --resume RUN_DIR")
        cfg = load_config(args.config, args.set)
        summary = run_experiment(cfg, args.out, progress=not args.quiet)
    _print_summary(summary)


def _print_summary(s: dict[str, Any]) -> None:
    keys = (
        "best_round",
        "best_val_auc",
        "test_auc",
        "test_gauc",
        "test_logloss",
        "wall_s",
    )
    print(
        "  ".join(
            f"{k}={s[k]:.4f}" if isinstance(s.get(k), float) else f"{k}={s.get(k)}"
            for k in keys
        )
    )
    print(f"results: {s['run_dir']}")


def table_rows(
    cfg: ExperimentConfig,
    methods: list[str],
    seeds: int,
    out: Path,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every method for seeds ``0..seeds-1`` on the same data; one row each."""
    data = load_data(cfg)
    rows = []
    for method in methods:
        for seed in range(seeds):
            raw = cfg.to_dict()
            raw["method"] = (
                cfg.method if method == cfg.method["name"] else {"name": method}
            )
            raw["run"]["seed"] = seed
            c = config_from_raw(raw)
            s = run_experiment(c, out / "runs" / f"{method}-s{seed}", progress, data)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "best_round": s.get("best_round"),
                    "val_auc": s.get("best_val_auc"),
                    **{k: s.get(k) for k in TABLE_COLUMNS[4:]},
                }
            )
    return rows


def write_table(rows: list[dict[str, Any]], out: Path, header: str) -> str:
    """``table.csv`` (one row per run) and ``table.md`` (mean ± std over seeds)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    metrics = [
        "val_auc",
        "test_auc",
        "test_gauc",
        "test_logloss",
        "test_f1",
        "upload_bytes_per_round",
        "wall_s",
    ]
    lines = [
        header,
        "",
        "| method | seeds | " + " | ".join(metrics) + " |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        cells = []
        for m in metrics:
            v = np.array([np.nan if r[m] is None else r[m] for r in rs], dtype=float)
            fmt = (
                "{:.0f}"
                if m in ("upload_bytes_per_round",)
                else "{:.4f}"
                if m != "wall_s"
                else "{:.1f}"
            )
            cells.append(
                fmt.format(np.mean(v))
                + (f" ± {fmt.format(np.std(v))}" if len(v) > 1 else "")
            )
        lines.append(f"| {method} | {len(rs)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def _table(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    rows = table_rows(cfg, args.methods, args.seeds, args.out, not args.quiet)
    header = (
        f"Config `{args.config}`; data `{cfg.data.kind}` {cfg.data.path}; split "
        f"{cfg.data.split}; {cfg.train.rounds} rounds; selection by best "
        f"val_{cfg.eval.select_metric}; mean ± std over {args.seeds} seed(s)."
    )
    print(write_table(rows, args.out, header))
    print(f"results: {args.out}")


if __name__ == "__main__":
    sys.exit(main())
