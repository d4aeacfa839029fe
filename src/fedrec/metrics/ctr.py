"""Pointwise CTR metrics on 1-D arrays with binary (0/1) labels."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

# scikit-learn is imported where it is used: it costs ~1.2 s, and a Flower
# deployment starts a fresh ClientApp process per message that never scores.


def _as_1d(x: ArrayLike, dtype: type = np.float64) -> np.ndarray:
    return np.asarray(x, dtype=dtype).reshape(-1)


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    r"""Pooled ROC-AUC over all rows, regardless of user.

    .. math::
        \mathrm{AUC} = \frac{1}{|P||N|} \sum_{p \in P} \sum_{n \in N}
        \left( \mathbb{1}[s_p > s_n] + \tfrac{1}{2} \mathbb{1}[s_p = s_n] \right)

    over positive rows :math:`P` and negative rows :math:`N` (a tie counts 1/2).

    Parameters
    ----------
    labels, scores : array-like of shape (n,)
        Binary ground truth and predicted scores (any monotone scale).

    Returns
    -------
    float
        The AUC, or ``nan`` when only one class is present.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _as_1d(labels), _as_1d(scores)
    if np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def gauc(
    labels: ArrayLike,
    scores: ArrayLike,
    groups: ArrayLike,
    weight: Literal["rows", "pos"] = "rows",
) -> float:
    r"""Group AUC: per-user AUC averaged over users.

    .. math::
        \mathrm{GAUC} = \frac{\sum_u w_u \, \mathrm{AUC}_u}{\sum_u w_u},
        \qquad
        \mathrm{AUC}_u = \frac{R_u^{+} - n_u^{+}(n_u^{+}+1)/2}{n_u^{+} n_u^{-}}

    where :math:`R_u^{+}` is the sum of the (1-based, tie-averaged) ranks of
    user :math:`u`'s positive rows among that user's rows sorted by ascending
    score, and :math:`n_u^{+}` / :math:`n_u^{-}` count its positive / negative
    rows (ties thus count 1/2, as in :func:`auc`). Users with a single class
    have no AUC and are skipped (in the numerator and in the weights).

    Weighting: by default (``weight="rows"``) :math:`w_u = n_u^{+} + n_u^{-}`,
    the user's number of rows (impressions), as in the DIN paper (Zhou et al.,
    KDD'18); ``weight="pos"`` uses :math:`w_u = n_u^{+}`, as RecBole's ``GAUC``.

    Parameters
    ----------
    labels, scores, groups : array-like of shape (n,)
        Binary ground truth, predicted scores and user (group) id of each row.
    weight : {"rows", "pos"}, default "rows"
        Per-user weight, see above.

    Returns
    -------
    float
        The GAUC, or ``nan`` when no user has both classes.
    """
    if weight not in ("rows", "pos"):
        raise ValueError(f"weight must be 'rows' or 'pos', got {weight!r}")
    auc_u, n_rows, n_pos = user_aucs(labels, scores, groups)
    if auc_u.size == 0:
        return float("nan")
    w = n_rows if weight == "rows" else n_pos
    return float(np.sum(w * auc_u) / np.sum(w))


