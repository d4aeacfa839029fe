"""Built-in methods: local, centralised, FedProx, FedAvg weighting; the registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.data.synthetic import make_synthetic
from fedrec.fl.strategy import Strategy
from fedrec.methods.fedprox import FedProx, FedProxConfig
from fedrec.registry import method_names, register_method

OPTIONS = {"n_users": 20, "n_items": 30, "seed": 4}


def _cfg(method: dict, **train):
    return config_from_raw(
        {
            "run": {"seed": 1},
            "data": {"options": dict(OPTIONS)},
            "model": {"dim": 4, "layers": [8, 4]},
            "train": {"rounds": 2, "batch_size": 16, "lr": 0.05, **train},
            "method": method,
        }
    )


def _data():
    return make_synthetic(**OPTIONS)


def _trained(method: dict, rounds: int = 2, **train):
    eng = build_engine(_cfg(method, **train), _data())
    for r in range(rounds):
        eng.train_round(r)
    return eng


# ------------------------------------------------------------------- local


def test_local_uploads_nothing_and_trains_every_client():
    eng = build_engine(_cfg({"name": "local"}), _data())
    assert eng.server == {}
    init = {n: p.detach().clone() for n, p in eng.model.named_parameters()}
    assert set(eng.store.banks) == set(init)
    m = eng.train_round(0)
    assert m["upload_bytes_per_client"] == 0
    assert m["rejected"] == 0
    assert eng.server == {}
    sizes = eng.fed.sizes("train")
    assert (sizes > 0).all()
    for c in range(eng.fed.n_clients):
        moved = [
            not torch.equal(eng.store.banks[n][c], init[n]) for n in eng.store.banks
        ]
        assert any(moved), c
    # clients train independently: their stores differ from each other
    w = next(iter(eng.store.banks))
    assert not torch.equal(eng.store.banks[w][0], eng.store.banks[w][1])


def test_local_unsampled_client_keeps_init():
    eng = build_engine(_cfg({"name": "local"}, clients_per_round=3), _data())
    init = {n: p.detach().clone() for n, p in eng.model.named_parameters()}
    sampled = set(eng.sample(0).tolist())
    assert len(sampled) == 3
    eng.train_round(0)
    for c in range(eng.fed.n_clients):
        same = all(torch.equal(eng.store.banks[n][c], init[n]) for n in init)
        assert same == (c not in sampled), c


# ------------------------------------------------------------- centralised


def test_centralised_has_one_client_with_all_train_rows():
    eng = build_engine(_cfg({"name": "centralised"}), _data())
    assert eng.fed.n_clients == 1
    split = eng.fed.split
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(
            np.sort(eng.fed.client_rows(s, 0)), np.sort(np.asarray(getattr(split, s)))
        )
    # same split as a per-user run: the single client holds every user's rows
    per_user = build_engine(_cfg({"name": "fedavg"}), _data())
    assert per_user.fed.n_clients > 1
    np.testing.assert_array_equal(
        np.sort(eng.fed.client_rows("train", 0)), np.sort(per_user.fed.rows["train"])
    )
    m = eng.train_round(0)
    assert m["clients"] == 1 and m["rejected"] == 0


# ----------------------------------------------------------------- fedprox


def test_fedprox_mu_zero_equals_fedavg():
    a = _trained({"name": "fedavg"})
    b = _trained({"name": "fedprox", "mu": 0.0})
    assert set(a.server) == set(b.server)
    for n in a.server:
        assert torch.equal(a.server[n], b.server[n]), n


def test_fedprox_mu_positive_differs_from_fedavg():
    a = _trained({"name": "fedavg"})
    b = _trained({"name": "fedprox", "mu": 1.0})
    assert any(not torch.equal(a.server[n], b.server[n]) for n in a.server)


def test_fedprox_penalty_by_hand():
    prox = FedProx(FedProxConfig(mu=0.5)).penalty()
    value = prox({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.0, 0.0])})
    # (mu / 2) * ||[1, 2] - [0, 0]||^2 = 0.25 * 5
    assert float(value) == pytest.approx(1.25)
    value = prox(
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])},
        {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0])},
    )
    # 0.25 * ((0)^2 + (2)^2 + (2)^2) = 0.25 * 8
    assert float(value) == pytest.approx(2.0)


# ------------------------------------------------------------------ fedavg


def test_fedavg_weighted_and_unweighted_differ():
    a = _trained({"name": "fedavg", "weighted": True}, rounds=1)
    b = _trained({"name": "fedavg", "weighted": False}, rounds=1)
    sizes = a.fed.sizes("train")
    assert sizes.min() < sizes.max()
    assert any(not torch.equal(a.server[n], b.server[n]) for n in a.server)


# ---------------------------------------------------------------- registry


@dataclass
class _Cfg:
    pass


@pytest.mark.parametrize("name", ["fedavg", "local", "centralised", "fedprox"])
def test_register_duplicate_rejected(name):
    with pytest.raises(ValueError, match="already registered"):
        register_method(name, _Cfg, Strategy)


@pytest.mark.parametrize(
    "name", ["FedAvg", "1abc", "a", "bad name", "trailing-", "_x", "", "dot.ted"]
)
def test_register_invalid_name_rejected(name):
    with pytest.raises(ValueError):
        register_method(name, _Cfg, Strategy)
    assert name not in method_names()


def test_register_non_dataclass_config_rejected():
    with pytest.raises(ValueError, match="dataclass"):
        register_method("not-a-dataclass-test", dict, Strategy)
    assert "not-a-dataclass-test" not in method_names()
