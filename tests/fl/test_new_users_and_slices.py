"""New users (never trained), user slices, the reference rows and the global level."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedrec.build import build_engine, user_slices
from fedrec.config import config_from_raw
from fedrec.metrics.reducers import probability_bins

RAW = {
    "data": {
        "options": {"n_users": 50, "n_items": 40, "seed": 5},
        "users": {"clients": "all"},
    },
    "model": {"dim": 4, "layers": [8, 4]},
    "train": {"rounds": 2, "dtype": "float64", "batch_size": 16},
    "eval": {"new_users": 0.2, "slices": True, "light_rows": 8, "heavy_rows": 20},
    "method": {"name": "fedavg"},
}


def _engine(**over):
    return build_engine(config_from_raw({**RAW, **over}))


def test_new_users_never_train_and_are_reported_apart():
    eng = _engine(method={"name": "local"})
    new = eng.task.slices["new"]
    members = eng.fed.client_of_user >= 0
    assert new.sum() == round(0.2 * members.sum())
    clients = eng.fed.client_of_user[new]
    assert (eng.fed.sizes("train")[clients] == 0).all()  # no train rows left
    before = eng.store.get(torch.as_tensor(clients))
    for r in range(2):
        m = eng.run_round(r)
        assert not set(eng.sample(r).tolist()) & set(clients.tolist())
    after = eng.store.get(torch.as_tensor(clients))
    for n in before:  # local-only: a new device keeps the initial model
        assert torch.equal(before[n], after[n])
    rows = eng.last_rows["test"]
    seen = ~rows["new"]
    # headline over the seen users only; _new over the new ones (the histogram
    # AUC is the exact AUC of the scores on its probability grid)
    y, grid = rows["labels"], probability_bins(rows["probs"])
    assert m["test_auc"] == pytest.approx(roc_auc_score(y[seen], grid[seen]), abs=1e-12)
    assert m["test_auc_new"] == pytest.approx(
        roc_auc_score(y[~seen], grid[~seen]), abs=1e-12
    )
    assert (
        rows["new"].sum() and np.isin(rows["users"][~seen], np.flatnonzero(new)).all()
    )


def test_the_same_new_users_whatever_the_client_layout_and_seed():
    a = _engine(method={"name": "centralised"})
    b = _engine(run={"seed": 3})
    assert np.array_equal(a.task.slices["new"], b.task.slices["new"])
    assert a.fed.n_clients == 1
    train_users = a.fed.users[torch.as_tensor(a.fed.rows["train"])].numpy()
    assert not np.isin(train_users, np.flatnonzero(a.task.slices["new"])).any()


def test_light_and_heavy_slices_by_train_rows():
    eng = _engine()
    s = user_slices(eng.fed, eng.cfg)
    data = eng.fed.data
    n_train = np.bincount(
        data.interactions["user"].to_numpy()[eng.fed.split.train],
        minlength=data.n_users,
    )
    seen = ~s["new"] & (eng.fed.client_of_user >= 0)
    assert np.array_equal(s["light"], seen & (n_train <= 8))
    assert np.array_equal(s["heavy"], seen & (n_train > 20))
    assert s["light"].any() and s["heavy"].any()
    assert set(eng.task.stat_shapes()) >= {"hist", "new.hist", "light.gauc"}


def _train_arrays(eng):
    rows = torch.as_tensor(eng.fed.rows["train"])
    return (
        eng.fed.users[rows].numpy(),
        eng.fed.items[rows].numpy(),
        eng.fed.labels[rows].double().numpy(),
    )


def test_user_prior_is_the_smoothed_click_rate():
    raw_model = {"dim": 4, "layers": [8, 4], "init_from": ""}
    eng = _engine(method={"name": "user-prior"}, model=raw_model)
    users, _, y = _train_arrays(eng)
    pbar = y.mean()
    u = 7 if (users == 7).any() else int(users[0])
    c, n = y[users == u].sum(), (users == u).sum()
    want = (c + 10 * pbar) / (n + 10)
    new_user = int(np.flatnonzero(eng.task.slices["new"])[0])
    p = torch.sigmoid(eng.model(torch.tensor([u, new_user]), torch.tensor([0, 1])))
    assert p.tolist() == pytest.approx([want, pbar], rel=1e-9)
    assert eng.partition.trainable == []


def test_logreg_equals_sklearn_on_the_same_features():
    raw_model = {"dim": 4, "layers": [8, 4], "init_from": ""}
    eng = _engine(method={"name": "logreg"}, model=raw_model)
    users, items, y = _train_arrays(eng)
    data = eng.fed.data
    pbar = y.mean()

    def rate(keys, n):
        c = np.bincount(keys, weights=y, minlength=n)
        k = np.bincount(keys, minlength=n)
        return logit((c + 10 * pbar) / (k + 10))

    cols = [rate(users, data.n_users)[users]]
    for f in data.item_features.T:
        cols.append(rate(f[items], int(f.max()) + 1)[f[items]])
    x = np.column_stack(cols)
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    got = torch.sigmoid(eng.model(torch.as_tensor(users), torch.as_tensor(items)))
    assert got.numpy() == pytest.approx(ref.predict_proba(x)[:, 1], abs=1e-9)
    assert expit(ref.intercept_[0]) > 0  # fitted, not a default


def test_the_global_level_is_one_adapter_shared_by_every_client():
    eng = _engine(
        method={"name": "fedpa", "group_attrs": ["all", "group"], "adapter_lr": 0.01},
        data={**RAW["data"], "users": {"clients": "all"}},
    )
    names = [n for n in eng.server if ".all." in n]
    assert names and all(eng.server[n].shape[0] == 1 for n in names)
    eng.run_round(0)
    received, _ = eng.client_params(torch.arange(eng.fed.n_clients))
    for n in names:
        assert torch.equal(received[n][0], received[n][-1])