def user_aucs(
    labels: ArrayLike, scores: ArrayLike, groups: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Each user's exact AUC and row counts: the per-user part of :func:`gauc`.

    .. math::
        \mathrm{AUC}_u = \frac{R_u^{+} - n_u^{+}(n_u^{+}+1)/2}{n_u^{+} n_u^{-}}

    with :math:`R_u^{+}` the sum of the tie-averaged 1-based ranks of user
    :math:`u`'s positive rows among its rows by ascending score. Users with a
    single class are left out.

    Parameters
    ----------
    labels, scores, groups : array-like of shape (n,)
        Binary ground truth, predicted scores and user (group) id of each row.

    Returns
    -------
    auc_u, n_rows, n_pos : ndarray of shape (U,)
        AUC, number of rows and of positive rows of the ``U`` users that have
        both classes (float64; in the order of their sorted ids).
    """
    y, s = _as_1d(labels), _as_1d(scores)
    _, g = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
    if not (y.size == s.size == g.size):
        raise ValueError(f"need equal-length inputs, got {y.size}, {s.size}, {g.size}")
    if y.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.lexsort((s, g))  # by group, then ascending score
    g, s, y = g[order], s[order], y[order]
    n, n_groups = y.size, int(g.max()) + 1
    # runs of equal (group, score) share their average position
    new_run = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])]
    first = np.flatnonzero(new_run)
    last = np.r_[first[1:], n] - 1
    avg_pos = ((first + last) / 2.0)[np.cumsum(new_run) - 1]
    counts = np.bincount(g, minlength=n_groups).astype(np.float64)
    starts = np.cumsum(counts) - counts
    rank = avg_pos - starts[g] + 1.0  # 1-based rank within the group
    n_pos = np.bincount(g, weights=y, minlength=n_groups)
    r_pos = np.bincount(g, weights=rank * y, minlength=n_groups)
    n_neg = counts - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    n_pos, n_neg, r_pos = n_pos[ok], n_neg[ok], r_pos[ok]
    auc_u = (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return auc_u, counts[ok], n_pos


def log_loss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    r"""Mean binary cross entropy.

    .. math::
        \mathrm{LogLoss} = -\frac{1}{n} \sum_{i=1}^{n}
        \left[ y_i \ln \hat p_i + (1 - y_i) \ln (1 - \hat p_i) \right],
        \qquad \hat p_i = \mathrm{clip}(p_i, \epsilon, 1 - \epsilon)

    Parameters
    ----------
    labels, probs : array-like of shape (n,)
        Binary ground truth and predicted probabilities of the positive class.
    eps : float, default 1e-7
        Clipping margin that keeps the logarithms finite.

    Returns
    -------
    float
        The mean natural-log loss (``nan`` for empty input).
    """
    terms = bce_terms(labels, probs, eps)
    return float(np.mean(terms)) if terms.size else float("nan")


def bce_terms(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> np.ndarray:
    r"""Per-row binary cross entropy, the terms :func:`log_loss` averages.

    .. math::
        \ell_i = -\left[ y_i \ln \hat p_i + (1 - y_i) \ln (1 - \hat p_i) \right],
        \qquad \hat p_i = \mathrm{clip}(p_i, \epsilon, 1 - \epsilon)

    Parameters
    ----------
    labels, probs : array-like of shape (n,)
        Binary ground truth and predicted probabilities of the positive class.
    eps : float, default 1e-7
        Clipping margin that keeps the logarithms finite.

    Returns
    -------
    ndarray of shape (n,)
        :math:`\ell_i` (float64).
    """
    y, p = _as_1d(labels), np.clip(_as_1d(probs), eps, 1.0 - eps)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def weighted_prf(
    labels: ArrayLike, probs: ArrayLike, threshold: float = 0.5
) -> tuple[float, float, float]:
    r"""Support-weighted precision, recall and F1 over both classes.

    Prediction :math:`\hat y_i = \mathbb{1}[p_i > t]` (strict: :math:`p_i = t`
    gives 0). For class :math:`c \in \{0, 1\}` with support :math:`n_c`,

    .. math::
        P_c = \frac{TP_c}{TP_c + FP_c}, \quad R_c = \frac{TP_c}{TP_c + FN_c},
        \quad F_c = \frac{2 P_c R_c}{P_c + R_c}, \qquad
        M = \frac{\sum_c n_c M_c}{\sum_c n_c} \text{ for } M \in \{P, R, F\}

    with 0/0 taken as 0 (sklearn ``average="weighted"``, ``zero_division=0``).

    Parameters
    ----------
    labels, probs : array-like of shape (n,)
        Binary ground truth and predicted probabilities of the positive class.
    threshold : float, default 0.5
        Decision threshold ``t``.

    Returns
    -------
    tuple of float
        ``(precision, recall, f1)``.
    """
    from sklearn.metrics import precision_recall_fscore_support

    y = _as_1d(labels, np.int64)
    pred = (_as_1d(probs) > threshold).astype(np.int64)
    p, r, f, _ = precision_recall_fscore_support(
        y, pred, labels=[0, 1], average="weighted", zero_division=0
    )
    return float(p), float(r), float(f)


def ctr_metrics(
    labels: ArrayLike, probs: ArrayLike, users: ArrayLike
) -> dict[str, float]:
    """Compute every CTR metric of this module at once.

    Parameters
    ----------
    labels, probs, users : array-like of shape (n,)
        Binary ground truth, positive-class probabilities and user id of each row.

    Returns
    -------
    dict of str to float
        Keys ``auc``, ``gauc`` (row-weighted), ``logloss``, ``precision``,
        ``recall``, ``f1`` (threshold 0.5).
    """
    out = {"auc": auc(labels, probs), "gauc": gauc(labels, probs, users)}
    out["logloss"] = log_loss(labels, probs)
    out["precision"], out["recall"], out["f1"] = weighted_prf(labels, probs)
    return out
