r"""Reference rankings of the top-K tables: popularity and item-kNN.

Neither trains nor loads a backbone: both are statistics of the train split's
interactions, scored on the same validation and test samples, with the same
history masking and :func:`~fedrec.metrics.topk.topk_metrics` as the models
(fellrec.md §2.2). With :math:`X \in \{0, 1\}^{U \times I}` the train split's
user–item matrix (:math:`X_{ui} = 1` iff user u has a train interaction with
item i) and :math:`R_u` the last ``KNN_LAST`` (10) items of a sample's history
(its window, ``backbone.window``, also 10 in the FELLRec configs):

- ``popularity``: :math:`s_j = n_j`, the number of train interactions of
  item j (the same ranking for every sample);
- ``item-knn``: :math:`s_j = \sum_{i \in R_u} \mathrm{sim}(i, j)`, with the
  cosine of the items' columns of X,

  .. math::
      \mathrm{sim}(i, j) = \frac{X_{:i}^\top X_{:j}}{\lVert X_{:i} \rVert
      \lVert X_{:j} \rVert}
      = \frac{|U_i \cap U_j|}{\sqrt{|U_i|\,|U_j|}}

  (0 for an item without train users; an item repeated in :math:`R_u`
  counts once per occurrence).

Ties go to the lower item id and seen items are masked, as for every method.
A table declares them as variants, ``[variants.popularity] method = { name =
"popularity" }``; :func:`run_reference` writes their run directory like a
trained method's: one entry, ``round = 0``, validation and test metrics. Their
names are registered as methods by :mod:`fedrec.methods.rankings`, so that
configs validate; this module, which builds the data and writes the run
directory, sits above the methods and the builder.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse

from fedrec.build import load_data, make_split, seq_fed_data
from fedrec.data.dataset import InteractionData
from fedrec.data.splits import Split
from fedrec.errors import ConfigError
from fedrec.fl.seq import SeqRecTask, concat_scores
from fedrec.methods.rankings import REFERENCES
from fedrec.rundir import environment, finish_run, write_json, write_rows
from fedrec.sections import ExperimentConfig

log = logging.getLogger("fedrec")
KNN_LAST = 10  # history items an item-kNN score sums over
CHUNK = 1024  # samples scored at once: (CHUNK, I) scores


def train_matrix(data: InteractionData, split: Split) -> sparse.csr_matrix:
    """``(U, I)`` binary user–item matrix of the train split (``X`` above)."""
    df = data.interactions.iloc[split.train]
    ones = np.ones(len(df))
    x = sparse.csr_matrix(
        (ones, (df["user"].to_numpy(), df["item"].to_numpy())),
        shape=(data.n_users, data.n_items),
    )
    x.data[:] = 1.0  # a repeated (user, item) pair counts once
    return x


def item_popularity(data: InteractionData, split: Split) -> np.ndarray:
    """``(I,)`` float64: train interactions per item, :math:`n_j`."""
    items = data.interactions["item"].to_numpy()[split.train]
    return np.bincount(items, minlength=data.n_items).astype(np.float64)


def item_cosine(data: InteractionData, split: Split) -> np.ndarray:
    r"""``(I, I)`` float64 cosine similarity of the items' columns of ``X``.

    :math:`\mathrm{sim}(i, j) = |U_i \cap U_j| / \sqrt{|U_i||U_j|}`; 0 where
    an item has no train user (the diagonal is 1 for the others).
    """
    x = train_matrix(data, split)
    co = (x.T @ x).toarray()  # (I, I) co-occurrence counts |U_i ∩ U_j|
    norm = np.sqrt(np.diag(co))  # (I,)
    outer = np.outer(norm, norm)
    return np.divide(co, outer, out=np.zeros_like(co), where=outer > 0)


def history_counts(histories: list[np.ndarray], n_items: int) -> np.ndarray:
    """``(b, I)``: how often each item is among a history's last ``KNN_LAST``."""
    out = np.zeros((len(histories), n_items))
    for r, h in enumerate(histories):
        np.add.at(out[r], np.asarray(h, np.int64)[-KNN_LAST:], 1.0)
    return out


@dataclass
class ReferenceRanker:
    """Scores of every item after a history: ``scores(histories) -> (b, I)``."""

    name: str
    scores: Callable[[list[np.ndarray]], np.ndarray]
    n_values: int  # numbers the ranker keeps (I for popularity, I² for item-kNN)


