"""FELLRec's dynamic balance against hand arithmetic (fellrec.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from fedrec.fl.partition import Partition
from fedrec.fl.strategy import RoundContext
from fedrec.methods.fellrec import (
    FELLRec,
    FELLRecConfig,
    heating_weights,
    mix,
    similarity,
)


def test_heating_fixture_from_the_spec():
    """β = 5, α = 0.7, exponent t + 1/β: w = tanh(0.7 / l̂^(t + 0.2))."""
    cfg = FELLRecConfig(alpha=0.7, beta=5.0)
    # feed losses whose softmax(l/0.05) is exactly the l̂ we want: l = 0.05·log(l̂)
    for t, l_hat, expected in [
        (0, 0.9, 0.61),
        (0, 0.2, 0.75),
        (0, 0.01, 0.94),
        (5, 0.9, 0.84),
    ]:
        rest = (1 - l_hat) / 2
        losses = 0.05 * torch.log(
            torch.tensor([l_hat, rest, rest], dtype=torch.float64)
        )
        w = heating_weights(losses, t, cfg)
        assert w[0] == pytest.approx(math.tanh(0.7 / l_hat ** (t + 0.2)), abs=1e-12)
        assert w[0] == pytest.approx(expected, abs=0.006)


def test_heating_small_for_high_loss_early_and_tends_to_one():
    cfg = FELLRecConfig(alpha=0.7, beta=5.0)
    losses = torch.tensor([0.30, 0.25, 0.20], dtype=torch.float64)  # client 0 worst
    w0 = heating_weights(losses, 0, cfg)
    assert w0[0] < w0[1] < w0[2]
    w_late = heating_weights(losses, 30, cfg)
    assert torch.all(w_late > 0.999)


def test_exponent_readings_and_switch():
    losses = torch.tensor([0.3, 0.2], dtype=torch.float64)
    l_hat = torch.softmax(losses / 0.05, 0)
    a = heating_weights(losses, 2, FELLRecConfig(beta=5.0))
    b = heating_weights(losses, 2, FELLRecConfig(beta=5.0, heat_exponent="(t+1)/beta"))
    torch.testing.assert_close(a, torch.tanh(0.7 / l_hat ** (2 + 1 / 5)))
    torch.testing.assert_close(b, torch.tanh(0.7 / l_hat ** (3 / 5)))
    # beta = 1 with heating on: the weight IS applied (the reference skips it)
    c = heating_weights(losses, 0, FELLRecConfig(beta=1.0))
    assert torch.all(c < 1)
    assert torch.equal(
        heating_weights(losses, 0, FELLRecConfig(heating=False)),
        torch.ones(2, dtype=torch.float64),
    )


def test_three_client_aggregation_by_hand():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    s = similarity(v)
    # cos(v0,v1) = 0 -> 0.5; cos(v0,v2) = cos(v1,v2) = 1/√2 -> (1 + 1/√2)/2
    c = (1 + 1 / math.sqrt(2)) / 2
    torch.testing.assert_close(
        s, torch.tensor([[1, 0.5, c], [0.5, 1, c], [c, c, 1]], dtype=torch.float64)
    )
    w = torch.tensor([0.5, 1.0, 0.2], dtype=torch.float64)
    out = mix(v, s, w)
    # client 0: Z = 1 + 0.5(0.5 + c); θ = (v0 + 0.5(0.5 v1 + c v2)) / Z
    z0 = 1 + 0.5 * (0.5 + c)
    exp0 = (
        torch.tensor([1.0, 0.0])
        + 0.5 * (0.5 * torch.tensor([0.0, 1.0]) + c * torch.tensor([1.0, 1.0]))
    ) / z0
    z2 = 1 + 0.2 * (2 * c)
    exp2 = (torch.tensor([1.0, 1.0]) + 0.2 * c * torch.tensor([1.0, 1.0])) / z2
    torch.testing.assert_close(out[0], exp0.double())
    torch.testing.assert_close(out[2], exp2.double())


def test_w_one_reduces_to_similarity_weighted_mean():
    v = torch.randn(4, 3, dtype=torch.float64)
    s = similarity(v)
    out = mix(v, s, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(out, (s @ v) / s.sum(1, keepdim=True))


# three clients sent the same θ = (1, 0); they upload θ0 = (2, 0), θ1 = (1, 1),
# θ2 = (1, -1), i.e. updates u0 = (1, 0), u1 = (0, 1), u2 = (0, -1)
SENT = torch.tensor([[1.0, 0.0]] * 3)
UP = torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, -1.0]])


def aggregate(similarity_on: str) -> tuple[torch.Tensor, dict, FELLRec]:
    cfg = FELLRecConfig(heating=False, similarity_on=similarity_on)  # w ≡ 1
    strategy = FELLRec(cfg)
    ctx = RoundContext(
        round=0,
        clients=torch.arange(3),
        weights=torch.ones(3, dtype=torch.float64),
        groups={},
        n_groups={},
        losses=torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64),
    )
    part = Partition({"theta": "shared"})
    new = strategy.aggregate({"theta": SENT.clone()}, {"theta": UP}, part, ctx)
    return new["theta"], strategy.round_log(), strategy


def test_similarity_on_params_by_hand():
    theta, log, strategy = aggregate("params")
    assert strategy.round_log() == {}  # each aggregation's log is reported once
    # cos(θ0, θ1) = cos(θ0, θ2) = 2/(2·√2) = 1/√2; cos(θ1, θ2) = 0
    c = (1 + 1 / math.sqrt(2)) / 2
    assert log["fellrec_s_min"] == pytest.approx(0.5)
    assert log["fellrec_s_max"] == pytest.approx(c)
    assert log["fellrec_s_mean"] == pytest.approx((4 * c + 2 * 0.5) / 6)
    assert log["fellrec_heat"] == [1.0, 1.0, 1.0]
    # a_ii = 1 / (1 + Σ_{j≠i} s_ij)
    assert log["fellrec_self_weight"] == pytest.approx(
        [1 / (1 + 2 * c), 1 / (1.5 + c), 1 / (1.5 + c)]
    )
    # θ1 ← (θ1 + c θ0 + 0.5 θ2) / (1.5 + c)
    want1 = (UP[1].double() + c * UP[0] + 0.5 * UP[2]) / (1.5 + c)
    torch.testing.assert_close(theta[1].double(), want1, rtol=1e-6, atol=1e-6)


def test_similarity_on_updates_by_hand_and_mixed_from_the_uploads():
    theta, log, _ = aggregate("update")
    # cos(u0, u1) = cos(u0, u2) = 0 -> 0.5; cos(u1, u2) = -1 -> 0
    assert log["fellrec_clients"] == [0, 1, 2]
    assert (log["fellrec_s_min"], log["fellrec_s_max"]) == pytest.approx((0, 0.5))
    assert log["fellrec_s_mean"] == pytest.approx((4 * 0.5 + 2 * 0) / 6)
    assert log["fellrec_self_weight"] == pytest.approx([1 / 2, 2 / 3, 2 / 3])
    # θ0 ← (θ0 + 0.5 θ1 + 0.5 θ2) / 2 = (1.5, 0);  θ2 ← (θ2 + 0.5 θ0) / 1.5
    torch.testing.assert_close(theta[0], torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(theta[2], torch.tensor([4 / 3, -2 / 3]))
    # the reference mixes in place: client 2 would read the mixed θ0 = (1.5, 0)
    # and get ((1, -1) + 0.5·(1.5, 0)) / 1.5 = (7/6, -2/3); we do not
    assert not torch.allclose(theta[2], torch.tensor([7 / 6, -2 / 3]))
