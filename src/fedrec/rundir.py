"""The files of a run directory, and the summary of a run's history.

A run directory holds:

- ``config.json``: the resolved, validated config (what ``--resume`` reads);
- ``env.json``: seed, command, Python/library versions, threads, the git
  commit and whether tracked files differed from it (``git_commit``,
  ``git_dirty``) when the run started;
- ``metrics.jsonl``: one JSON line per round (with ``eval.initial``, first
  the untrained model's, ``round = -1``);
- ``checkpoint.pt``: the state after the last finished round (written
  atomically: a kill never leaves half a file);
- ``summary.json``: the best round by validation metric, its test metrics and
  ``commit``, the code that finished the run (:func:`current_commit`);
- ``test_rows.npz``: the per-row test outputs of the best validation round
  (``round``: that round; CTR ``users``, ``labels``, ``probs``; top-K ``user``,
  ``client`` and one array per metric), for paired bootstrap intervals;
- ``metrics.png``: the metrics per round.

Every engine writes these through the functions here: the embedded engine
(:mod:`fedrec.runs`), the reference rankings (:mod:`fedrec.references`) and
the Flower ServerApp (:mod:`fedrec.flower.server`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.atomic import atomic_write
from fedrec.errors import ConfigError
from fedrec.sections import ExperimentConfig

TIMING_KEYS = ("train_s", "eval_s", "round_s", "clients_per_s", "peak_rss_mb")
LOWER_IS_BETTER = ("logloss",)
ROWS_FILE = "test_rows.npz"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (NaN written as null, ±inf as ``"inf"``/``"-inf"``)."""
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False)
    atomic_write(path, lambda p: p.write_text(text + "\n"))


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON takes it: NaN as ``None``, ±inf as ``"inf"``/``"-inf"``."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    return obj


