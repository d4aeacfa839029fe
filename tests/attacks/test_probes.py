"""Probes recover what is recoverable and nothing from noise."""

from __future__ import annotations

import numpy as np
import torch

from fedrec.attacks.probes import history_inference, token_inversion


def test_token_inversion_perfect_on_invertible_states_and_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(20, 16, generator=g)  # 20 token ids, a fixed 16-d code each
    t_pub = torch.randint(0, 20, (2000,), generator=g)
    t_vic = torch.randint(0, 20, (500,), generator=g)
    assert token_inversion(emb[t_pub], t_pub, emb[t_vic], t_vic, "linear") == 1.0
    noise_acc = token_inversion(
        torch.randn(2000, 16, generator=g),
        t_pub,
        torch.randn(500, 16, generator=g),
        t_vic,
        "mlp",
    )
    assert noise_acc < 0.15  # chance is 1/20


def test_history_inference_from_an_encoding_of_the_history():
    rng = np.random.default_rng(0)
    n_items, d = 30, 64
    proj = torch.randn(n_items, d, generator=torch.Generator().manual_seed(1))
    hist = [rng.choice(n_items, size=3, replace=False) for _ in range(1200)]
    z = torch.stack([proj[torch.as_tensor(h)].mean(0) for h in hist])
    rec = history_inference(
        z[:1000], hist[:1000], z[1000:], hist[1000:], n_items, "linear"
    )
    assert rec > 0.9
    shuffled = history_inference(
        z[:1000], hist[:1000], z[1000:].flip(0), hist[1000:], n_items, "linear"
    )
    assert shuffled < 0.6  # wrong users' states: near the popularity baseline (10/30)
