"""FELLRec's split over Flower: a generative config with ``backbone.split_k``
(issue 6, item 5)."""

from __future__ import annotations

import pytest

from fedrec.build import build_engine
from fedrec.config import config_from_raw

pytest.importorskip("flwr")
pytest.importorskip("transformers")

GEN = {"kind": "causal-lm", "max_len": 256, "max_new_tokens": 8, "split_k": 2}


@pytest.mark.slow
def test_split_config_on_flower_equals_the_embedded_engine(fellrec_raw):
    """3 clients on 2 nodes (node 0 serves two per message), 2 rounds: training
    steps and the ranking evaluation's decoding as messages."""
    from fedrec.flower.simulation import run_flower_simulation

    raw = fellrec_raw(GEN)
    flower = run_flower_simulation(config_from_raw(raw), num_nodes=2)
    eng = build_engine(config_from_raw(raw))
    embedded = [eng.run_round(r) for r in range(2)]
    for f, e in zip(flower, embedded, strict=True):
        for key in ("train_loss", "val_ndcg@10", "test_ndcg@10", "test_recall@10"):
            assert f[key] == pytest.approx(e[key], abs=1e-5), (f["round"], key)
        assert f["clients"] == 3 and f["failed_partitions"] == []
        assert f["split_hidden_bytes"] > 0  # training through the split
        assert f["split_eval_hidden_bytes"] > 0  # and decoding


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"split_k_per_client": [1, 2, 1]}, "split_k_per_client"),
        ({"ldp_epsilon": 5.0, "ldp_clip": 1.0}, "LDP"),
    ],
)
def test_what_the_flower_split_cannot_run_is_refused_by_name(
    fellrec_raw, change, named
):
    from fedrec.errors import ConfigError
    from fedrec.flower.split import sides, uses_split

    privacy = "ldp_epsilon" in change
    raw = fellrec_raw(GEN if privacy else {**GEN, **change})
    eng = build_engine(config_from_raw({**raw, "privacy": change} if privacy else raw))
    assert uses_split(eng)
    with pytest.raises(ConfigError, match=named):
        sides(eng)


def test_the_split_sides_hold_every_trainable_parameter_once(fellrec_raw):
    from fedrec.flower.split import sides

    eng = build_engine(config_from_raw(fellrec_raw(GEN)))
    s = sides(eng)
    assert set(s.node) | set(s.server) == set(eng.partition.uploaded)
    assert not set(s.node) & set(s.server)
    # 4 blocks, k = 2: the server holds blocks [2, 3), the node 0, 1 and 3
    assert s.server and all(".layers.2." in n for n in s.server)
    for block in (0, 1, 3):
        assert any(f".layers.{block}." in n for n in s.node)


def test_node_scratch_keeps_clients_and_kinds_apart_and_names_a_gap():
    import torch

    from fedrec.errors import FedrecError
    from fedrec.flower.split import params_of, put, scratch_of

    saved: dict = {}
    put(saved, 1, {"w": torch.ones(2)})
    put(saved, 1, {"w": torch.zeros(2)}, "grad:")
    put(saved, 12, {"w": torch.full((2,), 3.0)})
    assert params_of(saved, 1)["w"].tolist() == [1.0, 1.0]
    assert scratch_of(saved, 1, "grad:")["w"].tolist() == [0.0, 0.0]
    assert params_of(saved, 12)["w"].tolist() == [3.0, 3.0]  # not client 1's
    put(saved, 1, {}, "grad:")  # the head's backward used them
    assert set(saved) == {"1|p:w", "12|p:w"}
    with pytest.raises(FedrecError, match="no state of client 2"):
        params_of(saved, 2)


def test_optimise_carries_adam_state_like_torch_adam():
    """Two steps through ``optimise`` (state handed back and forth) = torch's Adam."""
    import torch
    from torch import nn

    from fedrec.flower.split import optimise

    ours = {"w": nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))}
    ref = nn.Parameter(ours["w"].detach().clone())
    adam = torch.optim.Adam([ref], lr=0.1)
    state: dict = {}
    for g in ([0.5, -1.0], [2.0, 0.25]):
        ours["w"].grad = torch.tensor(g, dtype=torch.float64)
        state = optimise(ours, state, 0.1)
        ref.grad = torch.tensor(g, dtype=torch.float64)
        adam.step()
        torch.testing.assert_close(ours["w"].detach(), ref.detach())
    assert ours["w"].grad is None and int(state["t"]) == 2
    assert set(state) == {"m:w", "v:w", "t"}


def test_decoding_a_token_per_message_pair_equals_kv_cached_greedy(fellrec_raw):
    """The nodes' decoding (no cache between messages: the prefix recomputed on
    both sides each token) gives the tokens of ``SplitModel.greedy`` with KV
    caches, under a client's adapters."""
    import torch

    from fedrec.flower.split import sides
    from fedrec.models.split import Message

    eng = build_engine(config_from_raw(fellrec_raw(GEN)))
    s = sides(eng)
    history = eng.task.fed.samples["test"].history[0]
    ids, _ = eng.model.encode(eng.model.prompt_texts([history]))
    want, _ = s.split.greedy(ids, torch.ones_like(ids), 6, kv_cache=True)
    out = ids
    for _ in range(6):
        up = Message.of(s.split.head_forward(out, torch.ones_like(out)).tensors())
        with torch.no_grad():
            down = Message.of(s.split.server(up).tensors(detach=True))
            nxt = s.split.client_tail(down)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
    assert torch.equal(out, want) and out.shape[1] == ids.shape[1] + 6
