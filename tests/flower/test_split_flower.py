"""FELLRec's split over Flower equals the split in one process (issue 6, item 5)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("peft")

TITLES = tuple(f"Movie {w} ({1990 + i})" for i, w in enumerate("abcdefghijkl"))


def test_balance_is_fellrec_mixing_of_whole_thetas():
    """Two clients, hand-computed: s = (cos + 1)/2, w = tanh(α / softmax(l/τ)^(1/β))."""
    from fedrec.flower.split import balance

    a = {"x": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    b = {"x": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    out = balance([a, b], [1.0, 1.0], rnd=0)
    s = 0.5  # cos = 0
    w = torch.tanh(torch.tensor(0.7 / 0.5**0.2, dtype=torch.float64))  # equal losses
    mix_a = (a["x"] + w * s * b["x"]) / (1 + w * s)
    torch.testing.assert_close(out[0]["x"], mix_a)
    torch.testing.assert_close(out[1]["x"], mix_a.flip(0))


def test_optimise_carries_adam_state_like_torch_adam():
    """Two steps through ``optimise`` (state handed back and forth) = torch's Adam."""
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


def test_node_side_greedy_steps_equal_kv_cached_greedy():
    """Decoding a token per message pair (no cache, prefix recomputed) gives
    the tokens of ``SplitModel.greedy`` with KV caches on both sides."""
    from fedrec.flower.split import SplitParty, SplitSpec

    party = SplitParty(SplitSpec(titles=TITLES, k=2))
    ids, target = party.gen_prompt(1)
    assert target in TITLES and ids.shape[0] == 1
    out, logp = ids, 0.0
    for _ in range(4):
        up = party.split.head_forward(out, torch.ones_like(out))
        with torch.no_grad():
            out, lp = party.gen_step(party.split.server(up), out)
        logp += lp
    want, _ = party.split.greedy(ids, torch.ones_like(ids), 4, kv_cache=True)
    assert torch.equal(out, want) and logp < 0


@pytest.mark.slow
def test_split_rounds_over_flower_equal_in_process():
    from fedrec.flower.split import SplitSpec, run_split_simulation, train_in_process

    spec = SplitSpec(
        titles=TITLES, k=2, steps=2, rounds=2, batch=2, lr=0.02, gen_tokens=3
    )
    ref = train_in_process(spec, n_clients=2)
    got = run_split_simulation(spec, n_clients=2)

    assert len(got["losses"]) == 4  # [round · steps + step][client]
    for g, r in zip(got["losses"], ref["losses"], strict=True):
        assert g == pytest.approx(r, abs=1e-10)
    assert ref["losses"][3][0] < ref["losses"][0][0]  # it trains
    for c in range(2):  # each client's server-side adapters, after the balance
        assert set(got["server"][c]) == set(ref["server"][c]) and ref["server"][c]
        for n, t in ref["server"][c].items():
            torch.testing.assert_close(got["server"][c][n], t, rtol=0, atol=1e-10)
    # hidden states (with mask and positions), gradients, and once a round the
    # node-side adapters for the balance: never token ids, labels or logits
    lora = sorted(got["client_params"])
    assert lora and all("lora_" in n for n in lora)
    hidden = ["attention_mask", "position_ids", "tensor"]
    assert got["received"] == {
        "train.split_head": hidden,
        "train.split_tail": ["tensor"],
        "train.split_back": [],
        "train.split_upload": lora,
        "train.split_load": [],
        "evaluate.split_head": hidden,
        "evaluate.split_tail": [],  # the held-out loss comes as a metric
        "evaluate.split_gen_head": hidden,
        "evaluate.split_gen_tail": [],  # tokens stay on the node
    }
    # evaluation through the split: each client's held-out loss, final model
    assert len(ref["eval_losses"]) == 2
    assert got["eval_losses"] == pytest.approx(ref["eval_losses"], abs=1e-10)
    # greedy decoding through the split: the node reports only logp and hit
    assert len(ref["generated"]) == 2 and len(ref["generated"][0]["tokens"]) == 3
    for g, r in zip(got["generated"], ref["generated"], strict=True):
        assert g["logp"] == pytest.approx(r["logp"], abs=1e-10) and r["logp"] < 0
        assert g["hit"] == r["hit"]
    assert got["wire_bytes"] > 0
