"""Command line: ``fedrec run | table | sweep | methods | data``.

Examples
--------
    fedrec run configs/demo.toml --set train.rounds=5
    fedrec run --resume runs/demo-fedavg-s0-20261123-101500
    fedrec table configs/demo.toml --seeds 2
    fedrec table configs/demo.toml --methods fedavg local centralised
    fedrec table configs/demo.toml --seeds 3 --versus fedavg --reuse
    fedrec sweep configs/demo.toml --key privacy.ldp_epsilon --values 0 1 10
    fedrec data fetch kuaisar-r
    fedrec data fetch ml-100k --from .cache/ml-100k
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from fedrec import plots, tables
from fedrec.config import ExperimentConfig, load_config
from fedrec.data.fetch import DATASETS, ENV, cache_root, fetch
from fedrec.errors import FedrecError
from fedrec.intervals import paired_intervals as intervals_of
from fedrec.launch import resume_run
from fedrec.methods.rankings import REFERENCES
from fedrec.procs import sigterm_exits
from fedrec.registry import method_names
from fedrec.rundir import current_commit
from fedrec.runs import run_experiment

REUSE_HELP = (
    "keep finished runs made by another commit, a dirty tree or no recorded "
    "commit (default: run them again)"
)
SEED_VARIES = (
    "seed varies: pre-training init and batch order, adapter init, batch order, "
    "client sampling, LDP noise; fixed by the data config: split, open/private "
    "division, client partition, new users"
)
TOPK_SEED_VARIES = (
    "seed varies: init of what trains (LoRA or tower), batch order, client "
    "sampling, the "
    "validation subsample; fixed by the data config: split, user groups"
)


def _common(sp: argparse.ArgumentParser) -> None:
    """``--set``, ``--quiet`` and ``--preset``, which ``run`` and ``table`` share."""
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=0.01 (repeatable)",
    )
    sp.add_argument("--quiet", action="store_true", help="no progress output")
    sp.add_argument(
        "--preset", metavar="NAME", help="apply the config's [presets] NAME first"
    )


def _run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("config", nargs="?", help="experiment TOML file")
    _common(run)
    run.add_argument(
        "--out", type=Path, help="run directory (default: run.out_dir/...)"
    )
    run.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a killed run"
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


def _table_parser(sub: Any) -> None:
    table = sub.add_parser("table", help="run several methods and seeds; write a table")
    table.add_argument("config", nargs="+", help="one or more experiment TOML files")
    _common(table)
    table.add_argument(
        "--methods",
        nargs="+",
        choices=method_names(),
        help="plain methods (default: the config's [variants])",
    )
    table.add_argument("--variants", nargs="+", help="only these variants")
    table.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    table.add_argument("--out", type=Path, default=Path("results/table"))
    table.add_argument(
        "--versus",
        metavar="NAME",
        nargs="+",
        help="reference(s) of the paired bootstrap intervals: table.md shows Δ "
        "against the first, intervals.csv holds every one (default: the config's "
        "[method] name if it is a variant, else the first variant)",
    )
    table.add_argument("--reuse", action="store_true", help=REUSE_HELP)


def _sweep_parser(sub: Any) -> None:
    sw = sub.add_parser("sweep", help="vary one config value; write a table and plot")
    sw.add_argument("config")
    sw.add_argument("--key", required=True, help="e.g. privacy.ldp_epsilon")
    sw.add_argument("--values", nargs="+", required=True, help="TOML literals")
    sw.add_argument("--seeds", type=int, default=1)
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sw.add_argument("--out", type=Path, default=Path("results/sweep"))
    sw.add_argument("--quiet", action="store_true", help="no line per finished run")
    sw.add_argument("--reuse", action="store_true", help=REUSE_HELP)
    sw.add_argument(
        "--tune",
        metavar="KEY=V1,V2,...",
        help="also run KEY at each value and add rows with the one that validates "
        "best, e.g. privacy.ldp_clip=0.1,0.3,3",
    )
    sw.add_argument(
        "--tune-for", nargs="+", metavar="VALUE", help="swept values to tune (all)"
    )
    sw.add_argument("--versus", help="reference value of the intervals (the first)")


def _data_parser(sub: Any) -> None:
    data = sub.add_parser("data", help="install the named datasets (data.name)")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    fe = dsub.add_parser(
        "fetch",
        help=f"download, verify (sha256) and install a dataset into ${ENV}/NAME "
        "(default ~/.cache/fedrec/NAME)",
    )
    fe.add_argument("name", choices=list(DATASETS))
    fe.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="DIR",
        help="install from a local copy of the files (or of the upstream archive) "
        "instead of downloading; verified the same way",
    )
    fe.add_argument("--force", action="store_true", help="replace an installed copy")
    dsub.add_parser("list", help="the datasets, their sources and install state")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedrec", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    _run_parser(sub)
    _table_parser(sub)
    _sweep_parser(sub)
    sub.add_parser("methods", help="list registered methods")
    _data_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedrec`` command.

    As the command (``argv`` None) it ends when told to, through ``finally``
    blocks (issue 27): on ``SIGTERM`` as on ``Ctrl-C`` (:func:`sigterm_exits`;
    once Ray runs, Ray's own handler, also a ``SystemExit``), so Flower's
    simulation shuts Ray down. Ray's failure-signal handler (C++), which
    would abort the process on ``SIGTERM`` first, is turned off
    (``RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1`` unless set). Threads left
    waiting (Flower's ServerApp thread waits for replies up to its round
    timeout) are not joined: the process exits. A caller passing ``argv``
    keeps its own signal handling.
    """
    args = _parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # alembic (imported by Flower's link state) announces each plugin at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    command = argv is None
    if command:
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        with sigterm_exits() if command else contextlib.nullcontext():
            if args.cmd == "methods":
                print("\n".join(method_names()))
            elif args.cmd == "run":
                _run(args)
            elif args.cmd == "sweep":
                _sweep(args)
            elif args.cmd == "data":
                _data(args)
            else:
                _table(args)
    except FedrecError as e:
        print(f"fedrec: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit) as e:
        if command and _waiting_threads():
            _exit_now(e)
        raise
    return 0


def _waiting_threads() -> list[threading.Thread]:
    """Threads that would keep this interpreter from exiting (not daemons)."""
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon]


