"""Pre-training on open users: rows, no private influence, cache, KD, loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fedrec.pretrain
from fedrec.build import build_engine, load_data, load_pretrained
from fedrec.config import KDConfig, PretrainConfig, config_from_raw
from fedrec.data.splits import divide_open_private
from fedrec.errors import CheckpointError
from fedrec.models.ctr_mlp import CTRModel
from fedrec.pretrain import foundation, kd_loss, open_rows


def _cfg(cache_dir, init_from="pretrain", method=None, kd=None):
    pretrain = {"epochs": 2, "batch_size": 64, "lr": 0.01, "cache_dir": str(cache_dir)}
    if kd:
        pretrain["kd"] = kd
    return config_from_raw(
        {
            "data": {
                "options": {"n_users": 40, "n_items": 30},
                "users": {"clients": "private", "open_ratio": 0.3},
            },
            "model": {"dim": 4, "layers": [8, 4], "init_from": init_from},
            "train": {"rounds": 1, "batch_size": 16},
            "method": method or {"name": "fedavg"},
            "pretrain": pretrain,
        }
    )


def _open_users(cfg, data):
    u = cfg.data.users
    open_, private = divide_open_private(
        data, style=u.style, open_ratio=u.open_ratio, seed=u.seed
    )
    return open_, private


def _with_labels_flipped(data, users):
    df = data.interactions.copy()
    mask = df["user"].isin(users).to_numpy()
    df.loc[mask, "label"] = 1 - df.loc[mask, "label"]
    return dataclasses.replace(data, interactions=df), int(mask.sum())


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _equal_states(a, b):
    return set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


# --------------------------------------------------------------------- open_rows


def test_open_rows_are_open_users_with_their_latest_rows_held_out(tmp_path):
    cfg = _cfg(tmp_path)
    data = load_data(cfg)
    df = data.interactions
    user = df["user"].to_numpy()
    open_, private = _open_users(cfg, data)
    assert len(open_) == round(0.3 * 40) and len(open_) + len(private) == 40

    train, hold = open_rows(cfg, data)
    assert len(np.intersect1d(train, hold)) == 0
    # only open users, and every open user (each has >= 10 rows) on both sides
    assert set(user[train]) == set(open_.tolist())
    assert set(user[hold]) == set(open_.tolist())
    assert not np.isin(user[np.concatenate([train, hold])], private).any()

    # one open user by hand: newest floor(holdout·n) rows by (timestamp, row)
    u = int(open_[0])
    rows = np.flatnonzero(user == u)
    ts = df["timestamp"].to_numpy()[rows]
    by_time = rows[np.argsort(ts, kind="stable")]
    k = int(np.floor(cfg.pretrain.holdout * len(rows)))
    assert k >= 2
    np.testing.assert_array_equal(np.sort(hold[user[hold] == u]), np.sort(by_time[-k:]))
    np.testing.assert_array_equal(
        np.sort(train[user[train] == u]), np.sort(by_time[:-k])
    )
    # together: exactly the open users' rows
    open_all = np.flatnonzero(np.isin(user, open_))
    np.testing.assert_array_equal(np.sort(np.concatenate([train, hold])), open_all)


# ------------------------------------------------------------ no private data


def test_private_labels_do_not_shape_the_foundation_model(tmp_path):
    cfg = _cfg(tmp_path / "c1")
    data = load_data(cfg)
    open_, private = _open_users(cfg, data)
    base = _state(foundation(cfg, data))

    flipped, n = _with_labels_flipped(data, private)
    assert n > 0
    assert not data.interactions["label"].equals(flipped.interactions["label"])
    cfg2 = _cfg(tmp_path / "c2")
    other = _state(foundation(cfg2, flipped))
    assert _equal_states(base, other)

    # flipping one open user's labels does change it
    touched, n = _with_labels_flipped(data, open_[:1])
    assert n > 0
    cfg3 = _cfg(tmp_path / "c3")
    changed = _state(foundation(cfg3, touched))
    assert not _equal_states(base, changed)


def test_foundation_is_cached(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    data = load_data(cfg)
    path = foundation(cfg, data)
    assert path.exists() and path.parent == tmp_path
    stamp = path.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("fit called although the result is cached")

    monkeypatch.setattr(fedrec.pretrain, "fit", boom)
    assert foundation(cfg, data) == path
    assert path.stat().st_mtime_ns == stamp
    # a changed recipe is a different entry (and would train)
    other = _cfg(tmp_path)
    other.pretrain.epochs = 3
    with pytest.raises(AssertionError, match="fit called"):
        foundation(other, data)


# ---------------------------------------------------------------------- kd_loss


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _bce(p, y):
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


S = np.array([0.3, -1.2, 2.0, 0.0])
Y = np.array([1.0, 0.0, 1.0, 0.0])
T_ALL = np.array([5.0, -0.7, 1.5, 9.0, 0.4, -2.5])  # teacher logits of every row
ROWS = np.array([1, 4, 2, 5])  # this batch's rows


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_kd_loss_matches_the_formula(loss):
    lam, temp = 0.7, 2.0
    pc = PretrainConfig(kd=KDConfig(lam=lam, temperature=temp, loss=loss))
    fn = kd_loss(torch.as_tensor(T_ALL), pc)
    got = fn(torch.as_tensor(S), torch.as_tensor(Y), torch.as_tensor(ROWS)).item()
    t = T_ALL[ROWS]
    hard = _bce(_sig(S), Y)
    if loss == "bce":
        soft = _bce(_sig(S / temp), _sig(t / temp))
    else:
        soft = float(np.mean((S - t) ** 2))
    assert got == pytest.approx(hard + lam * soft, rel=1e-12, abs=1e-12)


def test_kd_loss_with_zero_lambda_is_plain_bce():
    pc = PretrainConfig(kd=KDConfig(lam=0.0))
    fn = kd_loss(torch.as_tensor(T_ALL), pc)
    got = fn(torch.as_tensor(S), torch.as_tensor(Y), torch.as_tensor(ROWS)).item()
    assert got == pytest.approx(_bce(_sig(S), Y), rel=1e-12)


# ------------------------------------------------------------- pretrain-kd e2e


def test_pretrain_kd_student_is_loaded_into_fedpa(tmp_path):
    kd = {"teacher_dim": 6, "teacher_layers": [12, 6]}
    method = {"name": "fedpa", "group_attrs": ["group"]}
    cfg = _cfg(tmp_path, init_from="pretrain-kd", method=method, kd=kd)
    data = load_data(cfg)
    eng = build_engine(cfg, data)
    path = foundation(cfg, data)  # cached by build_engine
    assert path.name.startswith("pretrain-kd-")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    rep = ckpt["report"]
    assert rep["mode"] == "pretrain-kd"
    assert rep["teacher"]["params"] > rep["model"]["params"]
    assert len(rep["teacher"]["curve"]) == len(rep["model"]["curve"]) == 2
    student = ckpt["model"]
    n_params = sum(
        t.numel() for n, t in student.items() if n not in ("user_x", "item_x")
    )
    assert rep["model"]["params"] == n_params
    assert student["mlp.0.weight"].shape == (8, (3 + 3) * 4)  # 6 fields · dim 4
    own = eng.model.state_dict()
    for name in ("mlp.0.weight", "mlp.1.bias", "head.weight", "item_emb.weight"):
        assert torch.equal(own[name], student[name]), name
    assert any(n.startswith("lora.") for n in own)  # the adapters are extra


# -------------------------------------------------------- load_pretrained errors


def _model_and_state(tmp_path):
    cfg = _cfg(tmp_path, init_from="")
    data = load_data(cfg)
    torch.manual_seed(0)
    src = CTRModel.for_data(data, 4, [8, 4])
    dst = CTRModel.for_data(data, 4, [8, 4])
    return dst, {n: t.clone() for n, t in src.state_dict().items()}


def test_load_pretrained_loads_a_good_checkpoint(tmp_path):
    model, state = _model_and_state(tmp_path)
    path = tmp_path / "good.pt"
    torch.save({"model": state}, path)
    load_pretrained(model, path)
    assert _equal_states(model.state_dict(), state)


def test_load_pretrained_wrong_shape_names_tensor_and_file(tmp_path):
    model, state = _model_and_state(tmp_path)
    state["mlp.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / "shape.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(model, path)
    assert "mlp.0.weight" in str(e.value) and str(path) in str(e.value)


def test_load_pretrained_garbage_names_file(tmp_path):
    model, _ = _model_and_state(tmp_path)
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 this is not a checkpoint \xff" * 10)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(model, path)
    assert str(path) in str(e.value)


def test_load_pretrained_missing_file(tmp_path):
    model, _ = _model_and_state(tmp_path)
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as e:
        load_pretrained(model, path)
    assert str(path) in str(e.value)


def test_load_pretrained_missing_base_tensor(tmp_path):
    model, state = _model_and_state(tmp_path)
    del state["head.bias"]
    path = tmp_path / "missing.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(model, path)
    assert "head.bias" in str(e.value) and str(path) in str(e.value)
