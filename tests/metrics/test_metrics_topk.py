import numpy as np
import pytest
import torch

from fedrec.metrics import sampled_topk_metrics, topk_metrics

L2 = np.log2

# Rankings (descending score):
#   user 0: 0 1 2 3 4 5   GT {1}        -> hit at rank 2
#   user 1: 5 4 3 2 1 0   GT {5, 3}     -> hits at ranks 1, 3
#   user 2: 1 4 0 3 5 2   GT {2}        -> hit at rank 6 (outside K<=5)
#   user 3: 2 3 5 0 4 1   GT {0, 5, 1}  -> hits at ranks 3, 4, 6
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.5, 0.9, 0.1, 0.3, 0.7, 0.2],
        [0.3, 0.1, 0.9, 0.8, 0.2, 0.7],
    ]
)
TARGETS = [np.array([1]), np.array([5, 3]), np.array([2]), np.array([0, 5, 1])]

EXPECTED = {
    "recall@1": [0, 1 / 2, 0, 0],
    "precision@1": [0, 1, 0, 0],
    "hit@1": [0, 1, 0, 0],
    "mrr@1": [0, 1, 0, 0],
    "ndcg@1": [0, 1, 0, 0],  # user 1: IDCG over min(2, 1) = 1 position
    "recall@3": [1, 1, 0, 1 / 3],
    "precision@3": [1 / 3, 2 / 3, 0, 1 / 3],
    "hit@3": [1, 1, 0, 1],
    "mrr@3": [1 / 2, 1, 0, 1 / 3],
    "ndcg@3": [
        1 / L2(3),
        (1 + 1 / L2(4)) / (1 + 1 / L2(3)),
        0,
        (1 / L2(4)) / (1 + 1 / L2(3) + 1 / L2(4)),
    ],
    "recall@5": [1, 1, 0, 2 / 3],
    "precision@5": [1 / 5, 2 / 5, 0, 2 / 5],
    "hit@5": [1, 1, 0, 1],
    "mrr@5": [1 / 2, 1, 0, 1 / 3],
    "ndcg@5": [
        1 / L2(3),
        (1 + 1 / L2(4)) / (1 + 1 / L2(3)),
        0,
        (1 / L2(4) + 1 / L2(5)) / (1 + 1 / L2(3) + 1 / L2(4)),
    ],
}


def _check(out, expected):
    for key, want in expected.items():
        np.testing.assert_allclose(out[key], want, rtol=1e-12, atol=1e-12, err_msg=key)


def test_four_user_hit_matrix():
    out = topk_metrics(SCORES, TARGETS, ks=(1, 3, 5))
    assert set(out) == set(EXPECTED)
    assert all(v.shape == (4,) and v.dtype == np.float64 for v in out.values())
    _check(out, EXPECTED)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_torch_input_and_chunking_agree(chunk_size):
    scores = torch.tensor(SCORES, dtype=torch.float32)
    out = topk_metrics(scores, TARGETS, ks=(1, 3, 5), chunk_size=chunk_size)
    _check(out, EXPECTED)


def test_default_ks_keys():
    out = topk_metrics(SCORES, TARGETS)
    names = ("recall", "ndcg", "precision", "mrr", "hit")
    assert set(out) == {f"{n}@{k}" for n in names for k in (5, 10, 20)}
    # K > number of items: precision still divides by K
    np.testing.assert_allclose(out["precision@20"], [1 / 20, 2 / 20, 1 / 20, 3 / 20])
    np.testing.assert_allclose(out["recall@20"], [1, 1, 1, 1])


def test_gt_larger_than_k_uses_k_ideal_positions():
    # ranking 0 1 2 3 4, GT {0, 2, 3, 4}, K=2 -> hit at rank 1 only
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    out = topk_metrics(scores, [np.array([0, 2, 3, 4])], ks=(2,))
    assert out["ndcg@2"][0] == pytest.approx(1 / (1 + 1 / L2(3)))
    assert out["recall@2"][0] == pytest.approx(1 / 4)
    assert out["precision@2"][0] == pytest.approx(1 / 2)
    assert out["mrr@2"][0] == pytest.approx(1.0)


def test_gt_smaller_than_k_uses_gt_ideal_positions():
    # ranking 0 1 2 3 4, GT {1, 4}, K=4 -> hit at rank 2; IDCG over 2 positions
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    out = topk_metrics(scores, [np.array([1, 4])], ks=(4,))
    assert out["ndcg@4"][0] == pytest.approx((1 / L2(3)) / (1 + 1 / L2(3)))
    assert out["recall@4"][0] == pytest.approx(1 / 2)
    assert out["precision@4"][0] == pytest.approx(1 / 4)
    assert out["mrr@4"][0] == pytest.approx(1 / 2)


def test_history_masking_moves_later_item_into_top_k():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    targets = [np.array([3])]
    plain = topk_metrics(scores, targets, ks=(2,))
    assert plain["hit@2"][0] == 0.0
    # items 0, 1 masked -> ranking 2 3 4 | 0 1 -> target 3 at rank 2
    out = topk_metrics(scores, targets, ks=(2,), history=[np.array([0, 1])])
    assert out["hit@2"][0] == 1.0
    assert out["recall@2"][0] == 1.0
    assert out["mrr@2"][0] == pytest.approx(1 / 2)
    assert out["ndcg@2"][0] == pytest.approx(1 / L2(3))


