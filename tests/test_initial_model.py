"""eval.initial: the untrained model (round -1) is a model-selection candidate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedrec.config import config_from_raw
from fedrec.data.dataset import InteractionData
from fedrec.rundir import ROWS_FILE, per_client_selection, summarise
from fedrec.runs import run_experiment


def _entry(rnd: int, val: float, test: float, **extra: object) -> dict:
    trained = {
        "clients": 2,
        "upload_bytes_per_client": 10,
        "clients_per_s": 4.0,
    }
    return {
        "round": rnd,
        "val_ndcg@10": val,
        "test_ndcg@10": test,
        "round_s": 1.0,
        "peak_rss_mb": 5.0,
        **(trained if rnd >= 0 else {"initial": True}),
        **extra,
    }


def test_summarise_selects_the_untrained_model_unless_beaten():
    cfg = config_from_raw({"eval": {"select_metric": "ndcg@10", "initial": True}})
    hist = [_entry(-1, 0.5, 0.30), _entry(0, 0.4, 0.20), _entry(1, 0.5, 0.25)]
    s = summarise(hist, cfg)
    # round 1 ties round -1 on validation: the earliest wins
    assert (s["best_round"], s["test_ndcg@10"], s["rounds"]) == (-1, 0.30, 2)
    assert s["upload_bytes_per_round"] == 20  # trained rounds only: 10 B × 2
    assert s["clients_per_s"] == 4.0 and s["wall_s"] == 3.0  # wall: every entry
    hist.append(_entry(2, 0.6, 0.10))
    assert summarise(hist, cfg)["best_round"] == 2


def test_per_client_selection_can_keep_the_untrained_model():
    def entry(rnd, val, test):
        return {
            "round": rnd,
            "val_ndcg@10_clients": val,
            "test_ndcg@10_clients": test,
            "test_recall@10_clients": test,
            "test_users_clients": [1, 3],
        }

    hist = [entry(-1, [0.5, 0.1], [0.9, 0.2]), entry(0, [0.4, 0.3], [0.1, 0.6])]
    out = per_client_selection(hist, "ndcg@10")
    assert out["selected_rounds"] == [-1, 0]
    assert out["test_ndcg@10_per_client_selection"] == pytest.approx(
        (0.9 * 1 + 0.6 * 3) / 4
    )


def grouped_data() -> InteractionData:
    """32 users in 4 taste groups of 8 items whose titles name the group.

    Each user has 6 of its group's items; the untrained text encoder ranks
    the items whose titles share the history's words first (a good start).
    """
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "gold"]
    titles = [f"{w} {w}" for w in words for _ in range(8)]
    rows = []
    for u in range(32):
        items = (u % 4) * 8 + rng.permutation(8)[:6]
        rows += [(u, int(i), t) for t, i in enumerate(items)]
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    df["label"] = np.float32(1)
    return InteractionData(
        df, np.arange(32), np.arange(32), item_text=titles, source="grouped"
    )


def hurt_cfg(splits: list[str]):
    return config_from_raw(
        {
            "data": {"split": "leave_one_out", "clients": "random", "n_clients": 2},
            "backbone": {"kind": "text-encoder", "path": "tiny", "max_len": 48},
            "train": {
                "rounds": 2,
                "engine": "loop",
                "batch_size": 8,
                "lr": 5.0,  # huge: training only hurts
                "max_rows_per_client": 16,
            },
            "eval": {"select_metric": "ndcg@10", "initial": True, "splits": splits},
            "method": {"name": "fedavg"},
        }
    )


@pytest.mark.parametrize("splits", [["val"], ["val", "test"]])
def test_a_run_that_only_hurts_reports_the_untrained_model(tmp_path, splits):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from fedrec.build import build_engine

    cfg, data = hurt_cfg(splits), grouped_data()
    s = run_experiment(cfg, tmp_path / "r", False, data)
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    hist = [json.loads(x) for x in lines]
    assert [h["round"] for h in hist] == [-1, 0, 1] and hist[0]["initial"]
    first = hist[0]["val_ndcg@10"]
    assert all(h["val_ndcg@10"] < first for h in hist[1:]), "training did not hurt"
    assert s["best_round"] == -1 and s["rounds"] == 2
    fresh = build_engine(cfg, data)  # the untrained model, tested directly
    want = fresh.evaluate("test")
    for k in ("ndcg@10", "recall@10", "ndcg@10_clients"):
        assert s[f"test_{k}"] == pytest.approx(want[k], abs=1e-12), k
    with np.load(tmp_path / "r" / ROWS_FILE) as f:
        assert int(f["round"]) == -1
        np.testing.assert_allclose(
            f["ndcg@10"], fresh.last_rows["test"]["ndcg@10"], atol=1e-12
        )