def ranker(name: str, data: InteractionData, split: Split) -> ReferenceRanker:
    """The reference ranking ``name`` (``popularity`` or ``item-knn``) of ``split``."""
    if name == "popularity":
        pop = item_popularity(data, split)
        return ReferenceRanker(name, lambda hs: np.tile(pop, (len(hs), 1)), pop.size)
    if name == "item-knn":
        sim = item_cosine(data, split)
        return ReferenceRanker(
            name, lambda hs: history_counts(hs, data.n_items) @ sim, sim.size
        )
    raise ConfigError(f"unknown reference ranking {name!r} (have {REFERENCES})")


def evaluate(
    rank: ReferenceRanker, task: SeqRecTask, split: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(metrics, rows)`` of ``rank`` on ``split``'s evaluated samples.

    The rows are those a model is evaluated on (``task.eval_rows`` of every
    client: all test samples, validation capped per user group); the
    per-row values come from ``task.row_metrics`` (seen items masked) and the
    metrics, per-client values included, from ``task.metrics_from_stats``.
    """
    fed = task.fed
    rows = np.concatenate(
        [task.eval_rows(split, c) for c in range(fed.n_clients)] or [np.zeros(0, int)]
    )
    s = fed.samples[split]
    parts = []
    for a in range(0, len(rows), CHUNK):
        r = rows[a : a + CHUNK]
        scores = torch.as_tensor(rank.scores([s.history[i] for i in r]))  # (b, I)
        parts.append(task.row_metrics(split, r, scores))
    out = concat_scores(parts)
    return task.metrics_from_stats(task.stats(out)), out


def run_reference(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    data: InteractionData | None = None,
) -> dict[str, Any]:
    """Score the reference ``cfg.method.name``; write its run directory.

    ``config.json``, ``env.json``, ``metrics.jsonl`` (one entry, round 0),
    ``summary.json`` (:func:`~fedrec.runs.summarise` of it: best round 0, the
    validation and test metrics with their per-client values, ``commit``) and
    ``test_rows.npz`` (round 0), as a trained run has. Returns the summary.
    """
    name = cfg.method["name"]
    if cfg.backbone.kind == "ctr":
        raise ConfigError(f"method {name!r} ranks items: it needs a top-K backbone")
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = (
            Path(cfg.run.out_dir) / f"{cfg.run.name}-{name}-s{cfg.run.seed}-{stamp}"
        )
    t0 = time.perf_counter()
    data = data if data is not None else load_data(cfg)
    split = make_split(data, cfg)
    fed = seq_fed_data(cfg, data, split, cfg.data.clients)
    task = SeqRecTask(
        None,  # type: ignore[arg-type]  # no model: its rows and metrics only
        fed,
        max_eval_samples=cfg.eval.max_samples,
        seed=cfg.run.seed,
    )
    rank = ranker(name, data, split)
    fit_s = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg.to_dict())
    write_json(run_dir / "env.json", {**environment(cfg), "engine": "reference"})
    t1 = time.perf_counter()
    entry: dict[str, Any] = {
        "round": 0,
        "clients": 0,
        "rejected": 0,
        "train_loss": math.nan,
        "upload_bytes_per_client": 0,
        "download_bytes_per_client": 0,
        "ldp_epsilon_round": 0.0,
        "ldp_epsilon_total": 0.0,
        "train_s": fit_s,
        "clients_per_s": 0.0,
    }
    for part in ("val", "test"):
        metrics, rows = evaluate(rank, task, part)
        entry.update({f"{part}_{k}": v for k, v in metrics.items()})
        if part == "test":  # per-user values, for the table's intervals
            write_rows(run_dir, 0, rows)
    entry["eval_s"] = time.perf_counter() - t1
    entry["round_s"] = time.perf_counter() - t0
    entry["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = finish_run(
        run_dir,
        cfg,
        [entry],
        n_clients=fed.n_groups,
        model_params=rank.n_values,
        device_bytes=0,
        ldp_epsilon_total=0.0,
        dropped_users=split.dropped_users,
        engine="reference",
    )
    log.info(
        "%s: test ndcg@10 %.4f over %d users in %.1f s",
        name,
        summary.get("test_ndcg@10", math.nan),
        summary.get("test_users", 0),
        time.perf_counter() - t0,
    )
    return summary
