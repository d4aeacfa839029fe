"""Results tables and sweeps: many runs on the same data, one row each.

``fedrec table CONFIG`` runs the config's ``[variants.<label>]`` (or
``--methods``) for seeds ``0..N-1`` and writes ``table.csv`` (one row per run,
with the commit that made it), ``table.md`` (mean ± std over seeds, and each
method's difference to a reference with a paired bootstrap interval over test
users), ``intervals.csv`` (those intervals) and ``test_auc_per_round.png``.
``fedrec sweep CONFIG --key K --values ...`` varies one config value and writes
``sweep.csv``, ``sweep.md`` and ``sweep.png``.

A variant is ``method = {...}`` (replacing ``[method]``) and/or
``set = ["key=value", ...]`` (the same overrides as ``--set``). On top-K data
a variant may name a reference ranking (``popularity``, ``item-knn``,
:mod:`fedrec.references`): it gets a run directory and a row like a method.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.atomic import atomic_write
from fedrec.build import load_data
from fedrec.config import ExperimentConfig, apply_overrides, config_from_raw
from fedrec.data.dataset import InteractionData
from fedrec.errors import ConfigError
from fedrec.metrics.bootstrap import (
    PooledAUC,
    Statistic,
    UserMean,
    paired_difference,
    replicate,
)
from fedrec.metrics.reducers import probability_bins
from fedrec.rundir import LOWER_IS_BETTER, ROWS_FILE, commit_label, current_commit
from fedrec.runs import Run, run_experiment

log = logging.getLogger("fedrec")

COLUMNS = [
    "method",
    "seed",
    "best_round",
    "val_auc",
    "test_auc",
    "test_gauc",
    "test_logloss",
    "test_f1",
    "upload_bytes_per_round",
    "upload_bytes_per_client",
    "model_params",
    "device_bytes",
    "ldp_epsilon_total",
    "wall_s",
    "commit",
]
TOPK_COLUMNS = [
    "method",
    "backbone",
    "split_k",
    "seed",
    "best_round",
    "val_recall@10",
    "test_recall@10",
    "test_ndcg@10",
    "test_recall@10_client_std",
    "test_ndcg@10_client_std",
    "test_ndcg@10_client_gap",
    "test_ndcg@10_client_worst",
    "test_ndcg@10_clients",
    "test_users",
    "upload_bytes_per_client",
    "wall_s",
    "peak_rss_mb",
    "commit",
]
TOPK_MD = [
    "test_recall@10",
    "test_ndcg@10",
    "test_ndcg@10_client_std",
    "test_ndcg@10_client_worst",
    "wall_s",
    "peak_rss_mb",
]
MD_METRICS = [
    "val_auc",
    "test_auc",
    "test_gauc",
    "test_logloss",
    "test_f1",
    "upload_bytes_per_client",
    "device_bytes",
    "wall_s",
]
INTERVAL_METRICS = ("test_auc", "test_gauc")
# user slices of CTR runs (eval.new_users, eval.slices), shown when runs have them
SLICE_COLUMNS = [
    f"test_{m}_{s}" for s in ("light", "heavy", "new") for m in ("auc", "gauc")
]
TOPK_INTERVAL_METRICS = ("test_ndcg@10", "test_recall@10")


def variants(
    cfg: ExperimentConfig,
    methods: list[str] | None = None,
    only: list[str] | None = None,
    source: str = "",
) -> list[tuple[str, ExperimentConfig]]:
    """``(label, config)`` for each method named, else each declared variant."""
    base = cfg.to_dict()
    base.pop("variants")
    base.pop("presets")
    out = []
    if methods:
        for m in methods:
            raw = copy.deepcopy(base)
            raw["method"] = cfg.method if m == cfg.method["name"] else {"name": m}
            out.append((m, config_from_raw(raw, source)))
        return out
    if not cfg.variants:
        raise ConfigError(f"{source}: no [variants] declared; pass --methods")
    unknown = sorted(set(only or []) - set(cfg.variants))
    if unknown:
        raise ConfigError(
            f"{source}: unknown variants {unknown} (have {sorted(cfg.variants)})"
        )
    for label, spec in cfg.variants.items():
        if only and label not in only:
            continue
        where = f"{source}: variants.{label}"
        if not isinstance(spec, dict) or set(spec) - {"method", "set"}:
            raise ConfigError(f"{where} takes only 'method' and 'set'")
        raw = apply_overrides(base, list(spec.get("set", [])))
        if "method" in spec:
            raw["method"] = spec["method"]
        raw["run"]["name"] = label
        out.append((label, config_from_raw(raw, where)))
    return out


def run_all(
    runs: list[tuple[str, ExperimentConfig]],
    seeds: int,
    out: Path,
    progress: bool = True,
    reuse: bool = False,
) -> list[dict[str, Any]]:
    """Run every ``(label, config)`` for each seed; data loaded once per data config.

    Resumable: a run directory that already finished with the same config and
    the same clean commit is reused, one with a checkpoint is resumed; one made
    by another commit, a dirty tree or no recorded commit is removed and run
    again unless ``reuse``; one made with another config is an error (nothing
    is overwritten). ``progress``: print one line per run as it finishes
    (:func:`run_line`); runs show no progress bars.
    """
    cache: dict[str, InteractionData] = {}
    rows, commit = [], current_commit()
    total, t0 = len(runs) * seeds, time.perf_counter()
    pad = max((len(label) for label, _ in runs), default=0)
    for label, cfg in runs:
        key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
        for seed in range(seeds):
            raw = cfg.to_dict()
            raw["run"]["seed"] = seed
            c = config_from_raw(raw)
            run_dir = out / "runs" / f"{label}-s{seed}"
            if c.backbone.kind != "ctr":  # tables may hold several backbones
                run_dir = out / "runs" / c.backbone.kind / f"{label}-s{seed}"
            s = _finished(run_dir, c)
            why = None if reuse else _other_code(run_dir, s, commit)
            if why:
                log.warning("re-running %s: %s (--reuse keeps it)", run_dir, why)
                shutil.rmtree(run_dir)
                s = None
            kept = s is not None
            if s is None:
                if (run_dir / "checkpoint.pt").exists():
                    s = Run.resume(run_dir).execute(progress=False)
                else:
                    if key not in cache:
                        cache[key] = load_data(cfg)
                    s = run_experiment(c, run_dir, False, cache[key])
            row = {k: s.get(k) for k in dict.fromkeys(COLUMNS + TOPK_COLUMNS)}
            row |= {k: s[k] for k in SLICE_COLUMNS if k in s}
            row.update(
                method=label,
                seed=seed,
                val_auc=s.get("best_val_auc"),
                backbone=f"{c.backbone.kind}:{c.backbone.path or 'default'}",
                split_k=c.backbone.split_k_per_client or c.backbone.split_k,
                test_users=s.get("test_users"),
                run_dir=str(run_dir),
                commit=s.get("commit", ""),
            )
            row["val_recall@10"] = s.get("best_val_recall@10")
            rows.append(row)
            if progress:
                elapsed = time.perf_counter() - t0
                line = run_line(row, len(rows), total, c.train.rounds, kept, pad)
                print(f"{line}  [{elapsed:.0f} s]", flush=True)
    return rows


def run_line(
    row: dict[str, Any],
    done: int,
    total: int,
    rounds: int,
    kept: bool = False,
    pad: int = 0,
) -> str:
    """One finished run as one line: its label, seed, best round and metrics.

    ``[ 3/21] fedpa  seed 0  best round 22/30  val_auc 0.7560  test_auc 0.7477
    4.1 s`` (top-K runs: Recall@10 and NDCG@10; the label padded to ``pad``);
    ``kept`` marks a finished run found on disk and reused.
    """
    if row.get("test_auc") is not None:
        metrics = [("val_auc", row.get("val_auc")), ("test_auc", row["test_auc"])]
    else:
        metrics = [
            ("val_recall@10", row.get("val_recall@10")),
            ("test_ndcg@10", row.get("test_ndcg@10")),
        ]
    width = len(str(total))
    parts = [
        f"[{done:>{width}}/{total}]",
        f"{row['method']:<{pad}}",
        f"seed {row['seed']}",
        f"best round {row.get('best_round')}/{rounds}",
        *(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} –" for k, v in metrics),
        "kept" if kept else f"{row.get('wall_s') or 0:.1f} s",
    ]
    return "  ".join(parts)


def _finished(run_dir: Path, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of a finished run of ``cfg`` in ``run_dir``, else ``None``."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        return None
    try:  # fields added since the run was made take their defaults
        stored = config_from_raw(json.loads(cfg_path.read_text())).to_dict()
    except ConfigError:
        stored = None
    if json.loads(json.dumps(stored)) != json.loads(json.dumps(cfg.to_dict())):
        raise ConfigError(
            f"{run_dir} holds a run of another config; remove it or use another --out"
        )
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None


def _other_code(run_dir: Path, summary: dict[str, Any] | None, now: str) -> str:
    """Why the run in ``run_dir`` is not this clean commit's (``""`` if it is).

    A finished run's commit is its summary's; an unfinished one's, its
    ``env.json``'s (the commit that started it).
    """
    if summary is not None:
        made = summary.get("commit") or ""
    else:
        try:
            env = json.loads((run_dir / "env.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return ""  # nothing there to keep
        known = "git_dirty" in env
        made = commit_label(env.get("git_commit", ""), env.get("git_dirty", False))
        made = made if known else ""
    if not made:
        return "no recorded commit"
    if made.endswith("+dirty"):
        return f"made by a dirty tree ({made})"
    if made != now:
        return f"made by commit {made}, this is {now or 'not a git checkout'}"
    return ""


def _cell(values: list[Any], metric: str) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    fmt = (
        "{:.0f}" if "bytes" in metric else "{:.1f}" if metric == "wall_s" else "{:.4f}"
    )
    text = fmt.format(np.mean(v))
    return text + (f" ± {fmt.format(np.std(v))}" if len(v) > 1 else "")


def write_table(
    rows: list[dict[str, Any]],
    out: Path,
    header: str,
    by: str = "method",
    name: str = "table",
    intervals: Intervals | None = None,
) -> str:
    """``<name>.csv`` (a row per run) and ``<name>.md`` (mean ± std per ``by``).

    CTR runs get AUC-style columns; top-K runs (FELLRec) get Recall/NDCG@10,
    their spread across clients, the per-client NDCG@10 values and peak memory.
    With ``intervals`` (:func:`paired_intervals`): ``intervals.csv`` and a
    ``Δ<metric> vs <reference> [95% CI]`` column per interval metric.
    """
    out.mkdir(parents=True, exist_ok=True)
    topk = _is_topk(rows)
    columns, md = (TOPK_COLUMNS, TOPK_MD) if topk else (COLUMNS, MD_METRICS)
    slices = [c for c in SLICE_COLUMNS if any(c in r for r in rows)]
    if slices and not topk:
        at = md.index("test_gauc") + 1
        md = md[:at] + slices + md[at:]
        columns = columns + slices
    cols = ([by] if by not in columns else []) + columns
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    titles = list(md)
    if intervals is not None:
        write_intervals(intervals, out / "intervals.csv")
        ref = intervals.reference
        titles += [f"Δ{m} vs {ref} [95% CI]" for m in intervals.metrics]
    lines = [
        header,
        "",
        f"| {by} | seeds | " + " | ".join(titles) + " |",
        "|---" * (len(titles) + 2) + "|",
    ]
    group = (lambda r: (r["backbone"], r[by])) if topk else (lambda r: (r[by],))
    if topk:
        lines[2] = "| backbone " + lines[2]
        lines[3] += "---|"
    for key in dict.fromkeys(group(r) for r in rows):
        rs = [r for r in rows if group(r) == key]
        cells = [_cell([r[m] for r in rs], m) for m in md]
        if intervals is not None:
            block = key[0] if topk else ""
            cells += [intervals.cell(block, key[-1], m) for m in intervals.metrics]
        lines.append(f"| {' | '.join(key)} | {len(rs)} | " + " | ".join(cells) + " |")
    if intervals is not None:
        lines += ["", intervals.legend()]
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


def _is_topk(rows: list[dict[str, Any]]) -> bool:
    return all(r.get("test_auc") is None for r in rows)


@dataclass
class Intervals:
    """Paired bootstrap intervals of each method's difference to ``reference``.

    ``rows``: one dict per (backbone, method, metric) with ``diff``, ``lo``,
    ``hi`` (NaN where a side has no ``test_rows.npz``), ``n_users`` and
    ``seeds``; ``notes``: caveats printed under the table.
    """

    reference: str
    metrics: tuple[str, ...]
    resamples: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cell(self, backbone: str, method: str, metric: str) -> str:
        """``+0.0123 [+0.0051, +0.0190]*`` (``*``: the interval excludes 0)."""
        if method == self.reference:
            return "ref"
        for r in self.rows:
            key = (r["backbone"], r["method"], r["metric"], r["reference"])
            if key == (backbone, method, metric, self.reference):
                d, lo, hi = r["diff"], r["lo"], r["hi"]
                if not all(math.isfinite(x) for x in (d, lo, hi)):
                    return "–"
                star = "*" if lo > 0 or hi < 0 else ""
                return f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]{star}"
        return "–"

    def legend(self) -> str:
        """What the Δ columns are, and why a cell may be ``–``."""
        users = sorted({r["n_users"] for r in self.rows if r["n_users"]})
        text = (
            f"Δ: the method minus `{self.reference}` on the same test users, "
            "averaged over the seeds both have; 95% paired bootstrap interval "
            f"(B = {self.resamples} resamples of the "
            f"{'/'.join(map(str, users)) or '0'} test users with replacement, "
            "the same for every method and seed; percentile interval); "
            "* the interval excludes 0."
        )
        if any(not math.isfinite(r["diff"]) for r in self.rows):
            text += (
                f" –: the run or the reference kept no per-user test outputs "
                f"(`{ROWS_FILE}` of its best round; Flower runs keep none)."
            )
        return " ".join([text, *self.notes])


def paired_intervals(
    rows: list[dict[str, Any]], reference: str, b: int = 1000, seed: int = 0
) -> Intervals:
    """Each method's difference to ``reference`` with its bootstrap interval.

    See :mod:`fedrec.metrics.bootstrap` for the formula. CTR tables: pooled
    test AUC (scores on the probability grid of the reported histogram AUC,
    :mod:`fedrec.metrics.reducers`, so that Δ is the difference of the
    table's columns) and GAUC; top-K tables: mean per-user NDCG@10 and
    Recall@10, per backbone (a backbone without a ``reference`` run, e.g. a
    zero-shot row, is compared with the first backbone's). Users are matched
    by id; when runs hold different test users, the intersection is used and
    a note says so.
    """
    topk = _is_topk(rows)
    metrics: tuple[str, ...] = TOPK_INTERVAL_METRICS if topk else INTERVAL_METRICS
    if not topk and any("test_auc_new" in r for r in rows):
        metrics += ("test_auc_new",)
    out = Intervals(reference, metrics, b)
    blocks = list(dict.fromkeys(_block(r, topk) for r in rows))
    # a block without the reference (a zero-shot row of another backbone)
    # is compared with the reference of the first block that has it
    home = next(
        (
            k
            for k in blocks
            if any(r["method"] == reference and _block(r, topk) == k for r in rows)
        ),
        None,
    )
    for block in blocks:
        mine = [r for r in rows if _block(r, topk) == block]
        if home is not None and all(r["method"] != reference for r in mine):
            mine += [
                r for r in rows if _block(r, topk) == home and r["method"] == reference
            ]
        loaded = {
            (r["method"], r["seed"]): d
            for r in mine
            if (d := _test_rows(r)) is not None
        }
        reps, n_users = _replicates(loaded, metrics, topk, b, seed, out.notes)
        if all(r["method"] != reference for r in mine):
            out.notes.append(f"`{reference}` has no run on {block or 'this data'}.")
        own = [r for r in mine if _block(r, topk) == block]
        for method in dict.fromkeys(r["method"] for r in own):
            for metric in metrics if method != reference else ():
                diff, lo, hi, seeds = paired_difference(
                    _by_seed(reps, method, metric), _by_seed(reps, reference, metric)
                )
                out.rows.append(
                    dict(
                        backbone=block,
                        method=method,
                        metric=metric,
                        reference=reference,
                        diff=diff,
                        lo=lo,
                        hi=hi,
                        n_users=n_users if seeds else 0,
                        seeds=" ".join(map(str, seeds)),
                    )
                )
    return out


def _by_seed(
    reps: dict[tuple[str, int, str], np.ndarray], method: str, metric: str
) -> dict[int, np.ndarray]:
    return {s: v for (m, s, mt), v in reps.items() if (m, mt) == (method, metric)}


def _block(row: dict[str, Any], topk: bool) -> str:
    """Rows compared with each other: one backbone of a top-K table, else all."""
    return str(row.get("backbone", "")) if topk else ""


def _test_rows(row: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The run's ``test_rows.npz`` if it is of the summary's best round."""
    path = Path(row["run_dir"]) / ROWS_FILE
    if not path.exists():
        return None
    with np.load(path) as f:
        rows = {k: f[k] for k in f.files}
    return rows if int(rows["round"]) == row.get("best_round") else None


def _replicates(
    loaded: dict[tuple[str, int], dict[str, np.ndarray]],
    metrics: tuple[str, ...],
    topk: bool,
    b: int,
    seed: int,
    notes: list[str],
) -> tuple[dict[tuple[str, int, str], np.ndarray], int]:
    """:func:`replicate` of every (method, seed, metric) over the common users."""
    if not loaded:
        return {}, 0
    key = "user" if topk else "users"
    sets = [np.unique(d[key]) for d in loaded.values()]
    common = reduce(np.intersect1d, sets)
    if any(len(s) != len(common) for s in sets):
        notes.append(
            f"The runs' test users differ: intervals over the {len(common)} "
            f"users all of them share (of {max(len(s) for s in sets)})."
        )
    stats: dict[tuple[str, int, str], Statistic] = {}
    for (method, s), d in loaded.items():
        keep = np.isin(d[key], common)
        u = np.searchsorted(common, d[key][keep])
        for metric in metrics:
            stats[(method, s, metric)] = _statistic(d, keep, u, metric, len(common))
    return replicate(stats, len(common), b, seed), len(common)


def _statistic(
    d: dict[str, np.ndarray], keep: np.ndarray, u: np.ndarray, metric: str, n: int
) -> Statistic:
    """The bootstrap statistic of ``metric`` on rows ``keep`` of users ``u``.

    CTR metrics cover the seen users (rows of slice ``new`` left out), or
    one slice's users for ``test_<m>_<slice>``.
    """
    name, _, part = metric.removeprefix("test_").partition("_")
    if name in ("auc", "gauc"):
        if part:
            sel = d[part][keep]
        else:
            sel = ~d["new"][keep] if "new" in d else np.ones(len(u), dtype=bool)
        u, labels, probs = u[sel], d["labels"][keep][sel], d["probs"][keep][sel]
        if name == "auc":  # on the grid of the table's histogram AUC
            return PooledAUC(u, labels, probability_bins(probs), n)
        return UserMean.gauc(u, labels, probs, n)
    return UserMean.of_rows(u, d[metric.removeprefix("test_")][keep], n)


def write_intervals(intervals: Intervals, path: Path) -> None:
    """``intervals.csv``: method, metric, reference, diff, lo, hi, n_users, seeds."""
    cols = ["method", "metric", "reference", "diff", "lo", "hi", "n_users", "seeds"]
    if any(r["backbone"] for r in intervals.rows):
        cols.insert(0, "backbone")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(intervals.rows)


def plot_clients(
    rows: list[dict[str, Any]], out: Path, metric: str = "test_ndcg@10"
) -> Path:
    """Per-client ``metric`` (mean over seeds), one group of bars per client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    fig, axes = plt.subplots(
        len(backbones), 1, figsize=(8, 3.5 * len(backbones)), squeeze=False
    )
    for ax, bb in zip(axes[:, 0], backbones, strict=True):
        mine = [r for r in rows if r["backbone"] == bb]
        labels = list(dict.fromkeys(r["method"] for r in mine))
        per = {
            m: np.nanmean(
                [
                    [np.nan if v is None else v for v in r[f"{metric}_clients"]]
                    for r in mine
                    if r["method"] == m
                ],
                axis=0,
            )
            for m in labels
        }
        n = len(next(iter(per.values())))
        width = 0.8 / len(labels)
        for k, m in enumerate(labels):
            ax.bar(np.arange(n) + k * width, per[m], width, label=m)
        ax.set(
            title=bb,
            xlabel="client",
            ylabel=f"{metric} (mean over seeds)",
            xticks=np.arange(n) + 0.4 - width / 2,
            xticklabels=[str(c) for c in range(n)],
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{metric}_per_client.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(
    rows: list[dict[str, Any]], out: Path, metric: str = "test_auc"
) -> Path:
    """Mean ``metric`` per round per method (over seeds), one PNG.

    Rounds as recorded (``-1``: the untrained model, with ``eval.initial``).
    The numbers plotted, per run, go to ``<metric>_per_round.csv`` (backbone,
    method, seed, round, value).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    tab20 = plt.get_cmap("tab20")
    colours = [tab20(i) for i in range(20)]
    several = len({r.get("backbone") for r in rows}) > 1
    table = []
    for k, key in enumerate(
        dict.fromkeys((r.get("backbone"), r["method"]) for r in rows)
    ):
        label = f"{key[0]} {key[1]}" if several else key[1]
        curves, rounds = [], []
        for r in rows:
            if (r.get("backbone"), r["method"]) == key:
                path = Path(r["run_dir"]) / "metrics.jsonl"
                lines = [json.loads(x) for x in path.read_text().splitlines()]
                curves.append([h.get(metric) for h in lines])
                rounds = [h["round"] for h in lines]
                table += [
                    [r.get("backbone", ""), r["method"], r["seed"], h["round"], v]
                    for h, v in zip(lines, curves[-1], strict=True)
                    if v is not None
                ]
        arr = np.array(
            [[np.nan if v is None else v for v in c] for c in curves], dtype=float
        )
        ax.plot(
            rounds,
            np.nanmean(arr, 0),
            marker=".",
            label=label,
            color=colours[(2 * k) % 20 + (k // 10) % 2],
            ls=("-", "--", ":")[k // 10 % 3],
        )
    ax.set(xlabel="round", ylabel=f"{metric} (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / f"{metric}_per_round.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    with open(out / f"{metric}_per_round.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["backbone", "method", "seed", "round", metric])
        w.writerows(table)
    return path


def sweep(
    cfg: ExperimentConfig,
    key: str,
    values: list[str],
    seeds: int,
    out: Path,
    progress: bool = True,
    source: str = "",
    reuse: bool = False,
    tune: tuple[str, list[str]] | None = None,
    tune_for: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Vary config ``key`` over ``values`` (TOML literals); one row per run.

    ``tune = (key2, grid)``: for each value in ``tune_for`` (default: all), also
    run ``key2`` at each grid value, and add the rows ``"<v>, <key2> tuned"``:
    the runs of the ``key2`` value (the config's own or a grid one) with the
    best mean validation ``select_metric`` over seeds — chosen on validation
    only, reported on test. Every row has ``value`` (its label), ``method`` (the
    same, for :func:`paired_intervals`), ``swept`` (``v``) and ``grid`` (whether
    it is a grid run, kept out of the markdown table).
    ``reuse``: keep finished runs made by another commit (see :func:`run_all`).
    """
    base = cfg.to_dict()
    base.pop("variants")
    base.pop("presets")
    plan: list[tuple[str, str | None]] = [(v, None) for v in values]
    if tune is not None:
        plan += [(v, t) for v in (tune_for or values) for t in tune[1]]
    runs = []
    for v, t in plan:
        sets = [f"{key}={v}"] + ([f"{tune[0]}={t}"] if tune and t is not None else [])
        raw = apply_overrides(base, sets)
        raw["run"]["name"] = label = ",".join(sets)
        runs.append((label, config_from_raw(raw, source)))
    rows = run_all(runs, seeds, out, progress, reuse)
    each = [(v, t) for v, t in plan for _ in range(seeds)]
    for r, (v, t) in zip(rows, each, strict=True):
        short = tune[0].rsplit(".", 1)[-1] if tune else ""
        r["value"] = r["method"] = v if t is None else f"{v}, {short}={t}"
        r["swept"], r["grid"] = v, t is not None
    if tune is not None:
        for v in tune_for or values:
            rows += _tuned(rows, v, tune[0], cfg)
    return rows


def _tuned(
    rows: list[dict[str, Any]], v: str, key: str, cfg: ExperimentConfig
) -> list[dict[str, Any]]:
    """Copies of the runs of swept value ``v`` whose ``key`` value validates best."""
    metric = f"val_{cfg.eval.select_metric}"
    sign = 1 if cfg.eval.select_metric in LOWER_IS_BETTER else -1
    mine = [r for r in rows if r["swept"] == v]
    by_label = {r["value"]: [x for x in mine if x["value"] == r["value"]] for r in mine}
    best = min(
        by_label,
        key=lambda lab: sign * np.mean([float(x[metric]) for x in by_label[lab]]),
    )
    short = key.rsplit(".", 1)[-1]
    own = reduce(lambda d, k: d[k], key.split("."), cfg.to_dict())
    chosen = best.rsplit("=", 1)[1] if "=" in best else f"{own}"
    label = f"{v}, {short} tuned ({chosen})"
    return [
        {**r, "value": label, "method": label, "grid": False} for r in by_label[best]
    ]


def plot_sweep(
    rows: list[dict[str, Any]], out: Path, key: str, metric: str = "test_auc"
) -> Path:
    """Mean ± std of ``metric`` against the swept value.

    One line for the values as swept and one for their tuned rows (if any);
    the values 0 and ``inf`` (a mechanism off, or at its limit) as
    horizontal reference lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    shown = [r for r in rows if not r.get("grid")]
    for tuned in (False, True):
        mine = [r for r in shown if (r["value"] != r.get("swept", r["value"])) == tuned]
        labels = list(dict.fromkeys(r["value"] for r in mine))
        if not labels:
            continue
        xs = [
            float(r["swept"] if "swept" in r else r["value"])
            for r in (next(x for x in mine if x["value"] == lab) for lab in labels)
        ]
        ys = [[float(r[metric]) for r in mine if r["value"] == lab] for lab in labels]
        pos = [i for i, x in enumerate(xs) if 0 < x < math.inf]
        ax.errorbar(
            [xs[i] for i in pos],
            [np.mean(ys[i]) for i in pos],
            yerr=[np.std(ys[i]) for i in pos],
            marker="o",
            capsize=3,
            label="tuned on validation" if tuned else "as swept",
        )
        for i, x in enumerate(xs):
            if not tuned and x in (0, math.inf):
                style = "--" if x == 0 else ":"
                ax.axhline(
                    float(np.mean(ys[i])), ls=style, color="grey", label=f"{key} = {x}"
                )
    ax.legend()
    ax.set(xlabel=key, ylabel=metric, xscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "sweep.png"
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path
