"""Results tables and sweeps: many runs on the same data, one row each.

``fedrec table CONFIG`` runs the config's ``[variants.<label>]`` (or
``--methods``) for seeds ``0..N-1`` and writes ``table.csv`` (one row per run),
``table.md`` (mean ± std over seeds) and ``test_auc_per_round.png``.
``fedrec sweep CONFIG --key K --values ...`` varies one config value and writes
``sweep.csv``, ``sweep.md`` and ``sweep.png``.

A variant is ``method = {...}`` (replacing ``[method]``) and/or
``set = ["key=value", ...]`` (the same overrides as ``--set``).
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.build import load_data
from fedrec.config import ExperimentConfig, apply_overrides, config_from_raw
from fedrec.data.dataset import InteractionData
from fedrec.errors import ConfigError
from fedrec.runs import Run, run_experiment

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
) -> list[dict[str, Any]]:
    """Run every ``(label, config)`` for each seed; data loaded once per data config.

    Resumable: a run directory that already finished with the same config is
    reused, one with a checkpoint is resumed; one made with another config is an
    error (nothing is overwritten).
    """
    cache: dict[str, InteractionData] = {}
    rows = []
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
            if s is None:
                if (run_dir / "checkpoint.pt").exists():
                    s = Run.resume(run_dir).execute(progress)
                else:
                    if key not in cache:
                        cache[key] = load_data(cfg)
                    s = run_experiment(c, run_dir, progress, cache[key])
            row = {k: s.get(k) for k in dict.fromkeys(COLUMNS + TOPK_COLUMNS)}
            row.update(
                method=label,
                seed=seed,
                val_auc=s.get("best_val_auc"),
                backbone=f"{c.backbone.kind}:{c.backbone.path or 'default'}",
                split_k=c.backbone.split_k_per_client or c.backbone.split_k,
                test_users=s.get("test_users"),
                run_dir=str(run_dir),
            )
            row["val_recall@10"] = s.get("best_val_recall@10")
            rows.append(row)
    return rows


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
) -> str:
    """``<name>.csv`` (a row per run) and ``<name>.md`` (mean ± std per ``by``).

    CTR runs get AUC-style columns; top-K runs (FELLRec) get Recall/NDCG@10,
    their spread across clients, the per-client NDCG@10 values and peak memory.
    """
    out.mkdir(parents=True, exist_ok=True)
    topk = all(r.get("test_auc") is None for r in rows)
    columns, md = (TOPK_COLUMNS, TOPK_MD) if topk else (COLUMNS, MD_METRICS)
    cols = ([by] if by not in columns else []) + columns
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [
        header,
        "",
        f"| {by} | seeds | " + " | ".join(md) + " |",
        "|---" * (len(md) + 2) + "|",
    ]
    group = (lambda r: (r["backbone"], r[by])) if topk else (lambda r: (r[by],))
    if topk:
        lines[2] = "| backbone " + lines[2]
        lines[3] += "---|"
    for key in dict.fromkeys(group(r) for r in rows):
        rs = [r for r in rows if group(r) == key]
        cells = [_cell([r[m] for r in rs], m) for m in md]
        lines.append(f"| {' | '.join(key)} | {len(rs)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


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
    """Mean ``metric`` per round per method (over seeds), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20").colors
    several = len({r.get("backbone") for r in rows}) > 1
    for k, key in enumerate(
        dict.fromkeys((r.get("backbone"), r["method"]) for r in rows)
    ):
        label = f"{key[0]} {key[1]}" if several else key[1]
        curves = []
        for r in rows:
            if (r.get("backbone"), r["method"]) == key:
                path = Path(r["run_dir"]) / "metrics.jsonl"
                curves.append(
                    [json.loads(x).get(metric) for x in path.read_text().splitlines()]
                )
        arr = np.array(
            [[np.nan if v is None else v for v in c] for c in curves], dtype=float
        )
        ax.plot(
            np.arange(arr.shape[1]),
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
    return path


def sweep(
    cfg: ExperimentConfig,
    key: str,
    values: list[str],
    seeds: int,
    out: Path,
    progress: bool = True,
    source: str = "",
) -> list[dict[str, Any]]:
    """Vary config ``key`` over ``values`` (TOML literals); one row per run."""
    base = cfg.to_dict()
    base.pop("variants")
    base.pop("presets")
    runs = []
    for v in values:
        raw = apply_overrides(base, [f"{key}={v}"])
        raw["run"]["name"] = f"{key}={v}"
        runs.append((f"{key}={v}", config_from_raw(raw, source)))
    rows = run_all(runs, seeds, out, progress)
    for r, (v, _) in zip(
        rows, [(v, s) for v in values for s in range(seeds)], strict=True
    ):
        r["value"] = v
    return rows


def plot_sweep(
    rows: list[dict[str, Any]], out: Path, key: str, metric: str = "test_auc"
) -> Path:
    """Mean ± std of ``metric`` against the swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = list(dict.fromkeys(r["value"] for r in rows))
    xs = [float(v) if v not in ("inf",) else math.inf for v in vals]
    means = [np.mean([r[metric] for r in rows if r["value"] == v]) for v in vals]
    stds = [np.std([r[metric] for r in rows if r["value"] == v]) for v in vals]
    fig, ax = plt.subplots(figsize=(6, 4))
    pos = [i for i, x in enumerate(xs) if math.isfinite(x) and x > 0]
    ax.errorbar(
        [xs[i] for i in pos],
        [means[i] for i in pos],
        yerr=[stds[i] for i in pos],
        marker="o",
        capsize=3,
        label="with LDP",
    )
    for i, x in enumerate(xs):
        if x == 0:  # 0 switches the mechanism off: the reference line
            ax.axhline(means[i], ls="--", color="grey", label=f"{key} = 0 (off)")
    ax.legend()
    ax.set(xlabel=key, ylabel=metric, xscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
