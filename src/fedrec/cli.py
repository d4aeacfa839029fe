"""Command line: ``fedrec run | table | sweep | methods``.

Examples
--------
    fedrec run configs/demo.toml --set train.rounds=5
    fedrec run --resume runs/demo-fedavg-s0-20261123-101500
    fedrec table configs/demo.toml --seeds 2
    fedrec table configs/demo.toml --methods fedavg local centralised
    fedrec sweep configs/demo.toml --key privacy.ldp_epsilon --values 0 1 10
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from fedrec import tables
from fedrec.config import ExperimentConfig, load_config
from fedrec.errors import FedrecError
from fedrec.registry import method_names
from fedrec.runs import resume_run, run_experiment, run_flower


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
    run.add_argument(
        "--preset", metavar="NAME", help="apply the config's [presets] NAME first"
    )
    run.add_argument(
        "--engine",
        choices=["embedded", "flower"],
        default="embedded",
        help="flower: Flower's simulation engine (Ray), in-process",
    )
    run.add_argument(
        "--nodes", type=int, default=3, help="SuperNodes (--engine flower)"
    )
    table = sub.add_parser("table", help="run several methods and seeds; write a table")
    table.add_argument("config", nargs="+", help="one or more experiment TOML files")
    table.add_argument(
        "--methods",
        nargs="+",
        choices=method_names(),
        help="plain methods (default: the config's [variants])",
    )
    table.add_argument("--variants", nargs="+", help="only these variants")
    table.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    table.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    table.add_argument("--out", type=Path, default=Path("results/table"))
    table.add_argument("--quiet", action="store_true")
    table.add_argument(
        "--preset", metavar="NAME", help="apply the config's [presets] NAME first"
    )
    sw = sub.add_parser("sweep", help="vary one config value; write a table and plot")
    sw.add_argument("config")
    sw.add_argument("--key", required=True, help="e.g. privacy.ldp_epsilon")
    sw.add_argument("--values", nargs="+", required=True, help="TOML literals")
    sw.add_argument("--seeds", type=int, default=1)
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sw.add_argument("--out", type=Path, default=Path("results/sweep"))
    sw.add_argument("--quiet", action="store_true")
    sub.add_parser("methods", help="list registered methods")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedrec`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # alembic (imported by Flower's link state) announces each plugin at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        if args.cmd == "methods":
            print("\n".join(method_names()))
        elif args.cmd == "run":
            _run(args)
        elif args.cmd == "sweep":
            _sweep(args)
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
        summary = resume_run(args.resume, not args.quiet)
    else:
        if not args.config:
            raise FedrecError("give a CONFIG file or --resume RUN_DIR")
        cfg = load_config(args.config, args.set, args.preset)
        if args.engine == "flower":
            summary = run_flower(cfg, args.out, args.nodes)
        else:
            summary = run_experiment(cfg, args.out, progress=not args.quiet)
    _print_summary(summary)


def _print_summary(s: dict[str, Any]) -> None:
    ctr = ("best_val_auc", "test_auc", "test_gauc", "test_logloss")
    topk = (
        "best_val_recall@10",
        "test_recall@10",
        "test_ndcg@10",
        "test_ndcg@10_client_std",
    )
    keys = ("best_round", *(ctr if "test_auc" in s else topk), "wall_s")
    print(
        "  ".join(
            f"{k}={s[k]:.4f}" if isinstance(s.get(k), float) else f"{k}={s.get(k)}"
            for k in keys
        )
    )
    print(f"results: {s['run_dir']}")


def _table(args: argparse.Namespace) -> None:
    runs, headers = [], []
    for path in args.config:
        cfg = load_config(path, args.set, args.preset)
        runs += tables.variants(cfg, args.methods, args.variants, path)
        sets = [
            f"{label}: {', '.join(v['set'])}"
            for label, v in cfg.variants.items()
            if isinstance(v, dict) and v.get("set")
        ]
        headers.append(
            _header(path, cfg, args.seeds)
            + (f" Variant overrides: {'; '.join(sets)}." if sets else "")
        )
    rows = tables.run_all(runs, args.seeds, args.out, not args.quiet)
    header = "\n\n".join(headers)
    if args.preset:
        header = f"Preset `{args.preset}`.\n\n{header}"
    print(tables.write_table(rows, args.out, header))
    if rows and rows[0].get("test_ndcg@10_clients") is not None:
        every_round = all("test" in c.eval.splits for _, c in runs)
        tables.plot_curves(
            rows, args.out, f"{'test' if every_round else 'val'}_ndcg@10"
        )
        tables.plot_clients(rows, args.out)
    else:
        tables.plot_curves(rows, args.out)
    print(f"results: {args.out}")


def _sweep(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    rows = tables.sweep(
        cfg, args.key, args.values, args.seeds, args.out, not args.quiet, args.config
    )
    header = _header(args.config, cfg, args.seeds) + f" Sweep of `{args.key}`."
    print(tables.write_table(rows, args.out, header, by="value", name="sweep"))
    tables.plot_sweep(rows, args.out, args.key)
    print(f"results: {args.out}")


def _header(path: str, cfg: ExperimentConfig, seeds: int) -> str:
    d, t = cfg.data, cfg.train
    where = f"`{d.kind}` {d.path}".strip()
    if cfg.backbone.kind != "ctr":
        b = cfg.backbone
        decode = (
            f", titles decoded greedily to ≤ {b.max_new_tokens} tokens"
            if b.kind == "causal-lm"
            else ""
        )
        when = "every round" if "test" in cfg.eval.splits else "once, at that round"
        return (
            f"Config `{path}`; data {where}; split {d.split}; {d.n_clients} clients "
            f"({d.clients}); backbone {b.kind} `{b.path or 'default'}` "
            f"({b.finetune}); {t.rounds} rounds × {t.local_epochs} local epoch(s), "
            f"batch {t.batch_size}, lr {t.lr}; budget: ≤ "
            f"{t.max_rows_per_client or 'all'} train samples per client per round, "
            f"≤ {cfg.eval.max_samples or 'all'} validation samples per user group"
            f"{decode}; selection by best val_{cfg.eval.select_metric}; every test "
            f"user, tested {when}; mean ± std over {seeds} seed(s); per-client "
            f"values over the {d.n_clients} user groups for every method."
        )
    return (
        f"Config `{path}`; data {where}; split {d.split}; clients: {d.users.clients} "
        f"users; {t.rounds} rounds, {t.local_epochs} local epoch(s), batch "
        f"{t.batch_size}, client fraction {t.client_fraction}; selection by best "
        f"val_{cfg.eval.select_metric}; mean ± std over {seeds} seed(s)."
    )


if __name__ == "__main__":
    sys.exit(main())
