r"""Aggregates over users and clients that ignore undefined (NaN) entries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def mean_ignore_nan(per_user: ArrayLike) -> float:
    r"""Mean over the non-NaN entries.

    .. math::
        \bar x = \frac{1}{|V|} \sum_{u \in V} x_u, \qquad
        V = \{u : x_u \ne \mathrm{NaN}\}

    Parameters
    ----------
    per_user : array-like
        Per-user metric values, NaN for users without a defined value.

    Returns
    -------
    float
        The mean, or ``nan`` (without a warning) when every entry is NaN.
    """
    x = np.asarray(per_user, dtype=np.float64).reshape(-1)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def client_stats(
    values: Mapping[Any, float] | ArrayLike,
    weights: Mapping[Any, float] | ArrayLike | None = None,
) -> dict[str, float]:
    r"""Summary of one metric across clients (fairness view).

    With :math:`V` the clients whose value is not NaN,

    .. math::
        \mathrm{mean} = \frac{\sum_{c \in V} w_c x_c}{\sum_{c \in V} w_c}, \qquad
        \mathrm{std} = \sqrt{\frac{1}{|V|} \sum_{c \in V} (x_c - \bar x)^2},

        \mathrm{gap} = \max_{c \in V} x_c - \min_{c \in V} x_c, \qquad
        \mathrm{worst} = \min_{c \in V} x_c,

    where :math:`w_c = 1` when no weights are given and :math:`\bar x` is the
    unweighted mean (the std is the population std, ``ddof=0``, over clients,
    never weighted).

    Parameters
    ----------
    values : mapping of client id to float, or array-like of shape (C,)
        The metric of each client.
    weights : mapping or array-like, optional
        Non-negative client weights (e.g. number of test users). A mapping is
        aligned with ``values`` by key, an array by position.

    Returns
    -------
    dict of str to float
        Keys ``mean``, ``std``, ``min``, ``max``, ``gap``, ``worst``; all ``nan``
        when no client has a value.
    """
    if isinstance(values, Mapping):
        keys = list(values)
        x = np.array([values[k] for k in keys], dtype=np.float64)
        if isinstance(weights, Mapping):
            weights = [weights[k] for k in keys]
    else:
        x = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w.reshape(-1)
    if w.shape != x.shape:
        raise ValueError(f"weights has {w.size} entries, values has {x.size}")
    keep = ~np.isnan(x)
    x, w = x[keep], w[keep]
    if x.size == 0:
        return dict.fromkeys(("mean", "std", "min", "max", "gap", "worst"), np.nan)
    lo, hi = float(x.min()), float(x.max())
    wsum = float(w.sum())
    return {
        "mean": float(np.sum(w * x) / wsum) if wsum > 0 else float("nan"),
        "std": float(x.std(ddof=0)),
        "min": lo,
        "max": hi,
        "gap": hi - lo,
        "worst": lo,
    }
