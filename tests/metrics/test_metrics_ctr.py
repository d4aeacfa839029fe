import numpy as np
import pytest

from fedrec.metrics import auc, ctr_metrics, gauc, log_loss, weighted_prf


def test_auc_with_tie_counts_half():
    # pos {0.8, 0.6} x neg {0.8, 0.2}: tie 0.5 + 1 + 0 + 1 = 2.5 of 4 pairs
    labels = [1, 0, 1, 0]
    scores = [0.8, 0.8, 0.6, 0.2]
    assert auc(labels, scores) == pytest.approx(2.5 / 4)


def test_auc_single_class_is_nan():
    assert np.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(auc([], []))


# user A: pos 0.9 vs negs {0.5, 0.95}            -> AUC 1/2,   3 rows, 1 pos
# user B: pos {0.4, 0.7} vs negs {0.4, 0.1}      -> AUC 3.5/4, 4 rows, 2 pos
# user C: all positive                           -> skipped
# user D: pos 0.2 vs neg 0.3                     -> AUC 0,     2 rows, 1 pos
GAUC_ROWS = [
    ("B", 1, 0.4),
    ("A", 1, 0.9),
    ("C", 1, 0.3),
    ("D", 0, 0.3),
    ("B", 0, 0.4),
    ("A", 0, 0.5),
    ("B", 1, 0.7),
    ("C", 1, 0.8),
    ("A", 0, 0.95),
    ("D", 1, 0.2),
    ("B", 0, 0.1),
]


def _gauc_columns():
    users, labels, scores = zip(*GAUC_ROWS, strict=True)
    return np.array(labels), np.array(scores), np.array(users)


def test_gauc_row_weighted_skips_single_class_user():
    labels, scores, users = _gauc_columns()
    expected = (3 * (1 / 2) + 4 * (3.5 / 4) + 2 * 0.0) / (3 + 4 + 2)
    assert gauc(labels, scores, users) == pytest.approx(expected)
    assert gauc(labels, scores, users) == pytest.approx(5 / 9)


def test_gauc_positive_weighted_matches_recbole_convention():
    labels, scores, users = _gauc_columns()
    expected = (1 * (1 / 2) + 2 * (3.5 / 4) + 1 * 0.0) / (1 + 2 + 1)
    assert gauc(labels, scores, users, weight="pos") == pytest.approx(expected)


def test_gauc_integer_groups_and_no_qualifying_user():
    # user 7: pos 0.6 vs neg 0.6 tie -> 1/2 ; user 3: perfect -> 1 ; 2 rows each
    labels = [1, 0, 0, 1]
    scores = [0.6, 0.6, 0.1, 0.9]
    assert gauc(labels, scores, [7, 7, 3, 3]) == pytest.approx((2 * 0.5 + 2 * 1) / 4)
    assert np.isnan(gauc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2]))
    assert np.isnan(gauc([], [], []))


def test_log_loss_hand_values():
    expected = -(np.log(0.8) + np.log(1 - 0.4) + np.log(0.5)) / 3
    assert log_loss([1, 0, 1], [0.8, 0.4, 0.5]) == pytest.approx(expected)


def test_log_loss_clips_probabilities():
    # p=0 for a positive and p=1 for a negative are clipped to eps and 1-eps
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-np.log(1e-7))
    assert log_loss([1, 0], [0.0, 1.0], eps=1e-3) == pytest.approx(-np.log(1e-3))
    assert log_loss([1], [1.0]) == pytest.approx(-np.log(1 - 1e-7))


def test_weighted_prf_hand_example():
    # preds = [1, 0, 0, 0, 0]
    # class 1 (support 3): TP=1 FP=0 FN=2 -> P=1,   R=1/3, F=2*1*(1/3)/(1+1/3)=1/2
    # class 0 (support 2): TP=2 FP=2 FN=0 -> P=1/2, R=1,   F=2*(1/2)*1/(3/2)=2/3
    labels = [1, 1, 1, 0, 0]
    probs = [0.9, 0.2, 0.4, 0.1, 0.3]
    p, r, f = weighted_prf(labels, probs)
    assert p == pytest.approx((3 * 1 + 2 * (1 / 2)) / 5)
    assert r == pytest.approx((3 * (1 / 3) + 2 * 1) / 5)
    assert f == pytest.approx((3 * (1 / 2) + 2 * (2 / 3)) / 5)
    assert f == pytest.approx(17 / 30)


def test_weighted_prf_threshold_is_strict():
    labels = [1, 0, 0]
    probs = [0.5, 0.5, 0.1]
    # 0.5 is NOT > 0.5: preds = [0, 0, 0]
    # class 1 (support 1): P=0 (0/0 -> 0), R=0, F=0
    # class 0 (support 2): TP=2 FP=1 FN=0 -> P=2/3, R=1, F=2*(2/3)/(5/3)=4/5
    p, r, f = weighted_prf(labels, probs)
    assert p == pytest.approx((1 * 0 + 2 * (2 / 3)) / 3)
    assert r == pytest.approx((1 * 0 + 2 * 1) / 3)
    assert f == pytest.approx((1 * 0 + 2 * (4 / 5)) / 3)
    # threshold 0.4: preds = [1, 1, 0]
    # class 1: TP=1 FP=1 FN=0 -> P=1/2, R=1,   F=2/3
    # class 0: TP=1 FP=0 FN=1 -> P=1,   R=1/2, F=2/3
    p, r, f = weighted_prf(labels, probs, threshold=0.4)
    assert p == pytest.approx((1 * (1 / 2) + 2 * 1) / 3)
    assert r == pytest.approx((1 * 1 + 2 * (1 / 2)) / 3)
    assert f == pytest.approx((1 * (2 / 3) + 2 * (2 / 3)) / 3)


def test_ctr_metrics_hand_values():
    labels = [1, 0, 1, 0]
    probs = [0.8, 0.8, 0.6, 0.2]
    users = ["a", "a", "b", "b"]
    out = ctr_metrics(labels, probs, users)
    assert set(out) == {"auc", "gauc", "logloss", "precision", "recall", "f1"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["auc"] == pytest.approx(2.5 / 4)
    # user a: tie -> 1/2 ; user b: 1 ; two rows each
    assert out["gauc"] == pytest.approx((2 * 0.5 + 2 * 1.0) / 4)
    expected_ll = -(np.log(0.8) + np.log(0.2) + np.log(0.6) + np.log(0.8)) / 4
    assert out["logloss"] == pytest.approx(expected_ll)
    # preds = [1, 1, 1, 0]
    # class 1 (support 2): TP=2 FP=1 FN=0 -> P=2/3, R=1,   F=4/5
    # class 0 (support 2): TP=1 FP=0 FN=1 -> P=1,   R=1/2, F=2/3
    assert out["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["recall"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["f1"] == pytest.approx((4 / 5 + 2 / 3) / 2)


def test_gauc_matches_per_user_sklearn_reference():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, size=400)
    labels = rng.integers(0, 2, size=400)
    scores = rng.integers(0, 5, size=400) / 4  # many ties
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() != labels[m].max():
            num += m.sum() * roc_auc_score(labels[m], scores[m])
            den += m.sum()
    assert gauc(labels, scores, users) == pytest.approx(num / den)
