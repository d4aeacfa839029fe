"""Paired bootstrap over users against closed forms and materialised resamples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedrec.metrics import gauc
from fedrec.metrics.bootstrap import (
    PooledAUC,
    UserMean,
    paired_difference,
    replicate,
    resample_counts,
)


def _rows(n_users: int = 12, per_user: int = 5, seed: int = 0):
    """Users 0..U-1 with ``per_user`` rows each; scores on a coarse grid (ties)."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users), per_user)
    labels = (rng.random(user.size) < 0.4).astype(float)
    scores = np.round(rng.random(user.size) + 0.3 * labels, 1)
    return user, labels, scores


def _materialise(counts: np.ndarray, user: np.ndarray, *cols: np.ndarray):
    """Each user's rows repeated ``counts[u]`` times; copies get distinct user ids."""
    out_user, out = [], [[] for _ in cols]
    copy_id = 0
    for u, c in enumerate(counts.astype(int)):
        rows = np.flatnonzero(user == u)
        for _ in range(c):
            out_user.append(np.full(rows.size, copy_id))
            for o, col in zip(out, cols, strict=True):
                o.append(col[rows])
            copy_id += 1
    return np.concatenate(out_user), *(np.concatenate(o) for o in out)


def test_counts_are_resamples_of_all_users():
    chunks = list(resample_counts(7, b=250, seed=3, chunk=100))
    assert [c.shape for c in chunks] == [(7, 100), (7, 100), (7, 50)]
    counts = np.concatenate(chunks, axis=1)
    assert (counts.sum(axis=0) == 7).all() and (counts >= 0).all()
    again = np.concatenate(list(resample_counts(7, b=250, seed=3)), axis=1)
    assert (counts == again).all()  # seeded


def test_constant_difference_gives_a_point_interval():
    # Prepare: method = reference + c for every user; two seeds, one more
    # seed for the method only (left out: no reference to pair it with)
    rng = np.random.default_rng(1)
    user = np.repeat(np.arange(10), 2)
    c = 0.125
    stats = {}
    for s in (0, 1):
        v = rng.random(user.size)
        stats[("ref", s)] = UserMean.of_rows(user, v, 10)
        stats[("m", s)] = UserMean.of_rows(user, v + c, 10)
    stats[("m", 2)] = UserMean.of_rows(user, rng.random(user.size) + 5, 10)
    # Execute
    reps = replicate(stats, 10, b=200)
    diff, lo, hi, seeds = paired_difference(
        {s: reps[("m", s)] for s in (0, 1, 2)}, {s: reps[("ref", s)] for s in (0, 1)}
    )
    # Assert
    assert seeds == [0, 1]
    assert diff == pytest.approx(c, abs=1e-12)
    assert (lo, hi) == pytest.approx((c, c), abs=1e-12)


def test_difference_is_averaged_over_seeds():
    # per seed the point differences are 0.1 and 0.3: Δ = 0.2
    def reps(x):
        return np.full(11, x)

    diff, lo, hi, seeds = paired_difference(
        {0: reps(0.6), 1: reps(0.8)}, {0: reps(0.5), 1: reps(0.5)}
    )
    assert (diff, lo, hi) == pytest.approx((0.2, 0.2, 0.2)) and seeds == [0, 1]
    *values, seeds = paired_difference({0: reps(1.0)}, {1: reps(1.0)})
    assert np.isnan(values).all() and seeds == []  # no seed in common


def test_pooled_auc_matches_sklearn_on_materialised_resamples():
    user, labels, scores = _rows()
    stat = PooledAUC(user, labels, scores, 12)
    counts = next(resample_counts(12, b=6, seed=5))  # (U, 6)
    got = stat(counts)
    for b in range(6):
        _, y, s = _materialise(counts[:, b], user, labels, scores)
        assert got[b] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # all users once: the plain pooled AUC
    assert stat(np.ones((12, 1)))[0] == pytest.approx(roc_auc_score(labels, scores))


def test_gauc_and_mean_match_materialised_resamples():
    user, labels, scores = _rows(seed=2)
    values = np.where(np.arange(user.size) % 7 == 0, np.nan, scores)  # some NaN
    g, m = UserMean.gauc(user, labels, scores, 12), UserMean.of_rows(user, values, 12)
    counts = next(resample_counts(12, b=6, seed=9))
    got_g, got_m = g(counts), m(counts)
    for b in range(6):
        u, y, s, v = _materialise(counts[:, b], user, labels, scores, values)
        assert got_g[b] == pytest.approx(gauc(y, s, u), abs=1e-12)
        assert got_m[b] == pytest.approx(np.nanmean(v), abs=1e-12)
    assert g(np.ones((12, 1)))[0] == pytest.approx(gauc(labels, scores, user))


def test_auc_undefined_with_one_class():
    user = np.array([0, 1, 1])
    stat = PooledAUC(user, np.zeros(3), np.array([0.1, 0.2, 0.3]), 2)
    assert np.isnan(stat(np.ones((2, 1)))).all()
