"""The update guard: non-finite and too-large client updates are left out."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.fl.guards import accept_updates

NAN, INF = math.nan, math.inf


def _received(C: int) -> dict[str, torch.Tensor]:
    return {
        "w": torch.tensor([1.0, 1.0]).expand(C, 2),
        "b": torch.tensor([0.5]).expand(C, 1),
    }


def test_nan_upload_rejected():
    rec = _received(3)
    uploads = {
        "w": torch.tensor([[1.0, 2.0], [NAN, 1.0], [0.0, 0.0]]),
        "b": torch.tensor([[0.5], [0.5], [0.5]]),
    }
    ok, reasons = accept_updates(uploads, rec, {})
    assert ok.tolist() == [True, False, True]
    assert len(reasons) == 1 and "non-finite" in reasons[0]


def test_inf_in_private_tensor_rejected():
    rec = _received(3)
    uploads = {"w": torch.ones(3, 2), "b": torch.full((3, 1), 0.5)}
    private = {
        "emb": torch.tensor([[[0.0, 1.0]], [[2.0, 3.0]], [[-INF, 0.0]]]),
    }
    ok, reasons = accept_updates(uploads, rec, private)
    assert ok.tolist() == [True, True, False]
    assert len(reasons) == 1 and "non-finite" in reasons[0]


def test_private_only_clients():
    """``local``: nothing uploaded, private tensors still checked."""
    private = {"emb": torch.tensor([[0.0, NAN], [1.0, 2.0]])}
    ok, reasons = accept_updates({}, {}, private)
    assert ok.tolist() == [False, True]
    assert len(reasons) == 1


def test_large_finite_private_values_are_finite():
    """A sum that overflows float32 is done in float64: still accepted."""
    big = torch.full((1, 4), 3.0e38)
    ok, _ = accept_updates({}, {}, {"p": big})
    assert ok.tolist() == [True]


def _norm_case() -> tuple[dict, dict]:
    # client 0: Δw = [3, 4], Δb = [0]       -> ||Δ|| = 5
    # client 1: Δw = [0, 0], Δb = [0]       -> 0
    # client 2: Δw = [1, 2], Δb = [2]       -> sqrt(1 + 4 + 4) = 3
    # client 3: Δw = [6, 0], Δb = [-8]      -> 10
    rec = _received(4)
    uploads = {
        "w": torch.tensor([[4.0, 5.0], [1.0, 1.0], [2.0, 3.0], [7.0, 1.0]]),
        "b": torch.tensor([[0.5], [0.5], [2.5], [-7.5]]),
    }
    return uploads, rec


def test_norm_bound_inclusive():
    uploads, rec = _norm_case()
    ok, reasons = accept_updates(uploads, rec, {}, max_norm=5.0)
    assert ok.tolist() == [True, True, True, False]
    assert len(reasons) == 1
    assert "10" in reasons[0] and "5" in reasons[0]


def test_norm_bound_rejects_just_above():
    uploads, rec = _norm_case()
    ok, reasons = accept_updates(uploads, rec, {}, max_norm=4.9)
    assert ok.tolist() == [False, True, True, False]
    assert len(reasons) == 2
    assert "update norm 5 > 4.9" in reasons[0]
    assert "update norm 10 > 4.9" in reasons[1]


def test_norm_bound_zero_disables():
    uploads, rec = _norm_case()
    ok, reasons = accept_updates(uploads, rec, {}, max_norm=0.0)
    assert ok.tolist() == [True, True, True, True]
    assert reasons == []
    uploads["w"][3, 0] = 1e30  # huge but finite
    ok, _ = accept_updates(uploads, rec, {}, max_norm=0.0)
    assert ok.all()


def test_no_tensors():
    ok, reasons = accept_updates({}, {}, {})
    assert ok.shape == (0,) and reasons == []


# ------------------------------------------------------------------ engine


def _engine(**guard):
    cfg = config_from_raw(
        {
            "data": {"options": {"n_users": 20, "n_items": 30, "seed": 2}},
            "model": {"dim": 4, "layers": [8, 4]},
            "train": {"rounds": 1, "batch_size": 16, "lr": 0.05},
            "method": {"name": "fedavg"},
            "guard": guard,
        }
    )
    return build_engine(cfg)


def _poison(eng, client: int) -> None:
    """Make ``client``'s loss NaN on every batch it trains (vmap-safe)."""
    bad_rows = torch.zeros(len(eng.fed.labels), dtype=torch.bool)
    bad_rows[torch.as_tensor(eng.fed.client_rows("train", client))] = True
    orig = eng.task.loss

    def loss(params, rows, mask):
        # padding slots may hold any row id: only real (mask = 1) rows count
        hit = (bad_rows[rows] & (mask > 0)).any()
        base = orig(params, rows, mask)
        return base * torch.where(hit, torch.tensor(NAN), torch.tensor(1.0))

    eng.task.loss = loss


def _capture_uploads(eng) -> dict:
    seen: dict = {}
    orig = eng.strategy.aggregate

    def aggregate(server, uploads, partition, ctx):
        seen["uploads"] = {n: t.clone() for n, t in uploads.items()}
        seen["clients"] = ctx.clients.clone()
        return orig(server, uploads, partition, ctx)

    eng.strategy.aggregate = aggregate
    return seen