def _exit_now(e: BaseException) -> NoReturn:
    """Exit on ``KeyboardInterrupt`` / ``SystemExit`` without joining threads."""
    if isinstance(e, KeyboardInterrupt):
        code = 128 + signal.SIGINT
    else:
        status = e.code if isinstance(e, SystemExit) else None
        code = status if isinstance(status, int) else 1
    names = ", ".join(t.name for t in _waiting_threads())
    print(f"fedrec: stopped (exit {code}); not waiting for: {names}", file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
        if args.engine == "flower":  # an optional extra: imported when asked for
            from fedrec.flower.simulation import run_flower

            summary = run_flower(cfg, args.out, args.nodes)
        else:
            summary = run_experiment(cfg, args.out, progress=not args.quiet)
    _print_summary(summary)


def _data(args: argparse.Namespace) -> None:
    if args.data_cmd == "list":
        for ds in DATASETS.values():
            where = cache_root() / ds.name
            state = "installed" if where.is_dir() else "not installed"
            print(f"{ds.name}\t{ds.kind}\t{state}\t{where}\t{ds.source}")
        return
    where, new = fetch(args.name, args.source, force=args.force)
    print(f"{args.name}: {'installed' if new else 'already installed'} in {where}")


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


def _made_by(argv: list[str]) -> str:
    """The line a results table opens with: the command and the code's commit."""
    commit = current_commit() or "unknown (not a git checkout)"
    return f"Made by `fedrec {shlex.join(argv)}` at commit {commit}."


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
    own = load_config(args.config[0], args.set, args.preset).method["name"]
    labels = [label for label, _ in runs]
    versus = [_reference(v, labels, own) for v in args.versus or [None]]
    with _runs_quietly():
        rows = tables.run_all(runs, args.seeds, args.out, not args.quiet, args.reuse)
    header = "\n\n".join(headers)
    users = sorted({r["test_users"] for r in rows if r.get("test_users")})
    if users:
        header += f"\n\nTest users per run: {', '.join(map(str, users))}."
    if args.preset:
        header = f"Preset `{args.preset}`.\n\n{header}"
    header = f"{_made_by(args.argv)}\n\n{header}"
    intervals = intervals_of(rows, versus[0])
    for other in versus[1:]:
        intervals.rows += intervals_of(rows, other).rows
    print(tables.write_table(rows, args.out, header, intervals=intervals))
    if rows and rows[0].get("test_ndcg@10_clients") is not None:
        every_round = all("test" in c.eval.splits for _, c in runs)
        plots.plot_curves(rows, args.out, f"{'test' if every_round else 'val'}_ndcg@10")
        plots.plot_clients(rows, args.out)
    else:
        plots.plot_curves(rows, args.out)
    print(f"results: {args.out}")


@contextlib.contextmanager
def _runs_quietly() -> Iterator[None]:
    """Hold fedrec's INFO lines (data, pre-training, timings) while a table runs.

    A table prints one line per finished run instead (:func:`tables.run_line`);
    warnings still show.
    """
    logger = logging.getLogger("fedrec")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _reference(versus: str | None, labels: list[str], own: str) -> str:
    """``versus`` (checked), else the method ``own`` if a label, else the first."""
    labels = list(dict.fromkeys(labels))
    if versus is not None:
        if versus not in labels:
            raise FedrecError(f"--versus {versus}: not among {labels}")
        return versus
    return own if own in labels else labels[0]


def _sweep(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    tune = None
    if args.tune:
        tkey, eq, grid = args.tune.partition("=")
        if not eq or not grid:
            raise FedrecError(f"--tune {args.tune}: expected KEY=V1,V2,...")
        tune = (tkey.strip(), [g.strip() for g in grid.split(",")])
    with _runs_quietly():
        rows = tables.sweep(
            cfg,
            args.key,
            args.values,
            args.seeds,
            args.out,
            not args.quiet,
            args.config,
            args.reuse,
            tune,
            args.tune_for,
        )
    header = (
        f"{_made_by(args.argv)}\n\n{_header(args.config, cfg, args.seeds)}"
        f" Sweep of `{args.key}`."
    )
    if tune:
        header += (
            f" Rows '…, {tune[0].rsplit('.', 1)[-1]} tuned': the value of "
            f"`{tune[0]}` among the config's and {', '.join(tune[1])} with the best "
            f"mean val_{cfg.eval.select_metric} (every run in sweep-grid.csv)."
        )
        tables.write_table(rows, args.out, header, by="value", name="sweep-grid")
    shown = [r for r in rows if not r.get("grid")]
    labels = [r["value"] for r in shown]
    versus = _reference(args.versus, labels, labels[0])
    intervals = intervals_of(shown, versus)
    print(
        tables.write_table(
            shown, args.out, header, by="value", name="sweep", intervals=intervals
        )
    )
    plots.plot_sweep(rows, args.out, args.key)
    print(f"results: {args.out}")


def _header(path: str, cfg: ExperimentConfig, seeds: int) -> str:
    d, t = cfg.data, cfg.train
    where = f"`{d.kind}` {d.path or d.name}".strip()
    if cfg.backbone.kind != "ctr":
        b = cfg.backbone
        decode = (
            f", titles decoded greedily to ≤ {b.max_new_tokens} tokens"
            if b.kind == "causal-lm"
            else ""
        )
        trains = (
            f"frozen text features, tower d = {b.tower_dim}, {b.tower_layers} "
            f"layer(s), {b.tower_heads} heads, window {b.window}"
            if b.kind == "text-features"
            else b.finetune
        )
        schedule = (
            f" (warm-up {t.warmup_rounds} rounds, × {t.lr_decay} a round)"
            if t.warmup_rounds or t.lr_decay != 1
            else ""
        )
        when = "every round" if "test" in cfg.eval.splits else "once, at that round"
        initial = " (the untrained model, round -1, included)" * cfg.eval.initial
        refs = [
            label
            for label, v in cfg.variants.items()
            if isinstance(v, dict) and v.get("method", {}).get("name") in REFERENCES
        ]
        ref_note = (
            f" Reference rows {', '.join(refs)}: rankings from the train split's "
            "interactions (no model, no training), on the same samples and metrics."
            if refs
            else ""
        )
        return (
            f"Config `{path}`; data {where}; split {d.split}; {d.n_clients} clients "
            f"({d.clients}); backbone {b.kind} `{b.path or 'default'}` "
            f"({trains}); {t.rounds} rounds × {t.local_epochs} local epoch(s), "
            f"batch {t.batch_size}, lr {t.lr}{schedule}; budget: ≤ "
            f"{t.max_rows_per_client or 'all'} train samples per client per round, "
            f"≤ {cfg.eval.max_samples or 'all'} validation samples per user group"
            f"{decode}; selection by best val_{cfg.eval.select_metric}{initial}; "
            f"every test user, tested {when}; mean ± std over {seeds} seed(s) "
            f"({TOPK_SEED_VARIES}); per-client values over the {d.n_clients} user "
            f"groups for every method.{ref_note}"
        )
    u, e = d.users, cfg.eval
    division = (
        f"random {u.open_ratio:.0%} open"
        if u.style == "random"
        else f"open = {u.in_set_ratio:.0%} of users with {u.attribute} in "
        f"{u.values} + {u.out_set_ratio:.0%} of the others"
    )
    new = (
        f"; new users: {e.new_users:.0%} of the clients never train, reported "
        "apart (`_new`); the other columns cover the seen users"
        if e.new_users
        else ""
    )
    slices = (
        f"; light ≤ {e.light_rows}, heavy > {e.heavy_rows} train rows"
        if e.slices
        else ""
    )
    return (
        f"Config `{path}`; data {where}; split {d.split}; open/private division: "
        f"{division} (seed {u.seed}); clients: {u.clients} users{new}{slices}; "
        f"{t.rounds} rounds, {t.local_epochs} local epoch(s), batch "
        f"{t.batch_size}, client fraction {t.client_fraction}; selection by best "
        f"val_{cfg.eval.select_metric}; mean ± std over {seeds} seed(s) "
        f"({SEED_VARIES})."
    )


if __name__ == "__main__":
    sys.exit(main())
