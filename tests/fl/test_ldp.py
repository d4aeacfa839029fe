"""Laplace LDP upload mod: sampler, clipping, per-client noise, ε accounting."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.fl.mods import LaplaceLDP, ModContext, build_mods, laplace

# ----------------------------------------------------------------- the sampler


def test_laplace_samples_follow_the_laplace_law():
    b, n = 1.5, 200_000
    gen = torch.Generator().manual_seed(1234)
    x = laplace((n,), b, gen, torch.float64).numpy()
    assert x.shape == (n,)
    ks = stats.kstest(x, stats.laplace(scale=b).cdf)
    assert ks.pvalue > 1e-3
    # Mean: Var = 2b², so SD(mean) = sqrt(2)·b/sqrt(n) ≈ 0.0047; allow 5 SD.
    assert abs(x.mean()) < 5 * math.sqrt(2) * b / math.sqrt(n)
    # Variance: Laplace has 4th central moment 24b⁴, so
    # Var(s²) ≈ (24b⁴ − 4b⁴)/n = 20b⁴/n, i.e. SD(s²)/(2b²) = sqrt(5/n) ≈ 0.005;
    # allow 5 SD (2.5 % relative).
    rel = abs(x.var() / (2 * b * b) - 1)
    assert rel < 5 * math.sqrt(5 / n)


def test_laplace_dtype_shape_and_repeatability():
    a = laplace((3, 4), 0.5, torch.Generator().manual_seed(7), torch.float32)
    b = laplace((3, 4), 0.5, torch.Generator().manual_seed(7), torch.float32)
    assert a.dtype == torch.float32 and a.shape == (3, 4)
    assert torch.equal(a, b)


# --------------------------------------------------------------- ε mode by hand


def _ctx(clients, rnd=0, seed=0):
    return ModContext(seed=seed, round=rnd, clients=list(clients))


def test_clip_scales_the_update_to_l1_bound_across_tensors():
    clip, eps = 2.0, 1e12  # b = 2C/ε = 4e-12: noise is negligible
    received = {
        "a": torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64),
        "b": torch.tensor([[0.5, -0.5], [0.5, -0.5]], dtype=torch.float64),
    }
    # client 0: Δa = [3, -1], Δb = [0, 4] -> ||Δ||₁ = 8 > C = 2 -> factor 2/8
    # client 1: Δa = [0.1, -0.2], Δb = [0.3, 0] -> ||Δ||₁ = 0.6 <= C: unchanged
    d_a = np.array([[3.0, -1.0], [0.1, -0.2]])
    d_b = np.array([[0.0, 4.0], [0.3, 0.0]])
    uploads = {
        "a": received["a"] + torch.as_tensor(d_a),
        "b": received["b"] + torch.as_tensor(d_b),
    }
    before = {n: t.clone() for n, t in uploads.items()}
    mod = LaplaceLDP(epsilon=eps, clip=clip)
    assert mod.scale == pytest.approx(2 * clip / eps)
    out = mod(uploads, received, _ctx([0, 1]))

    factor = np.array([clip / 8.0, 1.0])[:, None]
    want_a = received["a"].numpy() + d_a * factor
    want_b = received["b"].numpy() + d_b * factor
    np.testing.assert_allclose(out["a"].numpy(), want_a, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["b"].numpy(), want_b, rtol=0, atol=1e-9)
    # client 0's clipped update has L1 norm C exactly (up to the tiny noise)
    l1 = sum(np.abs((out[n] - received[n]).numpy()[0]).sum() for n in ("a", "b"))
    assert l1 == pytest.approx(clip, abs=1e-9)
    # the inputs are not modified in place
    for n in uploads:
        assert torch.equal(uploads[n], before[n])


def test_scale_is_two_clip_over_epsilon():
    mod = LaplaceLDP(epsilon=0.5, clip=0.3)
    assert mod.scale == pytest.approx(2 * 0.3 / 0.5)
    assert mod.epsilon_per_round == 0.5


def _noise(mod, clients, rnd=0, seed=0, shape=(64,)):
    """Noise each client gets, with Δ = 0 (so nothing is clipped)."""
    received = {"w": torch.zeros(len(clients), *shape, dtype=torch.float64)}
    uploads = {"w": received["w"].clone()}
    out = mod(uploads, received, _ctx(clients, rnd, seed))
    return {c: out["w"][i] - received["w"][i] for i, c in enumerate(clients)}


def test_os_noise_is_new_every_time_whatever_the_server_knows():
    mod = LaplaceLDP(epsilon=1.0, clip=1.0)  # b = 2
    n1, n2 = _noise(mod, [3, 5]), _noise(mod, [3, 5])  # same seed, round, clients
    for c in (3, 5):
        assert n1[c].abs().sum() > 0
        assert not torch.equal(n1[c], n2[c])
    assert not torch.equal(n1[3], n1[5])


def test_reproducible_noise_is_per_client_and_repeatable():
    mod = LaplaceLDP(epsilon=1.0, clip=1.0, reproducible=True)  # b = 2
    n1 = _noise(mod, [3, 5])
    n2 = _noise(mod, [3, 5])
    assert not torch.equal(n1[3], n1[5])
    assert torch.equal(n1[3], n2[3]) and torch.equal(n1[5], n2[5])
    assert n1[3].abs().sum() > 0
    # keyed by the client's id, not its position in the round
    n3 = _noise(mod, [5, 9])
    assert torch.equal(n3[5], n1[5])
    # another round or another seed: other noise
    assert not torch.equal(_noise(mod, [3, 5], rnd=1)[3], n1[3])
    assert not torch.equal(_noise(mod, [3, 5], seed=1)[3], n1[3])


# ----------------------------------------------------------------- δ-only mode


def test_delta_only_mode_adds_noise_without_clipping():
    b = 0.3
    mod = LaplaceLDP(epsilon=0.0, scale=b)
    assert mod.scale == b
    assert mod.epsilon_per_round == math.inf
    n = 100_000
    received = {"w": torch.zeros(2, n, dtype=torch.float64)}
    uploads = {"w": torch.full((2, n), 100.0, dtype=torch.float64)}  # ||Δ||₁ = 1e7
    out = mod(uploads, received, _ctx([0, 1]))
    noise = (out["w"] - uploads["w"]).numpy().ravel()  # 2n entries
    m = len(noise)
    # no clipping: the mean stays at Δ = 100; SD(mean) = sqrt(2)·b/sqrt(m) ≈ 7e-4
    assert abs(out["w"].mean().item() - 100.0) < 5 * math.sqrt(2) * b / math.sqrt(m)
    # std ≈ sqrt(2)·b; relative SD of the sample std is ≈ sqrt(5/m)/2 ≈ 0.0025
    # (from Var(s²) ≈ 20b⁴/m); allow 5 SD.
    assert abs(noise.std() / (math.sqrt(2) * b) - 1) < 5 * math.sqrt(5 / m) / 2


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 1.0, "scale": 0.3},  # both
        {},  # neither
        {"epsilon": 0.0, "scale": 0.0},  # neither, explicitly
        {"epsilon": 1.0, "clip": 0.0},
        {"epsilon": 1.0, "clip": -1.0},
        {"scale": 0.3, "clip": 0.0},
        {"epsilon": -1.0},
    ],
)
def test_constructor_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        LaplaceLDP(**kwargs)


def test_build_mods_follows_the_privacy_config():
    def mods(privacy):
        return build_mods(config_from_raw({"privacy": privacy}).privacy)

    assert mods({}) == []
    (m,) = mods({"ldp_epsilon": 2.0, "ldp_clip": 0.5})
    assert isinstance(m, LaplaceLDP) and m.scale == pytest.approx(0.5)
    (m,) = mods({"ldp_scale": 0.3})
    assert m.scale == 0.3 and m.epsilon_per_round == math.inf


# ---------------------------------------------------------------- engine level


def _cfg(privacy=None, method=None, fraction=1.0, rounds=3):
    return config_from_raw(
        {
            "data": {"options": {"n_users": 40, "n_items": 30}},
            "model": {"dim": 4, "layers": [8, 4]},
            "train": {
                "rounds": rounds,
                "batch_size": 16,
                "lr": 0.05,
                "client_fraction": fraction,
            },
            "eval": {"splits": ["val"]},
            "method": method or {"name": "fedavg"},
            "privacy": privacy or {},
        }
    )


LDP = {"ldp_epsilon": 2.0, "ldp_clip": 0.5}


def test_epsilon_adds_up_over_rounds_with_full_participation():
    eng = build_engine(_cfg(LDP))
    for r in range(3):
        eng.run_round(r)
        assert eng.history[r]["ldp_epsilon_total"] == 2.0 * (r + 1)


def test_epsilon_is_the_worst_clients_participation():
    eng = build_engine(_cfg(LDP, fraction=0.5))
    counts = np.zeros(eng.fed.n_clients, dtype=int)
    for r in range(3):
        sampled = eng.sample(r).numpy()
        assert len(sampled) == eng.fed.n_clients // 2
        counts[sampled] += 1
        eng.run_round(r)
        assert eng.history[r]["ldp_epsilon_total"] == 2.0 * counts.max()
    assert eng.epsilon_spent() == 2.0 * counts.max()


def test_clip_only_row_clips_and_adds_no_noise():
    mod = LaplaceLDP(epsilon=math.inf, clip=0.5)
    assert mod.scale == 0 and mod.epsilon_per_round == math.inf
    received = {"w": torch.zeros(2, 4, dtype=torch.float64)}
    uploads = {
        "w": torch.tensor([[1.0, -1.0, 0.0, 2.0], [0.1, 0.0, 0.0, 0.1]]).double()
    }
    out = mod(uploads, received, _ctx([0, 1]))
    # client 0: L1 = 4 > 0.5, scaled by 1/8; client 1: L1 = 0.2, kept as is
    want = torch.tensor([[0.125, -0.125, 0.0, 0.25], [0.1, 0.0, 0.0, 0.1]]).double()
    assert torch.equal(out["w"], want)
    cfg = config_from_raw({"privacy": {"ldp_epsilon": "inf", "ldp_clip": 0.5}})
    assert cfg.privacy.ldp and not cfg.privacy.protects


def _two_runs(privacy):
    """Uploads and metrics of two engines of one config and seed, one round each."""
    out = []
    for _ in range(2):
        eng = build_engine(_cfg(privacy, rounds=1))
        seen = _capture(eng)
        m = eng.run_round(0)
        out.append((seen[0], m["val_auc"], m["train_loss"]))
    return out


def test_two_runs_with_ldp_differ_and_reproducible_noise_repeats(caplog):
    (up_a, auc_a, loss_a), (up_b, auc_b, _) = _two_runs(LDP)
    assert all(not torch.equal(up_a[n], up_b[n]) for n in up_a)
    assert auc_a != auc_b
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        (up_a, auc_a, loss_r), (up_b, auc_b, _) = _two_runs(
            {**LDP, "reproducible_noise": True}
        )
    assert all(torch.equal(up_a[n], up_b[n]) for n in up_a)
    assert auc_a == auc_b and loss_r == loss_a  # the noise comes after the loss
    assert any("protects nothing" in r.getMessage() for r in caplog.records)


def test_summary_says_whether_ldp_protects(tmp_path):
    from fedrec.runs import run_experiment

    def protects(privacy):
        cfg = _cfg(privacy, rounds=1)
        return run_experiment(cfg, tmp_path / str(privacy), progress=False)[
            "ldp_protects"
        ]

    assert protects(LDP) is True
    assert protects({**LDP, "reproducible_noise": True}) is False
    assert protects({}) is False


def test_no_ldp_spends_no_epsilon():
    eng = build_engine(_cfg())
    eng.run_round(0)
    assert eng.history[0]["ldp_epsilon_total"] == 0.0


def _capture(eng):
    seen = []
    orig = eng.strategy.aggregate

    def aggregate(server, uploads, partition, ctx):
        seen.append({n: t.clone() for n, t in uploads.items()})
        return orig(server, uploads, partition, ctx)

    eng.strategy.aggregate = aggregate
    return seen


def test_uploads_are_noised_but_private_tensors_never_are():
    method = {"name": "fedper"}
    clean = build_engine(_cfg(method=method))
    noisy = build_engine(_cfg(LDP, method=method))
    assert "user_emb.weight" in clean.store.banks
    assert "user_emb.weight" not in clean.partition.uploaded
    up_clean, up_noisy = _capture(clean), _capture(noisy)
    clean.train_round(0)
    noisy.train_round(0)
    (a,), (b,) = up_clean, up_noisy
    assert set(a) == set(b) and a
    for n in a:
        assert a[n].shape == b[n].shape
        assert not torch.equal(a[n], b[n]), n
    # the client store (private user embeddings) is exactly that of the clean run
    assert set(clean.store.banks) == set(noisy.store.banks)
    for n, t in clean.store.banks.items():
        assert torch.equal(t, noisy.store.banks[n]), n
    # and training did move it, so the comparison is not vacuous
    init = clean.model.state_dict()["user_emb.weight"]
    assert not torch.equal(clean.store.banks["user_emb.weight"][0], init)
