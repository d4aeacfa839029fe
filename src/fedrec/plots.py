"""The plots of a results table: per-client values, per-round curves, sweeps.

Each plot also leaves the numbers it draws where a reader can check them
(``plot_curves`` writes them as CSV beside the PNG).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.atomic import atomic_write


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