def test_history_item_that_is_target_stays_in_gt_but_never_hits():
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    targets = [np.array([0, 3]), np.array([0])]
    history = [np.array([0]), np.array([0])]
    out = topk_metrics(scores, targets, ks=(3, 4), history=history)
    # user 0: ranking 1 2 3 | 0 -> target 3 at rank 3; |GT| = 2
    assert out["recall@3"][0] == pytest.approx(1 / 2)
    assert out["ndcg@3"][0] == pytest.approx((1 / L2(4)) / (1 + 1 / L2(3)))
    # K=4 covers every item: masked item 0 is at rank 4 but is not a hit
    assert out["recall@4"][0] == pytest.approx(1 / 2)
    assert out["hit@4"][1] == 0.0
    assert out["recall@4"][1] == 0.0


def test_ties_break_by_lower_item_index():
    # all equal: ranking 0 1 2 3 4
    flat = np.full((2, 5), 0.5)
    out = topk_metrics(flat, [np.array([2]), np.array([3])], ks=(3,))
    np.testing.assert_allclose(out["mrr@3"], [1 / 3, 0])
    np.testing.assert_allclose(out["ndcg@3"], [1 / L2(4), 0])
    # ties straddling the cut-off: ranking 3 | 1 2 4 (tied) | 0
    scores = np.array([[0.1, 0.7, 0.7, 0.9, 0.7]])
    out = topk_metrics(scores, [np.array([4])], ks=(3, 4))
    assert out["hit@3"][0] == 0.0
    assert out["mrr@4"][0] == pytest.approx(1 / 4)
    out = topk_metrics(scores, [np.array([1])], ks=(2,))
    assert out["mrr@2"][0] == pytest.approx(1 / 2)


def test_ties_match_stable_argsort_reference():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(37, 23)).astype(np.float64)
    targets = [
        rng.choice(23, size=rng.integers(1, 6), replace=False) for _ in range(37)
    ]
    history = [
        rng.choice(23, size=rng.integers(0, 5), replace=False) for _ in range(37)
    ]
    out = topk_metrics(scores, targets, ks=(1, 5, 10), history=history, chunk_size=8)
    for u in range(37):
        s = scores[u].copy()
        s[history[u]] = -np.inf
        top = [i for i in np.argsort(-s, kind="stable")[:10] if i not in history[u]]
        first = next((r for r, i in enumerate(top, 1) if i in targets[u]), None)
        want = 1 / first if first is not None and first <= 5 else 0.0
        assert out["mrr@5"][u] == pytest.approx(want)
        n_hit = sum(i in targets[u] for i in top[:10])
        assert out["recall@10"][u] == pytest.approx(n_hit / len(targets[u]))


def test_empty_ground_truth_is_nan():
    out = topk_metrics(SCORES[:2], [np.array([], dtype=np.int64), [5]], ks=(2,))
    for key, value in out.items():
        assert np.isnan(value[0]), key
        assert not np.isnan(value[1]), key
    assert out["recall@2"][1] == 1.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        topk_metrics(np.zeros(5), [[0]])
    with pytest.raises(ValueError):
        topk_metrics(SCORES, TARGETS[:2])


def test_sampled_uni99_ties_count_against_positive():
    pos = np.array([0.5, 0.5, 0.9, 0.3])
    neg = np.full((4, 99), 0.1)
    neg[0, 0] = 0.5  # one tie -> rank 2
    neg[1, :3] = [0.6, 0.7, 0.8]  # 3 above + 2 ties -> rank 6
    neg[1, 3:5] = 0.5
    # user 2: all below -> rank 1
    neg[3, :] = 0.3  # all 99 tied -> rank 100
    out = sampled_topk_metrics(pos, neg, ks=(1, 5, 10))
    np.testing.assert_allclose(out["hit@1"], [0, 0, 1, 0])
    np.testing.assert_allclose(out["hit@5"], [1, 0, 1, 0])
    np.testing.assert_allclose(out["hit@10"], [1, 1, 1, 0])
    np.testing.assert_allclose(out["ndcg@1"], [0, 0, 1, 0])
    np.testing.assert_allclose(out["ndcg@5"], [1 / L2(3), 0, 1, 0])
    np.testing.assert_allclose(out["ndcg@10"], [1 / L2(3), 1 / L2(7), 1, 0])
    np.testing.assert_allclose(out["mrr@5"], [1 / 2, 0, 1, 0])
    np.testing.assert_allclose(out["mrr@10"], [1 / 2, 1 / 6, 1, 0])


def test_sampled_accepts_torch():
    pos = torch.tensor([1.0, 0.0])
    neg = torch.zeros(2, 99)
    neg[0, :4] = 2.0  # rank 5
    out = sampled_topk_metrics(pos, neg, ks=(5,))
    np.testing.assert_allclose(out["hit@5"], [1, 0])  # user 1: all 99 tied
    np.testing.assert_allclose(out["ndcg@5"], [1 / L2(6), 0])
    np.testing.assert_allclose(out["mrr@5"], [1 / 5, 0])
