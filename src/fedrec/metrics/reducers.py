r"""Additive statistics from which the pooled metrics are computed.

A node reduces its evaluated rows to statistics whose shapes do not depend on
its number of rows or users; the statistics of several nodes pool by an
elementwise sum, and the metrics are functions of the sums. No row (label,
score, id) is needed to pool.

CTR (one row per impression, ``y ∈ {0, 1}``, probability ``p ∈ [0, 1]``):

- ``hist`` ``(2, B)``: counts of negatives (row 0) and positives (row 1) per
  bin :math:`b(p) = \min(\lfloor p B \rfloor, B - 1)` of a fixed grid of
  :math:`B = 2^{16}` bins on [0, 1]; AUC by :func:`histogram_auc`;
- ``logloss`` ``(2,)``: :math:`[\sum_i \ell_i, n]` with :math:`\ell_i` the
  clipped binary cross entropy of :func:`fedrec.metrics.ctr.bce_terms`;
- ``confusion`` ``(2, 2)``: :math:`C_{y, \hat y}` counts at
  :math:`\hat y = \mathbb{1}[p > 0.5]`; P/R/F1 by :func:`prf_from_confusion`;
- ``gauc`` ``(2,)``: :math:`[\sum_u w_u \mathrm{AUC}_u, \sum_u w_u]` over the
  node's users with both classes, :math:`w_u` their rows (a user's rows are all
  on one node: one client holds a user).

Top-K (one row per evaluated user, its user group ``g``): per group, the
NaN-ignoring sum and count of each metric (:func:`group_sums`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from fedrec.metrics.ctr import bce_terms, user_aucs

N_BINS = 2**16  # bins of the probability grid on [0, 1]
THRESHOLD = 0.5  # decision threshold of precision / recall / F1

CTR_STAT_SHAPES: dict[str, tuple[int, ...]] = {
    "hist": (2, N_BINS),
    "logloss": (2,),
    "confusion": (2, 2),
    "gauc": (2,),
}


def _labels(labels: ArrayLike) -> np.ndarray:
    """Binary labels as int64 ``(n,)`` (a label > 0.5 is a positive)."""
    return (np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5).astype(np.int64)


def probability_bins(probs: ArrayLike, n_bins: int = N_BINS) -> np.ndarray:
    r"""Bin :math:`b(p) = \min(\lfloor p B \rfloor, B - 1)` of each probability.

    ``p`` is clipped to [0, 1] first (so ``p = 1`` falls in the last bin); the
    grid of :func:`label_histogram`, and of the table's bootstrap of its AUC.

    Parameters
    ----------
    probs : array-like of shape (n,)
        Predicted probabilities of the positive class.
    n_bins : int, default ``N_BINS``
        :math:`B`, the number of equal-width bins on [0, 1].

    Returns
    -------
    ndarray of shape (n,)
        int64 bin indices in ``[0, B)``.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 0.0, 1.0)
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def label_histogram(
    labels: ArrayLike, probs: ArrayLike, n_bins: int = N_BINS
) -> np.ndarray:
    r"""Counts of each class per probability bin.

    .. math::
        H_{c, b} = \left|\{ i : y_i = c,\ b(p_i) = b \}\right|, \qquad
        b(p) = \min(\lfloor p B \rfloor, B - 1)

    with ``p`` clipped to [0, 1] first (so ``p = 1`` falls in the last bin).

    Parameters
    ----------
    labels, probs : array-like of shape (n,)
        Binary ground truth and predicted probabilities of the positive class.
    n_bins : int, default ``N_BINS``
        :math:`B`, the number of equal-width bins on [0, 1].

    Returns
    -------
    ndarray of shape (2, n_bins)
        int64 counts; row 0 negatives, row 1 positives.
    """
    y, b = _labels(labels), probability_bins(probs, n_bins)
    if y.size != b.size:
        raise ValueError(f"{y.size} labels, {b.size} probabilities")
    return np.bincount(y * n_bins + b, minlength=2 * n_bins).reshape(2, n_bins)


def histogram_auc(hist: ArrayLike) -> float:
    r"""ROC-AUC from per-class bin counts; rows in one bin count as tied.

    With :math:`N_b, P_b` the negatives and positives of bin :math:`b`,

    .. math::
        \mathrm{AUC} = \frac{1}{n^{+} n^{-}} \sum_b P_b
        \left( \sum_{b' < b} N_{b'} + \tfrac{1}{2} N_b \right)

    which is the exact AUC of the rows with scores rounded down to the grid
    (each same-bin pair counts 1/2); with :math:`B = 2^{16}` it differs from
    the exact AUC by at most half the fraction of positive-negative pairs that
    share a bin.

    Parameters
    ----------
    hist : array-like of shape (2, B)
        :func:`label_histogram` counts (summed over nodes).

    Returns
    -------
    float
        The AUC, or ``nan`` when a class has no row.
    """
    h = np.asarray(hist, dtype=np.float64)
    neg, pos = h[0], h[1]
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))


def confusion(
    labels: ArrayLike, probs: ArrayLike, threshold: float = THRESHOLD
) -> np.ndarray:
    r"""Confusion counts :math:`C_{y, \hat y}`, :math:`\hat y = \mathbb{1}[p > t]`.

    Parameters
    ----------
    labels, probs : array-like of shape (n,)
        Binary ground truth and predicted probabilities of the positive class.
    threshold : float, default 0.5
        Decision threshold ``t`` (strict, as :func:`~fedrec.metrics.weighted_prf`).

    Returns
    -------
    ndarray of shape (2, 2)
        int64 counts, true class by row, predicted class by column.
    """
    y = _labels(labels)
    pred = (np.asarray(probs, dtype=np.float64).reshape(-1) > threshold).astype(int)
    return np.bincount(2 * y + pred, minlength=4).reshape(2, 2)


