"""The text-features backbone: frozen item text features → a learnt sequence tower."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.errors import ConfigError
from fedrec.fl.seq import FeatureSeqRecTask
from fedrec.models.text_features import FeatureSeqRecommender

pytest.importorskip("transformers")

from test_fellrec_pipeline import RAW  # noqa: E402  (the tiny text-encoder run)

FEATURES = {
    **RAW,
    "backbone": {"kind": "text-features", "path": "tiny", "tower_dim": 8},
}


def tiny_tower(n_items: int = 5, window: int = 4) -> FeatureSeqRecommender:
    torch.manual_seed(0)
    return FeatureSeqRecommender(
        torch.randn(n_items, 6), dim=8, layers=1, heads=2, window=window
    )


def test_padding_is_masked_out_and_the_newest_item_is_read():
    model = tiny_tower()
    hist = model.history_tensor([np.array([1, 3]), np.array([0, 1, 2, 3, 4])])
    # left-padded to L = 4 with -1; a longer history keeps its newest 4
    assert hist.tolist() == [[-1, -1, 1, 3], [1, 2, 3, 4]]
    e, g = model(hist)
    # independently: the block over the two real positions alone, their
    # positions being the last two of the window
    g_ref = model.features @ model.proj.weight.T + model.proj.bias
    x = (g_ref[[1, 3]] + model.pos[-2:]).unsqueeze(0)
    ref = model.norm(model.blocks[0](x)[0, -1])
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(e[0], ref, rtol=1e-5, atol=1e-6)
    assert model.features.requires_grad is False
    assert "features" not in dict(model.named_parameters())


def test_loss_is_the_history_masked_cross_entropy_of_dot_scores():
    from fedrec.data.sequences import Samples

    model = tiny_tower()
    train = Samples(
        user=np.array([0, 0]),
        history=[np.array([0, 3]), np.array([0, 2, 4])],
        targets=[np.array([1]), np.array([0])],
        seen=[np.array([0, 3]), np.array([0, 2, 4])],
    )
    task = FeatureSeqRecTask(model, SimpleNamespace(samples={"train": train}))
    params = {n: p.detach() for n, p in model.named_parameters()}
    got = task.loss(params, torch.tensor([0, 1]), torch.ones(2))
    e, g = model(model.history_tensor(train.history))
    z = e @ g.T  # (2, 5)
    # row 0: seen {0, 3} hidden, target 1; row 1: seen {2, 4} hidden, target 0 kept
    l0 = -z[0, 1] + torch.logsumexp(z[0, [1, 2, 4]], 0)
    l1 = -z[1, 0] + torch.logsumexp(z[1, [0, 1, 3]], 0)
    torch.testing.assert_close(got, (l0 + l1) / 2)
    scores = task.scores(params, train.history)
    torch.testing.assert_close(scores, z.detach())
    assert F.cross_entropy(z, torch.tensor([1, 0])) > got  # masking removes mass


def test_the_tower_trains_federated_and_learns():
    cfg = config_from_raw(
        {
            **FEATURES,
            "method": {"name": "fedavg"},
            "train": {
                **RAW["train"],
                "rounds": 3,
                "max_rows_per_client": 0,
                "lr": 0.01,
            },
        }
    )
    eng = build_engine(cfg)
    trainable = set(eng.partition.trainable)
    assert "features" not in trainable and "proj.weight" in trainable
    assert set(eng.partition.uploaded) == trainable  # FedAvg shares it all
    losses = [eng.run_round(r)["train_loss"] for r in range(3)]
    assert losses[2] < losses[0]  # the masked CE falls as the tower learns
    received, _ = eng.client_params(torch.arange(3))
    w = received["proj.weight"]
    assert torch.equal(w[0], w[2])  # one broadcast model


def test_fellrec_personalises_the_tower():
    eng = build_engine(config_from_raw(FEATURES))
    eng.run_round(0)
    w = eng.server["proj.weight"]
    assert w.shape[0] == 3 and not torch.equal(w[0], w[1])
    assert eng.history[0]["fellrec_s_max"] <= 1.0


def test_text_features_refuse_the_split():
    raw = {**FEATURES, "backbone": {**FEATURES["backbone"], "split_k": 1}}
    with pytest.raises(ConfigError, match="split_k.*text-features"):
        config_from_raw(raw)
