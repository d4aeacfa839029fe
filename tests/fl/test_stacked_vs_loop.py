"""The stacked engine equals the per-client reference loop (fedpa.md §10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.build import build_engine
from fedrec.config import ExperimentConfig, config_from_raw
from fedrec.data.synthetic import make_synthetic
from fedrec.fl.clients import buckets_by_length
from fedrec.fl.partition import PRIVATE, SHARED, group_role
from fedrec.fl.stacked import StackedAdam
from fedrec.methods.fedavg import FedAvg, FedAvgConfig


class PrivateEmbGroupHead(FedAvg):
    """User embeddings private, second MLP layer shared per user group, rest shared."""

    def partition_rules(self):
        return [
            ("user_emb.*", PRIVATE),
            ("mlp.1.*", group_role("group")),
            ("*", SHARED),
        ]


def _cfg(engine: str, **train) -> ExperimentConfig:
    raw = {
        "data": {
            "kind": "synthetic",
            "options": {
                "n_users": 40,
                "n_items": 60,
                "seed": 3,
                "interactions_per_user": [8, 40],
            },
        },
        "model": {"dim": 4, "layers": [8, 4]},
        "train": {
            "rounds": 3,
            "batch_size": 5,
            "local_epochs": 2,
            "lr": 0.05,
            "client_fraction": 0.5,
            "engine": engine,
            "dtype": "float64",
            **train,
        },
        "method": {"name": "fedavg"},
    }
    return config_from_raw(raw)


def _run(engine: str, **train):
    data = make_synthetic(n_users=40, n_items=60, seed=3, interactions_per_user=(8, 40))
    cfg = _cfg(engine, **train)
    eng = build_engine(cfg, data, PrivateEmbGroupHead(FedAvgConfig()))
    eng.sampled = set()
    for r in range(cfg.train.rounds):
        eng.sampled |= set(eng.sample(r).tolist())
        eng.run_round(r)
    return eng


@pytest.mark.parametrize(
    ("optimizer", "min_rows"),
    [("adam", 4096), ("sgd", 4096), ("adam", 0)],  # 0: buckets split by length
)
def test_stacked_equals_loop_after_three_rounds(optimizer, min_rows):
    a = _run("stacked", optimizer=optimizer, min_rows_per_bucket=min_rows)
    b = _run("loop", optimizer=optimizer)
    # the partition really has all three kinds and partial sampling left a group out
    roles = set(a.partition.roles.values())
    assert {PRIVATE, SHARED, group_role("group")} <= roles
    assert a.history[0]["clients"] == 20
    for name in a.server:
        torch.testing.assert_close(a.server[name], b.server[name], rtol=0, atol=1e-10)
    for name in a.store.banks:
        torch.testing.assert_close(
            a.store.banks[name], b.store.banks[name], rtol=0, atol=1e-10
        )
    # private embeddings moved for sampled clients only; the rest keep the init
    init = dict(a.model.named_parameters())["user_emb.weight"].detach()
    never = set(range(a.fed.n_clients)) - a.sampled
    assert never, "the test needs a never-sampled client"
    for c in range(a.fed.n_clients):
        assert torch.equal(a.store.banks["user_emb.weight"][c], init) == (c in never)
    for ha, hb in zip(a.history, b.history, strict=True):
        for key in ("train_loss", "val_auc", "test_auc", "val_logloss", "test_gauc"):
            assert ha[key] == pytest.approx(hb[key], abs=1e-10), key


def test_clients_take_different_step_counts():
    eng = _run("stacked")
    sizes = eng.fed.sizes("train")
    steps = np.ceil(sizes / 5)
    assert steps.min() < steps.max()  # masking of finished clients is exercised


def test_stacked_adam_matches_torch_adam_and_freezes_inactive():
    torch.manual_seed(0)
    p0 = torch.randn(3, 4, dtype=torch.float64)
    grads = [torch.randn(3, 4, dtype=torch.float64) for _ in range(4)]
    active = [
        torch.tensor([True, True, False]),
        torch.tensor([True, False, False]),
        torch.tensor([True, True, False]),
        torch.tensor([False, True, False]),
    ]
    params = {"w": p0.clone()}
    opt = StackedAdam(params, lr=0.1)
    for g, a in zip(grads, active, strict=True):
        opt.step(params, {"w": g}, a)
    for c in range(3):
        w = p0[c].clone().requires_grad_(True)
        ref = torch.optim.Adam([w], lr=0.1)
        for g, a in zip(grads, active, strict=True):
            if a[c]:
                w.grad = g[c].clone()
                ref.step()
        torch.testing.assert_close(params["w"][c], w.detach(), rtol=0, atol=1e-12)
    assert torch.equal(params["w"][2], p0[2])  # never active: untouched
    assert opt.t.tolist() == [3, 3, 0]


@pytest.mark.parametrize(
    ("max_rows", "min_rows", "want"),
    [
        # longest first (8, 6, 5, 4, 3, 2); 3 < 8 / 2 starts a bucket, 4 does not
        (100, 0, [[1, 4, 0, 3], [5, 2]]),
        # at 3 the bucket holds 4 x 8 = 32 < 40 cells, at 2 it holds 40
        (100, 40, [[1, 4, 0, 3, 5], [2]]),
        (100, 100, [[1, 4, 0, 3, 5, 2]]),
        # 4 x 8 > 30 closes a bucket whatever the lengths
        (30, 100, [[1, 4, 0], [3, 5, 2]]),
    ],
)
def test_buckets_by_length(max_rows, min_rows, want):
    lengths = np.array([5, 8, 2, 4, 6, 3])
    got = buckets_by_length(lengths, max_rows, min_rows)
    assert [b.tolist() for b in got] == want


def test_learning_rate_schedule_over_rounds():
    from fedrec.config import TrainConfig

    t = TrainConfig(lr=0.1, warmup_rounds=2, lr_decay=0.5)
    # lr · min(1, (t+1)/3) · 0.5^t
    assert [t.lr_at(r) for r in range(4)] == pytest.approx(
        [0.1 / 3, 0.1 * 2 / 3 * 0.5, 0.1 * 0.25, 0.1 * 0.125]
    )
    assert TrainConfig(lr=0.1).lr_at(7) == 0.1


def test_a_decayed_learning_rate_stops_training_after_round_zero():
    """Round r trains at ``lr_at(r)``: γ = 1e-12 leaves rounds ≥ 1 without effect."""
    data = make_synthetic(n_users=40, n_items=60, seed=3, interactions_per_user=(8, 40))
    cfg = _cfg("stacked", optimizer="sgd", client_fraction=1.0, lr_decay=1e-12)
    eng = build_engine(cfg, data)
    eng.run_round(0)
    after0 = {n: t.clone() for n, t in eng.server.items()}
    eng.run_round(1)
    for n, t in eng.server.items():
        torch.testing.assert_close(t, after0[n], rtol=0, atol=1e-9)
    moved = build_engine(_cfg("stacked", optimizer="sgd", client_fraction=1.0), data)
    moved.run_round(0)
    moved.run_round(1)
    assert any(not torch.allclose(moved.server[n], after0[n]) for n in after0)