def environment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Versions and machine facts recorded with every run."""
    versions = {}
    for pkg in (
        "torch",
        "numpy",
        "pandas",
        "scikit-learn",
        "flwr",
        "transformers",
        "peft",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    commit, dirty = git_state()
    return {
        "seed": cfg.run.seed,
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def git_state() -> tuple[str, bool]:
    """The checkout's commit and whether the package's code differs from it.

    Dirty: a tracked file under the package's directory (``src/fedrec``) is
    changed, or an untracked one is there — what a run computes. Results,
    configs (each run keeps its own in ``config.json``) and docs written
    while runs go do not count. ``("", False)`` outside a git checkout (an
    installed package).
    """

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=Path(__file__).parent,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "", False
    return commit, bool(git("status", "--porcelain", "--", "."))


def commit_label(commit: str, dirty: bool) -> str:
    """``<12-digit hash>``, ``+dirty`` appended for a dirty tree; ``""`` without git."""
    return f"{commit[:12]}{'+dirty' if dirty else ''}" if commit else ""


@functools.cache
def current_commit() -> str:
    """:func:`commit_label` of the code this process runs.

    Read once, when a process first asks: the code a process runs is what it
    imported when it started, whatever is committed or edited while it runs.
    """
    return commit_label(*git_state())


def summarise(history: list[dict[str, Any]], cfg: ExperimentConfig) -> dict[str, Any]:
    """Best round by validation ``select_metric``; the test metrics at that round.

    Ties go to the earliest round, so the untrained model (round ``-1``, with
    ``eval.initial``) is selected unless a trained round validates strictly
    better. ``rounds`` counts trained rounds; the upload and throughput
    figures are theirs, ``wall_s`` and ``peak_rss_mb`` include every entry.
    """
    metric = cfg.eval.select_metric
    key = f"val_{metric}"
    scored = [
        h for h in history if key in h and h[key] is not None and math.isfinite(h[key])
    ]
    if not scored:
        return {"rounds": len(history), "select_metric": key}
    sign = 1 if metric in LOWER_IS_BETTER else -1
    best = min(scored, key=lambda h: (sign * h[key], h["round"]))
    out: dict[str, Any] = {
        "method": cfg.method["name"],
        "seed": cfg.run.seed,
        "rounds": sum(h["round"] >= 0 for h in history),
        "select_metric": key,
        "best_round": best["round"],
        "ldp_protects": cfg.privacy.protects,
    }
    out.update(
        {f"best_{k}": v for k, v in best.items() if k.startswith(("val_", "test_"))}
    )
    out.update({k: v for k, v in best.items() if k.startswith("test_")})
    if cfg.eval.select == "per_client":
        out.update(per_client_selection(history, metric))
    trained = [h for h in history if h["round"] >= 0]
    if trained:
        out["upload_bytes_per_round"] = float(
            np.mean([h["upload_bytes_per_client"] * h["clients"] for h in trained])
        )
        out["upload_bytes_per_client"] = trained[-1]["upload_bytes_per_client"]
        out["clients_per_s"] = float(np.mean([h["clients_per_s"] for h in trained]))
    out["wall_s"] = float(sum(h["round_s"] + h.get("test_eval_s", 0) for h in history))
    out["peak_rss_mb"] = max(h["peak_rss_mb"] for h in history)
    return out


def per_client_selection(history: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Each client keeps its own best round by its validation ``metric``.

    For every client c, r_c = argmax_r val_<metric>_clients[r][c] (earliest on
    ties); its test values of Recall@10 and NDCG@10 at r_c are averaged over
    clients weighted by their test users (= the mean over all test users).
    Returns ``test_<m>_per_client_selection`` and the rounds ``selected_rounds``.
    """
    key = f"val_{metric}_clients"
    if not history or key not in history[0]:
        raise ConfigError(f"eval.select = 'per_client' needs per-client {key}")
    n = len(history[0][key])
    at = {h["round"]: h for h in history}  # round -1: the untrained model
    rounds = []
    for c in range(n):
        vals = [(h[key][c], -h["round"]) for h in history if h[key][c] is not None]
        rounds.append(-max(vals)[1] if vals else history[-1]["round"])
    out: dict[str, Any] = {"selected_rounds": rounds}
    for m in ("recall@10", "ndcg@10"):
        vals, weights = [], []
        for c, r in enumerate(rounds):
            v = at[r].get(f"test_{m}_clients", [None] * n)[c]
            w = at[r].get("test_users_clients", [0] * n)[c]
            if v is not None and w:
                vals.append(v)
                weights.append(w)
        out[f"test_{m}_per_client_selection"] = (
            float(np.average(vals, weights=weights)) if vals else math.nan
        )
    return out


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss and AUC per round, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(rounds, [h.get("train_loss", math.nan) for h in history], marker="o")
    a.set(xlabel="round", ylabel="train loss", title=title)
    keys = [
        f"{s}_{m}"
        for m in ("auc", "gauc", "recall@10", "ndcg@10")
        for s in ("val", "test")
    ]
    for key in [k for k in keys if any(k in h for h in history)]:
        b.plot(rounds, [h.get(key, math.nan) for h in history], marker=".", label=key)
    b.set(xlabel="round", ylabel="metric")
    if b.lines:
        b.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def rows_round(run_dir: Path) -> int | None:
    """The round of ``run_dir``'s ``test_rows.npz``; ``None`` without one."""
    try:
        with np.load(run_dir / ROWS_FILE) as f:
            return int(f["round"])
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None


def write_rows(run_dir: Path, rnd: int, rows: dict[str, Any]) -> None:
    """``test_rows.npz``: per-row test outputs (``rows``) of round ``rnd``."""
    arrays = {"round": np.asarray(rnd)} | {k: np.asarray(v) for k, v in rows.items()}
    # numpy's stub: ``**arrays`` could name savez's ``allow_pickle`` flag
    atomic_write(run_dir / ROWS_FILE, lambda p: np.savez(p, **arrays))  # type: ignore[arg-type]


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one line per round so far (rewritten atomically)."""
    lines = "".join(json.dumps(jsonable(h)) + "\n" for h in history)
    atomic_write(run_dir / "metrics.jsonl", lambda p: p.write_text(lines))


def finish_run(
    run_dir: Path, cfg: ExperimentConfig, history: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """Metrics, ``summary.json`` and the plot of a finished run; its summary."""
    write_metrics(run_dir, history)
    summary = summarise(history, cfg)
    summary.update(run_dir=str(run_dir), commit=current_commit(), **extra)
    write_json(run_dir / "summary.json", summary)
    plot_history(history, run_dir / "metrics.png", cfg.run.name)
    return summary
