r"""Paired bootstrap over test users: an interval for the difference of two methods.

Resample b of the U test users draws U of them with replacement; user u gets the
multiplicity :math:`c_{bu}` (:math:`\sum_u c_{bu} = U`). A metric of a resample
is the metric of the materialised resample (each user's rows repeated
:math:`c_{bu}` times), computed with weights instead of copies:

- mean of a per-row value (top-K NDCG@10, Recall@10; NaN rows skipped), with
  :math:`S_u` the sum of user u's values and :math:`n_u` its non-NaN rows:

  .. math:: m_b = \frac{\sum_u c_{bu} S_u}{\sum_u c_{bu} n_u}

- GAUC: the same with :math:`S_u = n_u \mathrm{AUC}_u`, :math:`n_u` user u's
  rows, over users with both classes (DIN's row weighting);
- pooled AUC: the weighted Mann–Whitney statistic, row weight
  :math:`w_i = c_{b,u(i)}`, positives P, negatives N:

  .. math::
      \mathrm{AUC}_b = \frac{\sum_{i \in P} \sum_{j \in N} w_i w_j
      \left(\mathbb{1}[s_i > s_j] + \tfrac12 \mathbb{1}[s_i = s_j]\right)}
      {\sum_{i \in P} w_i \sum_{j \in N} w_j}

  (sklearn's ``roc_auc_score`` with ``sample_weight = w``).

For a method m and a reference r run with the seeds S both have,

.. math::
    \Delta_b = \frac{1}{|S|} \sum_{s \in S} \left( m_b(m, s) - m_b(r, s) \right),

the point difference :math:`\Delta` is the same with every :math:`c_u = 1`, and
the interval at level 1 − α (0.95) is the (α/2, 1 − α/2) percentiles of
:math:`\Delta_1 .. \Delta_B` (resamples where a metric is undefined left out).
The same resamples serve every method and seed: the comparison is paired.
Efron & Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import numpy as np

K = TypeVar("K")
Statistic = Callable[[np.ndarray], np.ndarray]  # counts (U, k) -> values (k,)


def resample_counts(
    n_users: int, b: int = 1000, seed: int = 0, chunk: int = 100
) -> Iterator[np.ndarray]:
    """Multiplicities ``(U, k)`` of ``b`` resamples of ``n_users``, ``k ≤ chunk`` each.

    Each column draws ``n_users`` user indices uniformly with replacement
    (``default_rng(seed)``) and counts them, so each column sums to ``n_users``.
    Users are rows: a statistic gathers its rows' users as contiguous rows.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, b, chunk):
        k = min(chunk, b - start)
        draws = rng.integers(0, n_users, size=(k, n_users))  # (k, U)
        flat = (draws * k + np.arange(k)[:, None]).ravel()
        counts = np.bincount(flat, minlength=n_users * k)
        yield counts.reshape(n_users, k).astype(np.float64)


def replicate(
    stats: Mapping[K, Statistic], n_users: int, b: int = 1000, seed: int = 0
) -> dict[K, np.ndarray]:
    """Each statistic on all users once and on ``b`` shared resamples.

    Returns
    -------
    dict
        ``(b + 1,)`` per key: index 0 with every user once, then the resamples.
    """
    ones = np.ones((n_users, 1))
    parts = {key: [stat(ones)] for key, stat in stats.items()}
    for counts in resample_counts(n_users, b, seed):
        for key, stat in stats.items():
            parts[key].append(stat(counts))
    return {key: np.concatenate(p) for key, p in parts.items()}


def paired_difference(
    method: Mapping[int, np.ndarray],
    reference: Mapping[int, np.ndarray],
    level: float = 0.95,
) -> tuple[float, float, float, list[int]]:
    """``Δ``, its percentile interval and the seeds used (see the module docstring).

    Parameters
    ----------
    method, reference
        Seed to :func:`replicate`'s ``(B + 1,)`` values of one metric.
    level
        Coverage of the interval.

    Returns
    -------
    tuple
        ``(diff, lo, hi, seeds)``; NaN when no seed is shared. Resamples where
        the metric is undefined (e.g. one class only) are left out.
    """
    seeds, nan = sorted(set(method) & set(reference)), float("nan")
    if not seeds:
        return nan, nan, nan, []
    d = np.mean([method[s] - reference[s] for s in seeds], axis=0)  # (B + 1,)
    tail = 100 * (1 - level) / 2
    reps = d[1:][np.isfinite(d[1:])]
    if not reps.size:
        return float(d[0]), nan, nan, seeds
    lo, hi = np.percentile(reps, [tail, 100 - tail])
    return float(d[0]), float(lo), float(hi), seeds


