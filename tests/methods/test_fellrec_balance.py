"""FELLRec's dynamic balance against hand arithmetic (fellrec.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from fedrec.methods.fellrec import FELLRecConfig, heating_weights, mix, similarity


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
