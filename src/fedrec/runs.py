"""Run an experiment on the embedded engine and keep its run directory.

The files of a run directory are :mod:`fedrec.rundir`'s. A reference ranking
(``popularity``, ``item-knn``) is scored instead of trained
(:func:`fedrec.references.run_reference`). Flower runs are
:mod:`fedrec.flower.simulation`'s; :mod:`fedrec.launch` continues a run on
the engine it started on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from fedrec.atomic import atomic_write
from fedrec.build import build_engine, load_checkpoint
from fedrec.config import config_from_raw
from fedrec.data.dataset import InteractionData
from fedrec.errors import CheckpointError
from fedrec.fl.simulate import EmbeddedEngine
from fedrec.references import REFERENCES, run_reference
from fedrec.rundir import (
    current_commit,
    environment,
    jsonable,
    plot_history,
    rows_round,
    summarise,
    write_json,
    write_metrics,
    write_rows,
)
from fedrec.sections import ExperimentConfig

log = logging.getLogger("fedrec")


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
            f.write(json.dumps(jsonable(m)) + "\n")
        if "test" not in self.cfg.eval.splits:
            self._keep_if_best(rnd)
        if on_round:
            on_round(m)

    def _is_best(self, rnd: int) -> bool:
        """Whether round ``rnd`` is, so far, the best validation round."""
        return summarise(self.engine.history, self.cfg).get("best_round") == rnd

    def _save_test_rows(self, rnd: int) -> None:
        """``test_rows.npz``: the last test evaluation's per-row outputs, at ``rnd``.

        Nothing when the last test evaluation kept no rows (``last_rows``).
        """
        rows = self.engine.last_rows.get("test")
        if rows:
            write_rows(self.dir, rnd, rows)

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
        between the two).
        """
        eng = self.engine
        best = summarise(eng.history, self.cfg).get("best_round")
        entry = next((h for h in eng.history if h["round"] == best), None)
        if entry is None:
            return
        if "test_eval_s" in entry and rows_round(self.dir) == best:
            return
        state = load_checkpoint(self.dir / "best.pt")
        final = {"server": eng.server, "store": eng.store.state_dict()}
        eng.server = state["server"]
        eng.store.load_state_dict(state["store"])
        t0 = time.perf_counter()
        entry.update({f"test_{k}": v for k, v in eng.evaluate("test").items()})
        entry["test_eval_s"] = time.perf_counter() - t0
        self._save_test_rows(int(entry["round"]))
        eng.server = final["server"]
        eng.store.load_state_dict(final["store"])
        self._rewrite_metrics()


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
    if cfg.method["name"] in REFERENCES:
        return run_reference(cfg, run_dir, data)
    t0 = time.perf_counter()
    summary = Run.create(cfg, run_dir, data).execute(progress)
    log.info("finished in %.1fs", time.perf_counter() - t0)
    return summary
