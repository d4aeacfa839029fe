"""Paired bootstrap intervals of a table's methods against a reference.

Every method's difference to a reference method on the same test users, with
a 95% percentile interval from resampling those users (the same resamples for
every method and seed; :mod:`fedrec.metrics.bootstrap` has the formula). Read
from each run's ``test_rows.npz``; written as ``intervals.csv`` and as the Δ
columns of ``table.md``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.metrics.bootstrap import (
    PooledAUC,
    Statistic,
    UserMean,
    paired_difference,
    replicate,
)
from fedrec.metrics.reducers import probability_bins
from fedrec.rundir import ROWS_FILE

INTERVAL_METRICS = ("test_auc", "test_gauc")
TOPK_INTERVAL_METRICS = ("test_ndcg@10", "test_recall@10")


def is_topk(rows: list[dict[str, Any]]) -> bool:
    """Whether ``rows`` are top-K runs (FELLRec): none has a test AUC."""
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
    topk = is_topk(rows)
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
