"""Run an experiment and keep its run directory.

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
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.atomic import atomic_write
from fedrec.build import build_engine, load_checkpoint
from fedrec.config import ExperimentConfig, config_from_raw
from fedrec.data.dataset import InteractionData
from fedrec.errors import CheckpointError, ConfigError, FedrecError
from fedrec.fl.simulate import EmbeddedEngine

log = logging.getLogger("fedrec")
TIMING_KEYS = ("train_s", "eval_s", "round_s", "clients_per_s", "peak_rss_mb")
LOWER_IS_BETTER = ("logloss",)
ROWS_FILE = "test_rows.npz"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (NaN written as null, ±inf as ``"inf"``/``"-inf"``)."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False)
    atomic_write(path, lambda p: p.write_text(text + "\n"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
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


class Run:
    """An experiment bound to its run directory."""

    def __init__(
        self, cfg: ExperimentConfig, run_dir: Path, engine: EmbeddedEngine
    ) -> None:
        self.cfg, self.dir, self.engine = cfg, run_dir, engine

    @classmethod
    def create(
        cls,
        cfg: ExperimentConfig,
        run_dir: Path | None = None,
        data: InteractionData | None = None,
    ) -> Run:
        """A new run directory (``run.out_dir/<name>-<time>`` unless given)."""
        if run_dir is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = (
                Path(cfg.run.out_dir)
                / f"{cfg.run.name}-{cfg.method['name']}-s{cfg.run.seed}-{stamp}"
            )
        if (run_dir / "checkpoint.pt").exists():
            raise CheckpointError(
                f"{run_dir} already holds a run: use --resume {run_dir}"
            )
        engine = build_engine(cfg, data)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", cfg.to_dict())
        write_json(run_dir / "env.json", environment(cfg))
        (run_dir / "metrics.jsonl").write_text("")
        return cls(cfg, run_dir, engine)

    @classmethod
    def resume(cls, run_dir: Path) -> Run:
        """Reopen a run directory and restore its last checkpoint."""
        cfg_path = run_dir / "config.json"
        try:
            raw = json.loads(cfg_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(
                f"{run_dir} is not a run directory (no config.json)"
            ) from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path}: corrupt ({e})") from None
        cfg = config_from_raw(raw, str(cfg_path))
        run = cls(cfg, run_dir, build_engine(cfg))
        ckpt = run_dir / "checkpoint.pt"
        if ckpt.exists():
            run.engine.load_state_dict(load_checkpoint(ckpt))
        run._rewrite_metrics()
        return run

    def _rewrite_metrics(self) -> None:
        write_metrics(self.dir, self.engine.history)

    def execute(
        self,
        progress: bool = True,
        on_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run the remaining rounds; checkpoint, log and plot after each."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        eng, total = self.engine, self.cfg.train.rounds
        name = self.cfg.method["name"]
        val = f"val_{self.cfg.eval.select_metric}"
        cols = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        with Progress(*cols, disable=not progress, transient=False) as bar:
            rounds = bar.add_task(
                f"{self.cfg.method['name']} rounds", total=total, completed=eng.round
            )
            clients = bar.add_task("clients trained", total=None)
            if eng.needs_initial():  # round -1: the untrained model
                self._record(eng.evaluate_initial(), on_round)
            for rnd in range(eng.round, total):
                m = eng.run_round(rnd, on_clients=lambda n: bar.advance(clients, n))
                bar.update(
                    rounds,
                    advance=1,
                    description=f"{name} round {rnd} {val}={m.get(val, math.nan):.4f}",
                )
                self._record(m, on_round)
        if "test" not in self.cfg.eval.splits:
            self._test_best_round()
        summary = summarise(eng.history, self.cfg)
        summary["run_dir"] = str(self.dir)
        summary["n_clients"] = eng.fed.n_clients
        params = list(eng.model.parameters())
        summary["model_params"] = sum(p.numel() for p in params)
        summary["device_bytes"] = sum(p.numel() * p.element_size() for p in params)
        summary["ldp_epsilon_total"] = eng.epsilon_spent()
        summary["dropped_users"] = eng.fed.split.dropped_users
        summary["commit"] = current_commit()
        write_json(self.dir / "summary.json", summary)
        plot_history(eng.history, self.dir / "metrics.png", self.cfg.run.name)
        return summary

    def _record(
        self, m: dict[str, Any], on_round: Callable[[dict[str, Any]], None] | None
    ) -> None:
        """After an evaluated round ``m``: test rows, checkpoint, metrics line, best.

        The untrained model's entry (round -1) is checkpointed too, so a resumed
        run does not evaluate it again.
        """
        eng, rnd = self.engine, m["round"]
        if "test" in self.cfg.eval.splits and self._is_best(rnd):
            self._save_test_rows(rnd)
        last = rnd + 1 == self.cfg.train.rounds
        if (rnd + 1) % self.cfg.run.checkpoint_every == 0 or last:
            atomic_write(
                self.dir / "checkpoint.pt", lambda p: torch.save(eng.state_dict(), p)
            )
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(m)) + "\n")
        if "test" not in self.cfg.eval.splits:
            self._keep_if_best(rnd)
        if on_round:
            on_round(m)

    def _is_best(self, rnd: int) -> bool:
        """Whether round ``rnd`` is, so far, the best validation round."""
        return summarise(self.engine.history, self.cfg).get("best_round") == rnd

    def _save_test_rows(self, rnd: int) -> None:
        """``test_rows.npz``: the last test evaluation's per-row outputs, at ``rnd``.

        Nothing when the engine keeps no per-row outputs (``last_rows``).
        """
        rows = getattr(self.engine, "last_rows", {}).get("test")
        if rows:
            arrays = {k: np.asarray(v) for k, v in rows.items()}
            atomic_write(
                self.dir / ROWS_FILE, lambda p: np.savez(p, round=rnd, **arrays)
            )

    def _keep_if_best(self, rnd: int) -> None:
        """Keep the aggregated state of the best validation round (``best.pt``)."""
        if self._is_best(rnd):
            eng = self.engine
            state = {
                "round": rnd,
                "server": eng.server,
                "store": eng.store.state_dict(),
            }
            atomic_write(self.dir / "best.pt", lambda p: torch.save(state, p))

    def _test_best_round(self) -> None:
        """Test once, with the best validation round's state.

        For ``eval.splits`` without ``"test"``: the same numbers as testing
        every round, at the cost of one evaluation. Tested again when the test
        metrics are there but ``test_rows.npz`` is not of that round (a kill
        between the two), if the engine keeps per-row outputs.
        """
        eng = self.engine
        best = summarise(eng.history, self.cfg).get("best_round")
        entry = next((h for h in eng.history if h["round"] == best), None)
        if entry is None:
            return
        if "test_eval_s" in entry and (
            not hasattr(eng, "last_rows") or rows_round(self.dir) == best
        ):
            return
        state = load_checkpoint(self.dir / "best.pt")
        final = {"server": eng.server, "store": eng.store.state_dict()}
        eng.server = state["server"]
        eng.store.load_state_dict(state["store"])
        t0 = time.perf_counter()
        entry.update({f"test_{k}": v for k, v in eng.evaluate("test").items()})
        entry["test_eval_s"] = time.perf_counter() - t0
        self._save_test_rows(best)
        eng.server = final["server"]
        eng.store.load_state_dict(final["store"])
        self._rewrite_metrics()


def rows_round(run_dir: Path) -> int | None:
    """The round of ``run_dir``'s ``test_rows.npz``; ``None`` without one."""
    try:
        with np.load(run_dir / ROWS_FILE) as f:
            return int(f["round"])
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one line per round so far (rewritten atomically)."""
    lines = "".join(json.dumps(_jsonable(h)) + "\n" for h in history)
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


def run_flower(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    nodes: int = 3,
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``cfg`` on Flower's simulation engine; its summary.

    The ServerApp keeps the run directory (the embedded engine's files, a
    checkpoint after every round); ``resume`` continues a killed run there.
    """
    from fedrec.flower.server import check_run_dir
    from fedrec.flower.simulation import run_flower_simulation

    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = (
            Path(cfg.run.out_dir) / f"{cfg.run.name}-flower-s{cfg.run.seed}-{stamp}"
        )
    check_run_dir(run_dir, resume)
    stopped = (
        "the Flower run stopped before its last round; continue it with "
        f"`fedrec run --resume {run_dir}`"
    )
    try:
        run_flower_simulation(cfg, nodes, run_dir, resume)
    except FedrecError:
        raise
    except Exception as e:  # the ServerApp died: its checkpoint stays
        raise FedrecError(f"{stopped} ({type(e).__name__}: {e})") from e
    if not (run_dir / "summary.json").exists():
        raise FedrecError(stopped)
    return json.loads((run_dir / "summary.json").read_text())


def resume_run(run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Continue the run in ``run_dir`` on the engine it started on."""
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        env = {}
    if env.get("engine") not in ("flower", "reference"):
        return Run.resume(run_dir).execute(progress)
    cfg_path = run_dir / "config.json"
    cfg = config_from_raw(json.loads(cfg_path.read_text()), str(cfg_path))
    if env["engine"] == "reference":  # seconds: scored again
        from fedrec.references import run_reference

        return run_reference(cfg, run_dir)
    return run_flower(cfg, run_dir, int(env["min-nodes"]), resume=True)


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    progress: bool = True,
    data: InteractionData | None = None,
) -> dict[str, Any]:
    """Create a run directory and run ``cfg`` to the end; return its summary.

    A reference ranking (``popularity``, ``item-knn``) is scored instead
    (:func:`fedrec.references.run_reference`): no engine, one entry.
    """
    from fedrec.references import REFERENCES, run_reference

    if cfg.method["name"] in REFERENCES:
        return run_reference(cfg, run_dir, data)
    t0 = time.perf_counter()
    summary = Run.create(cfg, run_dir, data).execute(progress)
    log.info("finished in %.1fs", time.perf_counter() - t0)
    return summary