class UserMean:
    r"""Weighted per-user mean :math:`\sum_u c_u S_u / \sum_u c_u n_u`.

    Parameters
    ----------
    sums, n : array of shape (U,)
        Per-user sums :math:`S_u` and weights :math:`n_u` (0 leaves a user out).
    """

    def __init__(self, sums: np.ndarray, n: np.ndarray) -> None:
        self.sums, self.n = np.asarray(sums, float), np.asarray(n, float)

    @classmethod
    def of_rows(cls, user: np.ndarray, values: np.ndarray, n_users: int) -> UserMean:
        """Mean of per-row ``values`` ``(n,)`` of users ``user`` ``(n,)`` in [0, U)."""
        ok = ~np.isnan(values)
        sums = np.bincount(user[ok], weights=values[ok], minlength=n_users)
        return cls(sums, np.bincount(user[ok], minlength=n_users))

    @classmethod
    def gauc(
        cls, user: np.ndarray, labels: np.ndarray, scores: np.ndarray, n_users: int
    ) -> UserMean:
        """GAUC: per-user AUC weighted by the user's rows (both classes only)."""
        auc_u, rows = per_user_auc(user, labels, scores, n_users)
        ok = np.isfinite(auc_u)
        return cls(np.where(ok, rows * auc_u, 0.0), np.where(ok, rows, 0.0))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """Values ``(k,)`` for multiplicities ``(U, k)``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sums @ counts) / (self.n @ counts)


def per_user_auc(
    user: np.ndarray, labels: np.ndarray, scores: np.ndarray, n_users: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's AUC (NaN with one class; ties 1/2) and row count, ``(U,)`` each."""
    if not len(user):
        return np.full(n_users, np.nan), np.zeros(n_users)
    order = np.lexsort((scores, user))  # by user, then ascending score
    u, s, y = user[order], scores[order], labels[order] > 0.5
    tie = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (s[1:] != s[:-1])])
    g_user = u[tie]  # (G,) the user of each tie group
    g_pos = np.add.reduceat(y.astype(float), tie)
    g_neg = np.add.reduceat((~y).astype(float), tie)
    cum_neg = np.cumsum(g_neg) - g_neg  # negatives in earlier groups (all users)
    first = np.r_[True, g_user[1:] != g_user[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(g_user)), 0))
    below = cum_neg - cum_neg[start]  # negatives below, within the user
    num = np.bincount(g_user, g_pos * (below + g_neg / 2), minlength=n_users)
    n_pos = np.bincount(g_user, g_pos, minlength=n_users)
    n_neg = np.bincount(g_user, g_neg, minlength=n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc_u = np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)
    return auc_u, n_pos + n_neg


class PooledAUC:
    r"""Pooled AUC with each row weighted by its user's multiplicity.

    With the negatives sorted by score and :math:`C_b(t)` the summed weight of
    the first t of them, a positive i with :math:`l_i` negatives scored below
    it and :math:`h_i` at or below it adds :math:`w_i (C_b(l_i) + C_b(h_i)) / 2`
    to the numerator. :math:`C_b` is needed only at the breakpoints
    :math:`\{l_i, h_i\}`: the negatives between two breakpoints are summed per
    user with one sparse product, and positives with the same
    :math:`(l_i, h_i)` are summed the same way.

    Parameters
    ----------
    user, labels, scores : array of shape (n,)
        Each row's user index in [0, U), binary label and score.
    n_users
        U.
    """

    def __init__(
        self, user: np.ndarray, labels: np.ndarray, scores: np.ndarray, n_users: int
    ) -> None:
        from scipy import sparse

        pos = labels > 0.5
        order = np.argsort(scores[~pos], kind="stable")  # the rank order, once
        neg_scores, neg_user = scores[~pos][order], user[~pos][order]
        lo = np.searchsorted(neg_scores, scores[pos], "left")  # (n_pos,)
        hi = np.searchsorted(neg_scores, scores[pos], "right")
        brk = np.unique(np.r_[lo, hi])  # (T,) where C_b is needed
        seg = np.searchsorted(brk, np.arange(len(neg_scores)), "right")  # (n_neg,)
        keep = seg < len(brk)  # negatives above every positive: denominator only
        self.seg = sparse.csr_matrix(
            (np.ones(keep.sum()), (seg[keep], neg_user[keep])), (len(brk), n_users)
        )  # (T, U): negatives of user u between breakpoints t - 1 and t
        pairs, group = np.unique(
            np.c_[np.searchsorted(brk, lo), np.searchsorted(brk, hi)],
            axis=0,
            return_inverse=True,
        )
        self.pos = sparse.csr_matrix(
            (np.ones(pos.sum()), (group.ravel(), user[pos])), (len(pairs), n_users)
        )  # (G, U): positives of user u with breakpoints pairs[g]
        self.lo, self.hi = pairs[:, 0], pairs[:, 1]  # (G,)
        self.n_pos = np.bincount(user[pos], minlength=n_users).astype(float)
        self.n_neg = np.bincount(user[~pos], minlength=n_users).astype(float)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """Values ``(k,)`` for multiplicities ``(U, k)``."""
        cum = np.cumsum(self.seg @ counts, axis=0)  # C_b at the breakpoints, (T, k)
        w_pos = self.pos @ counts  # (G, k)
        num = np.einsum("gk,gk->k", w_pos, cum[self.lo] + cum[self.hi]) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / ((self.n_pos @ counts) * (self.n_neg @ counts))
