"""FedPA: adapters, gate, partition and uploads (fedpa.md §2, §8, §10)."""

from __future__ import annotations

import pytest
import torch

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.errors import ConfigError
from fedrec.fl.partition import PRIVATE

FEDPA = {"name": "fedpa", "group_attrs": ["group", "user_f1"]}


def _engine(method=None, **train):
    raw = {
        "data": {
            "options": {
                "n_users": 30,
                "n_items": 40,
                "seed": 2,
                "interactions_per_user": [8, 30],
            }
        },
        "model": {"dim": 4, "layers": [8, 4]},
        "train": {"rounds": 2, "lr": 0.05, **train},
        "method": method or FEDPA,
    }
    return build_engine(config_from_raw(raw))


def _loss(model, eng):
    rows = torch.as_tensor(eng.fed.rows["train"][:64])
    logit = model(eng.fed.users[rows], eng.fed.items[rows])
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logit, eng.fed.labels[rows]
    )


def test_gradients_reach_both_factors_with_lora_init():
    eng = _engine()
    model = eng.model
    _loss(model, eng).backward()
    for i in range(2):
        for a in ("user", "group", "user_f1"):
            lora = model.lora[i][a]
            assert lora.B.grad.abs().sum() > 0  # B learns at step 1
            assert (
                torch.count_nonzero(lora.A.grad) == 0
            )  # ∂L/∂A = s·hᵀ(δBᵀ) = 0 while B = 0
    with torch.no_grad():  # after one step on B, A gets a gradient too
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    model.zero_grad()
    _loss(model, eng).backward()
    assert all(
        model.lora[i][a].A.grad.abs().sum() > 0
        for i in range(2)
        for a in ("user", "group")
    )


def test_zeros_init_adapters_never_move():
    eng = _engine({**FEDPA, "lora_init": "zeros"})
    _loss(eng.model, eng).backward()
    for name, p in eng.model.named_parameters():
        if name.startswith("lora."):
            assert torch.count_nonzero(p.grad) == 0, name
    for r in range(2):
        eng.run_round(r)
    for name, t in {**eng.server, **eng.store.banks}.items():
        if name.startswith("lora."):
            assert torch.count_nonzero(t) == 0, name
    # what does train: private embeddings, shared gates and head
    assert not torch.equal(eng.server["head.weight"], eng.model.head.weight)


def test_gate_width_is_derived_and_groups_exist_from_round_zero():
    eng = _engine()
    K = 2 + 2  # user + two group attributes + frozen branch = 1 + 1 + G
    assert eng.model.gates[0][2].weight.shape == (K, 8)
    assert eng.model.gates[1][2].weight.shape == (K, 4)
    card = int(eng.fed.data.user_features[:, 0].max()) + 1
    assert eng.server["lora.0.group.A"].shape[0] == card
    assert (
        eng.server["lora.0.user_f1.B"].shape[0]
        == int(eng.fed.data.user_features[:, 1].max()) + 1
    )


def test_ablation_switches_change_the_partition():
    no_user = _engine({**FEDPA, "user_adapter": False})
    assert not any(".user." in n for n in no_user.partition.roles)
    assert no_user.model.gates[0][2].weight.shape[0] == 1 + 2
    no_gate = _engine({**FEDPA, "gate": False})
    assert not any(n.startswith("gates.") for n in no_gate.partition.roles)
    no_group = _engine({"name": "fedpa", "group_adapter": False})
    assert set(no_group.partition.roles.values()) == {"private", "shared", "frozen"}


def test_upload_size_matches_the_spec_formula():
    """fedpa.md §8: Σ_l [g_l(D_l+1) + K(g_l+1)] + (D_2+1) + G·r·Σ_l (D_l + D_{l+1})."""
    eng = _engine()
    D0 = (3 + 3) * 4  # 3 user + 3 item fields × d = 4
    D, g, G, r, K = [D0, 8, 4], [8, 4], 2, 4, 4
    floats = sum(g[i] * (D[i] + 1) + K * (g[i] + 1) for i in range(2)) + (D[2] + 1)
    floats += G * r * sum(D[i] + D[i + 1] for i in range(2))
    m = eng.train_round(0)
    assert m["upload_bytes_per_client"] == 4 * floats
    assert m["download_bytes_per_client"] == 4 * floats


def test_no_private_tensor_is_ever_uploaded():
    eng = _engine(client_fraction=0.5)
    private = set(eng.partition.names(PRIVATE))
    assert {"user_emb.weight", "lora.0.user.A", "lora.1.user.B"} <= private
    seen = []
    aggregate = eng.strategy.aggregate

    def spy(server, uploads, partition, ctx):
        seen.append(set(uploads))
        return aggregate(server, uploads, partition, ctx)

    eng.strategy.aggregate = spy
    for r in range(3):
        eng.run_round(r)
    assert len(seen) == 3
    assert all(not (names & private) for names in seen)
    assert not (set(eng.server) & private)  # the server never holds them either
    # private rows moved on the clients that trained
    init = dict(eng.model.named_parameters())["user_emb.weight"]
    assert any(not torch.equal(b, init) for b in eng.store.banks["user_emb.weight"])


@pytest.mark.parametrize("lora_init", ["lora", "zeros"])
def test_fedpa_stacked_equals_loop(lora_init):
    def run(engine):
        eng = _engine(
            {**FEDPA, "lora_init": lora_init, "adapter_lr": 0.01},
            engine=engine,
            dtype="float64",
            batch_size=6,
            client_fraction=0.6,
            local_epochs=2,
        )
        for r in range(2):
            eng.run_round(r)
        return eng

    a, b = run("stacked"), run("loop")
    for name in a.server:
        torch.testing.assert_close(a.server[name], b.server[name], rtol=0, atol=1e-10)
    for name in a.store.banks:
        torch.testing.assert_close(
            a.store.banks[name], b.store.banks[name], rtol=0, atol=1e-10
        )
    assert a.history[-1]["val_auc"] == pytest.approx(
        b.history[-1]["val_auc"], abs=1e-10
    )


def test_learning_rates_per_level():
    def rates(**opts):
        s = _engine({**FEDPA, **opts}).strategy
        names = ["user_emb.weight", "gates.0.0.weight", "head.bias"]
        names += [
            "lora.0.user.A",
            "lora.1.user.B",
            "lora.0.group.A",
            "lora.1.user_f1.B",
        ]
        return [s.learning_rate(n, 0.05) for n in names]

    assert rates() == [0.05] * 7  # train.lr for everything
    assert rates(adapter_lr=0.01) == [0.05] * 3 + [0.01] * 4
    # the private user adapter on its own rate; a group named like it is not
    assert rates(adapter_lr=0.01, user_adapter_lr=0.002) == [0.05] * 3 + [
        0.002,
        0.002,
        0.01,
        0.01,
    ]
    assert rates(user_adapter_lr=0.002) == [0.05] * 3 + [0.002, 0.002, 0.05, 0.05]
    with pytest.raises(ConfigError, match="user_adapter_lr"):
        _engine({**FEDPA, "user_adapter_lr": -1.0})