def test_engine_rejects_nan_client_and_averages_the_rest(caplog):
    clean = _engine()
    seen = _capture_uploads(clean)
    clean.train_round(0)
    n = clean.fed.n_clients
    assert seen["clients"].tolist() == list(range(n))  # everyone sampled

    eng = _engine()
    before = {k: t.clone() for k, t in eng.server.items()}
    target = 3
    assert len(eng.fed.client_rows("train", target)) > 0
    _poison(eng, target)
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        m = eng.train_round(0)

    assert m["rejected"] == 1
    assert m["clients"] == n
    assert math.isfinite(m["train_loss"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"client {target}" in w and "non-finite" in w for w in warnings)

    for name, t in eng.server.items():
        assert torch.isfinite(t).all(), name
    assert any(not torch.equal(before[k], eng.server[k]) for k in before)

    # the server is the row-weighted mean of the other clients' uploads, which
    # are those of the clean run (a client's training ignores the others)
    others = [c for c in range(n) if c != target]
    sizes = [len(eng.fed.client_rows("train", c)) for c in others]
    for name, up in seen["uploads"].items():
        expected = sum(s * up[c].double() for s, c in zip(sizes, others, strict=True))
        expected = (expected / sum(sizes)).to(up.dtype)
        torch.testing.assert_close(eng.server[name], expected, rtol=1e-5, atol=1e-6)
    # ... and not the mean over everyone
    name = next(iter(seen["uploads"]))
    assert not torch.equal(eng.server[name], clean.server[name])


def test_engine_norm_bound_rejects_everyone_and_keeps_server():
    eng = _engine(max_update_norm=1e-12)
    before = {k: t.clone() for k, t in eng.server.items()}
    m = eng.train_round(0)
    assert m["rejected"] == m["clients"] == eng.fed.n_clients
    for k in before:
        assert torch.equal(before[k], eng.server[k])


# ------------------------------------------------- empty clients, NaN losses


def _empty_train(fed, client: int) -> None:
    """Take every training row away from ``client`` (CSR: drop its slice)."""
    ptr, rows = fed.ptr["train"], fed.rows["train"]
    a, b = ptr[client], ptr[client + 1]
    fed.rows["train"] = np.concatenate([rows[:a], rows[b:]])
    fed.ptr["train"] = np.concatenate([ptr[: client + 1], ptr[client + 1 :] - (b - a)])
    assert len(fed.client_rows("train", client)) == 0


def _fellrec_engine():
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    data = {"options": {"n_users": 40, "n_items": 30, "seed": 4}}
    data |= {"split": "global_temporal", "clients": "random", "n_clients": 3}
    raw = {
        "data": data,
        "backbone": {"kind": "text-encoder", "path": "tiny", "max_len": 48},
        "train": {"rounds": 1, "engine": "loop", "batch_size": 8, "lr": 0.05},
        "eval": {"select_metric": "ndcg@10", "max_samples": 4},
        "method": {"name": "fellrec"},
    }
    raw["train"]["max_rows_per_client"] = 16
    return build_engine(config_from_raw(raw))


@pytest.mark.parametrize("method", ["fedavg", "fellrec"])
def test_a_client_without_training_rows_is_never_sampled(method):
    eng = _engine() if method == "fedavg" else _fellrec_engine()
    _empty_train(eng.fed, 1)
    for r in range(3):
        assert 1 not in eng.sample(r).tolist()
    m = eng.run_round(0)
    assert m["rejected"] == 0 and m["clients"] == eng.fed.n_clients - 1
    assert math.isfinite(m["train_loss"])
    for name, t in eng.server.items():
        assert torch.isfinite(t).all(), name


def test_a_nan_loss_rejects_the_client_in_fellrec(caplog):
    """FELLRec reads the losses (curriculum softmax): one NaN would spread to all."""
    eng = _fellrec_engine()
    orig = eng.task.loss
    bad = torch.zeros(len(eng.fed.samples["train"]), dtype=torch.bool)
    bad[torch.as_tensor(eng.fed.client_rows("train", 2))] = True

    def loss(params, rows, mask, state=None):
        base = orig(params, rows, mask, state)
        return base + torch.where(bad[rows].any(), NAN, 0.0) * 0.0  # NaN, no grad

    eng.task.loss = loss
    before = {k: t.clone() for k, t in eng.server.items()}
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        m = eng.train_round(0)
    assert m["rejected"] == 1
    assert any(
        "client 2" in r.getMessage() and "loss" in r.getMessage()
        for r in caplog.records
    )
    for name, t in eng.server.items():
        assert torch.isfinite(t).all(), name
    assert any(not torch.equal(before[k], eng.server[k]) for k in before)


def test_accept_updates_rejects_a_non_finite_loss():
    up = {"w": torch.zeros(3, 2)}
    ok, reasons = accept_updates(up, up, {}, losses=torch.tensor([0.5, NAN, 0.1]))
    assert ok.tolist() == [True, False, True]
    assert reasons == ["non-finite loss nan"]