def prf_from_confusion(conf: ArrayLike) -> tuple[float, float, float]:
    r"""Support-weighted precision, recall and F1 from confusion counts.

    For class :math:`c` with :math:`TP_c = C_{cc}`,
    :math:`FP_c = \sum_{y \ne c} C_{yc}`, :math:`FN_c = \sum_{\hat y \ne c}
    C_{c \hat y}` and support :math:`n_c = \sum_{\hat y} C_{c \hat y}`,

    .. math::
        P_c = \frac{TP_c}{TP_c + FP_c}, \quad R_c = \frac{TP_c}{TP_c + FN_c},
        \quad F_c = \frac{2 TP_c}{2 TP_c + FP_c + FN_c}, \qquad
        M = \frac{\sum_c n_c M_c}{\sum_c n_c}

    with 0/0 taken as 0: what :func:`~fedrec.metrics.weighted_prf` computes
    (:math:`F_c = 2 P_c R_c / (P_c + R_c)` where both are defined).

    Parameters
    ----------
    conf : array-like of shape (2, 2)
        :func:`confusion` counts (summed over nodes).

    Returns
    -------
    tuple of float
        ``(precision, recall, f1)``.
    """
    c = np.asarray(conf, dtype=np.float64)
    tp = np.diag(c)
    fp, fn, support = c.sum(0) - tp, c.sum(1) - tp, c.sum(1)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(2), where=den > 0)

    total = support.sum()
    if total == 0:
        return 0.0, 0.0, 0.0
    p, r, f = ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)
    p_w, r_w, f_w = (float(np.sum(support * m) / total) for m in (p, r, f))
    return p_w, r_w, f_w


def gauc_sums(labels: ArrayLike, probs: ArrayLike, users: ArrayLike) -> np.ndarray:
    r"""Row-weighted sum of the users' AUCs and the sum of their weights.

    .. math::
        \left[ \sum_u n_u \mathrm{AUC}_u, \ \sum_u n_u \right]

    over the users with both classes, :math:`n_u` their rows
    (:func:`~fedrec.metrics.ctr.user_aucs`; see :func:`~fedrec.metrics.gauc`).

    Parameters
    ----------
    labels, probs, users : array-like of shape (n,)
        Binary ground truth, predicted scores and user id of each row.

    Returns
    -------
    ndarray of shape (2,)
        float64; their ratio is the row-weighted GAUC of these users.
    """
    auc_u, n_rows, _ = user_aucs(labels, probs, users)
    return np.array([np.sum(n_rows * auc_u), np.sum(n_rows)], dtype=np.float64)


def ctr_stats(
    labels: ArrayLike, probs: ArrayLike, users: ArrayLike
) -> dict[str, np.ndarray]:
    """The additive CTR statistics of some rows (shapes ``CTR_STAT_SHAPES``).

    Parameters
    ----------
    labels, probs, users : array-like of shape (n,)
        Binary ground truth, positive-class probabilities and user id of each row.

    Returns
    -------
    dict of str to ndarray
        ``hist`` (2, B), ``logloss`` (2,), ``confusion`` (2, 2), ``gauc`` (2,).
    """
    terms = bce_terms(labels, probs)
    return {
        "hist": label_histogram(labels, probs),
        "logloss": np.array([terms.sum(), terms.size], dtype=np.float64),
        "confusion": confusion(labels, probs),
        "gauc": gauc_sums(labels, probs, users),
    }


def ctr_metrics_from_stats(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """CTR metrics of summed :func:`ctr_stats`; ``{}`` when there is no row.

    Parameters
    ----------
    stats : dict of str to ndarray
        The statistics, summed over nodes.

    Returns
    -------
    dict of str to float
        ``auc`` (histogram), ``gauc`` (row-weighted), ``logloss``,
        ``precision``, ``recall``, ``f1`` (support-weighted, threshold 0.5).
    """
    loss_sum, n = (float(x) for x in stats["logloss"])
    if n == 0:
        return {}
    g_sum, g_w = (float(x) for x in stats["gauc"])
    out = {
        "auc": histogram_auc(stats["hist"]),
        "gauc": g_sum / g_w if g_w > 0 else float("nan"),
        "logloss": loss_sum / n,
    }
    out["precision"], out["recall"], out["f1"] = prf_from_confusion(stats["confusion"])
    return out


def group_sums(
    values: ArrayLike, groups: ArrayLike, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-group NaN-ignoring sum and count of a per-row value.

    .. math::
        S_g = \sum_{i : g_i = g,\, x_i \ne \mathrm{NaN}} x_i, \qquad
        N_g = |\{ i : g_i = g,\, x_i \ne \mathrm{NaN} \}|

    Parameters
    ----------
    values : array-like of shape (n,)
        The per-row values (NaN: undefined).
    groups : array-like of int, shape (n,)
        Each row's group in ``[0, n_groups)``.
    n_groups : int
        Number of groups G.

    Returns
    -------
    sums : ndarray of shape (G,)
        float64 :math:`S_g`.
    counts : ndarray of shape (G,)
        int64 :math:`N_g`.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    g = np.asarray(groups, dtype=np.int64).reshape(-1)
    ok = ~np.isnan(x)
    sums = np.bincount(g[ok], weights=x[ok], minlength=n_groups)
    return sums, np.bincount(g[ok], minlength=n_groups).astype(np.int64)
