"""FELLRec's split over Flower equals the split in one process (issue 6, item 5)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("peft")

TITLES = tuple(f"Movie {w} ({1990 + i})" for i, w in enumerate("abcdefghijkl"))


@pytest.mark.slow
def test_split_training_over_flower_equals_in_process():
    from fedrec.flower.split import SplitSpec, run_split_simulation, train_in_process

    spec = SplitSpec(titles=TITLES, k=2, steps=3, batch=2, lr=0.1)
    ref = train_in_process(spec, n_clients=2)
    got = run_split_simulation(spec, n_clients=2)

    assert len(got["losses"]) == 3
    for g, r in zip(got["losses"], ref["losses"], strict=True):  # [step][client]
        assert g == pytest.approx(r, abs=1e-10)
    assert ref["losses"][2][0] < ref["losses"][0][0]  # it trains
    for c in range(2):  # each client's server-side adapters, after every step
        assert set(got["server"][c]) == set(ref["server"][c]) and ref["server"][c]
        for n, t in ref["server"][c].items():
            torch.testing.assert_close(got["server"][c][n], t, rtol=0, atol=1e-10)
    # only hidden states (with mask and positions) and gradients reached the server
    assert got["received"] == {
        "split_head": ["attention_mask", "position_ids", "tensor"],
        "split_tail": ["tensor"],
        "split_back": [],
    }
    assert got["wire_bytes"] > 0
