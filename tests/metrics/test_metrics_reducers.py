"""Additive evaluation statistics: hand cases, additivity, exact-metric agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.metrics import auc, gauc, log_loss, weighted_prf
from fedrec.metrics.reducers import (
    CTR_STAT_SHAPES,
    N_BINS,
    confusion,
    ctr_metrics_from_stats,
    ctr_stats,
    group_sums,
    histogram_auc,
    label_histogram,
    prf_from_confusion,
)

W = 1.0 / N_BINS  # bin width


def test_label_histogram_bins_by_floor_and_puts_one_in_the_last_bin():
    labels = [0, 1, 1, 0, 1]
    probs = [0.0, 0.5, 0.5 - W / 4, 1.0, 3 * W + W / 2]
    h = label_histogram(labels, probs)
    assert h.shape == (2, N_BINS) and h.dtype == np.int64
    assert h[0, 0] == 1 and h[0, N_BINS - 1] == 1  # p = 0, p = 1
    assert h[1, N_BINS // 2] == 1 and h[1, N_BINS // 2 - 1] == 1  # 0.5 = a left edge
    assert h[1, 3] == 1 and h.sum() == 5


def test_histogram_auc_counts_a_same_bin_pair_half():
    # pos {a, 0.6} x neg {a + W/2 (a's bin), 0.2}, a = (52428 + 1/4) W ≈ 0.8:
    # 1/2 (same bin) + 1 + 0 + 1 = 2.5 of 4 pairs; the exact AUC is 2 / 4
    a = (52428 + 0.25) * W
    labels = [1, 0, 1, 0]
    probs = [a, a + W / 2, 0.6, 0.2]
    assert histogram_auc(label_histogram(labels, probs)) == pytest.approx(2.5 / 4)
    assert auc(labels, probs) == pytest.approx(2 / 4)


def test_histogram_auc_hand_counts():
    # bins 0..2; neg (2, 1, 0), pos (0, 1, 3):
    # pos in bin 1: 1 * (2 + 1/2 * 1) = 2.5; pos in bin 2: 3 * (3 + 0) = 9
    hist = np.zeros((2, 3))
    hist[0] = [2, 1, 0]
    hist[1] = [0, 1, 3]
    assert histogram_auc(hist) == pytest.approx((2.5 + 9) / (4 * 3))


def test_histogram_auc_single_class_is_nan():
    assert np.isnan(histogram_auc(label_histogram([1, 1], [0.2, 0.9])))
    assert np.isnan(histogram_auc(label_histogram([], [])))


def test_confusion_is_strict_at_the_threshold():
    c = confusion([1, 1, 0, 0, 1], [0.5, 0.9, 0.51, 0.1, 0.2])
    # true 1: predicted 0 (0.5, 0.2), 1 (0.9); true 0: 0 (0.1), 1 (0.51)
    np.testing.assert_array_equal(c, [[1, 1], [2, 1]])


def test_prf_from_confusion_hand_values():
    # class 0: TP 1, FP 2, FN 1, n 2; class 1: TP 1, FP 1, FN 2, n 3
    p, r, f = prf_from_confusion([[1, 1], [2, 1]])
    assert p == pytest.approx((2 * 1 / 3 + 3 * 1 / 2) / 5)
    assert r == pytest.approx((2 * 1 / 2 + 3 * 1 / 3) / 5)
    assert f == pytest.approx((2 * 2 / 5 + 3 * 2 / 5) / 5)


def test_prf_zero_division_is_zero():
    # nothing predicted positive: P_1 = 0/0 -> 0
    assert prf_from_confusion([[3, 0], [2, 0]]) == pytest.approx(
        weighted_prf([0, 0, 0, 1, 1], [0.1] * 5)
    )


def test_group_sums_ignore_nan():
    s, n = group_sums([1.0, np.nan, 2.0, 4.0, np.nan], [0, 0, 2, 2, 1], 4)
    np.testing.assert_allclose(s, [1.0, 0.0, 6.0, 0.0])
    np.testing.assert_array_equal(n, [1, 0, 2, 0])


def _rows(n: int = 600, users: int = 25, seed: int = 0):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    bias = rng.normal(size=users)[u]
    y = (rng.random(n) < 1 / (1 + np.exp(-bias))).astype(float)
    p = 1 / (1 + np.exp(-(bias + rng.normal(size=n))))
    p[:20] = np.round(p[:20], 1)  # exact ties too
    return y, p, u


def test_stats_have_the_fixed_schema_whatever_the_rows():
    for n in (0, 1, 600):
        stats = ctr_stats(*(a[:n] for a in _rows()))
        assert {k: v.shape for k, v in stats.items()} == CTR_STAT_SHAPES


def test_stats_of_two_halves_sum_to_the_stats_of_all_rows():
    y, p, u = _rows()
    half = u % 2 == 0  # a user's rows on one node
    a, b = ctr_stats(y[half], p[half], u[half]), ctr_stats(y[~half], p[~half], u[~half])
    whole = ctr_stats(y, p, u)
    for k in ("hist", "confusion"):
        np.testing.assert_array_equal(a[k] + b[k], whole[k])
    for k in ("logloss", "gauc"):
        np.testing.assert_allclose(a[k] + b[k], whole[k], rtol=1e-12)
    pooled = ctr_metrics_from_stats({k: a[k] + b[k] for k in a})
    assert pooled == pytest.approx(ctr_metrics_from_stats(whole), rel=1e-12)


def test_metrics_from_stats_equal_the_exact_functions():
    y, p, u = _rows()
    m = ctr_metrics_from_stats(ctr_stats(y, p, u))
    assert m["gauc"] == pytest.approx(gauc(y, p, u), rel=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, p), rel=1e-12)
    prf = weighted_prf(y, p)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx(prf, rel=1e-12)
    assert m["auc"] == pytest.approx(auc(y, p), abs=1e-4)


def test_metrics_from_stats_of_no_rows_is_empty():
    assert ctr_metrics_from_stats(ctr_stats([], [], [])) == {}


def _logistic_score(eng, rows: np.ndarray) -> np.ndarray:
    """σ(logit user CTR + logit item CTR − logit global CTR) from training rows."""
    fed, train = eng.fed, eng.fed.rows["train"]
    y = fed.labels[train].double().numpy()

    def ctr(keys: np.ndarray, of: np.ndarray) -> np.ndarray:
        n = int(max(keys.max(), of.max())) + 1
        clicks = np.bincount(keys, weights=y, minlength=n)
        shows = np.bincount(keys, minlength=n)
        return ((clicks + 1) / (shows + 2))[of]

    def logit(q):
        return np.log(q / (1 - q))

    u, i = fed.users.numpy(), fed.items.numpy()
    z = logit(ctr(u[train], u[rows])) + logit(ctr(i[train], i[rows]))
    return 1 / (1 + np.exp(-(z - logit(y.mean()))))


def test_histogram_auc_matches_sklearn_on_kuaisar_predictions(kuaisar_path):
    import tomllib

    from sklearn.metrics import roc_auc_score

    from fedrec.build import build_engine
    from fedrec.config import config_from_raw

    root = Path(__file__).resolve().parents[2]
    raw = tomllib.loads((root / "configs" / "kuaisar-r-fedavg.toml").read_text())
    raw["data"]["path"] = str(kuaisar_path)
    eng = build_engine(config_from_raw(raw))
    eng.evaluate("test")  # the initial model's predictions
    model = eng.last_rows["test"]
    test_rows = eng.fed.rows["test"]
    y = eng.fed.labels[test_rows].double().numpy()
    logistic = {"labels": y, "probs": _logistic_score(eng, test_rows)}
    for rows in (model, logistic):
        exact = roc_auc_score(rows["labels"], rows["probs"])
        hist = histogram_auc(label_histogram(rows["labels"], rows["probs"]))
        assert abs(hist - exact) <= 1e-4
    assert roc_auc_score(y, logistic["probs"]) > 0.55  # not a trivial score
    # the task's own path: per-row scores -> stats -> metrics
    m = eng.task.metrics_from_stats(eng.task.stats(model))
    assert m["auc"] == pytest.approx(
        roc_auc_score(model["labels"], model["probs"]), abs=1e-4
    )
