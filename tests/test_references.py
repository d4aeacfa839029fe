"""Popularity and item-kNN reference rows, by hand and inside a table."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fedrec.config import config_from_raw
from fedrec.data.dataset import InteractionData
from fedrec.data.splits import leave_one_out_split
from fedrec.references import history_counts, item_cosine, item_popularity
from fedrec.rundir import ROWS_FILE
from fedrec.runs import run_experiment

# Three users, six items; in time order (leave-one-out: last = test, the one
# before = validation, the rest train):
#   user 0: 0 4 | 5 | 2      user 1: 0 1 2 | 3 | 4      user 2: 1 3 | 0 | 4
SEQS = {0: [0, 4, 5, 2], 1: [0, 1, 2, 3, 4], 2: [1, 3, 0, 4]}
R2 = 1 / math.sqrt(2)


def hand_data() -> InteractionData:
    rows = [(u, i, t) for u, items in SEQS.items() for t, i in enumerate(items)]
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    df["label"] = np.float32(1)
    return InteractionData(df, np.arange(3), np.arange(6), source="hand")


def hand_cfg(method: str, clients: str = "user", **eval_: object):
    return config_from_raw(
        {
            "data": {
                "split": "leave_one_out",
                "min_interactions": 3,
                "clients": clients,
                "n_clients": 2,
            },
            "backbone": {"kind": "text-encoder", "path": "tiny"},
            "eval": {"select_metric": "ndcg@10", **eval_},
            "method": {"name": method},
        }
    )


def test_popularity_and_cosine_by_hand():
    data = hand_data()
    split = leave_one_out_split(data, 3)
    # train: user 0 {0, 4}, user 1 {0, 1, 2}, user 2 {1, 3}
    np.testing.assert_array_equal(item_popularity(data, split), [2, 2, 1, 1, 1, 0])
    sim = item_cosine(data, split)
    # users per item: 0 {u0, u1}, 1 {u1, u2}, 2 {u1}, 3 {u2}, 4 {u0}, 5 {}
    want = np.array(
        [
            [1, 1 / 2, R2, 0, R2, 0],
            [1 / 2, 1, R2, R2, 0, 0],
            [R2, R2, 1, 0, 0, 0],
            [0, R2, 0, 1, 0, 0],
            [R2, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 0],  # no train user: similar to nothing
        ]
    )
    np.testing.assert_allclose(sim, want, atol=1e-12)


def test_item_knn_sums_over_the_last_ten_history_items():
    # 12 items: the first two (1, 2) fall out of the window; 7 counts twice
    h = np.array([1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 0, 3])
    got = history_counts([h], 10)
    np.testing.assert_array_equal(got[0], [1, 0, 0, 2, 1, 1, 1, 2, 1, 1])


@pytest.mark.parametrize(
    ("method", "val_ranks", "test_ranks"),
    [
        # popularity n = (2, 2, 1, 1, 1, 0), seen items masked, ties by lower id:
        #   val  u0 seen {0,4}: 1 2 3 5 -> 5 at 4; u1 seen {0,1,2}: 3 4 5 -> 3 at 1;
        #        u2 seen {1,3}: 0 2 4 5 -> 0 at 1
        #   test u0 seen {0,4,5}: 1 2 3 -> 2 at 2 (unmasked, 0 would lead: rank 3);
        #        u1: 4 5 -> 4 at 1; u2 seen {0,1,3}: 2 4 5 -> 4 at 2
        ("popularity", [4, 1, 1], [2, 1, 2]),
        # item-kNN s_j = Σ_{i in history} sim(i, j):
        #   val  u0 h (0,4): s1 = 1/2, s2 = R2, s3 = 0, s5 = 0 -> 2 1 3 5, 5 at 4;
        #        u1 h (0,1,2): s3 = R2, s4 = R2 (tie: 3 first), s5 = 0 -> 3 at 1;
        #        u2 h (1,3): s0 = 1/2, s2 = R2, s4 = 0, s5 = 0 -> 2 0 4 5, 0 at 2
        #   test u0 h (0,4,5): s1 = 1/2, s2 = R2, s3 = 0 -> 2 at 1;
        #        u1 h (0,1,2,3): s4 = R2, s5 = 0 -> 4 at 1;
        #        u2 h (1,3,0): s2 = 2·R2, s4 = R2, s5 = 0 -> 4 at 2
        ("item-knn", [4, 1, 2], [1, 1, 2]),
    ],
)
def test_reference_run_by_hand(tmp_path, monkeypatch, method, val_ranks, test_ranks):
    # Prepare: no backbone may be loaded
    from fedrec.models import causal_lm, text_encoder, text_features

    def refuse(*a, **k):
        raise AssertionError("a reference loaded a backbone")

    monkeypatch.setattr(text_encoder, "load_encoder", refuse)
    monkeypatch.setattr(text_features, "load_encoder", refuse)  # its own binding
    monkeypatch.setattr(causal_lm, "load_causal_lm", refuse)
    # Execute
    summary = run_experiment(hand_cfg(method), tmp_path / "r", False, hand_data())
    # Assert: one target per sample, so NDCG@10 = 1/log2(rank + 1), MRR = 1/rank
    ndcg = [1 / math.log2(r + 1) for r in test_ranks]
    assert summary["best_round"] == 0 and summary["rounds"] == 1
    assert summary["test_users"] == 3 and summary["best_val_users"] == 3
    assert summary["test_ndcg@10"] == pytest.approx(np.mean(ndcg), abs=1e-12)
    assert summary["test_ndcg@10_clients"] == pytest.approx(ndcg, abs=1e-12)
    assert summary["test_mrr@5"] == pytest.approx(
        np.mean([1 / r for r in test_ranks]), abs=1e-12
    )
    val_ndcg = np.mean([1 / math.log2(r + 1) for r in val_ranks])
    assert summary["best_val_ndcg@10"] == pytest.approx(val_ndcg, abs=1e-12)
    assert (
        summary["commit"]
        == json.loads((tmp_path / "r/summary.json").read_text())["commit"]
    )
    with np.load(tmp_path / "r" / ROWS_FILE) as f:
        assert int(f["round"]) == 0
        np.testing.assert_array_equal(f["user"], [0, 1, 2])
        np.testing.assert_array_equal(f["client"], [0, 1, 2])  # one group a user
        np.testing.assert_allclose(f["ndcg@10"], ndcg, atol=1e-12)
    (line,) = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["round"] == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["method"] == {
        "name": method
    }


def test_reference_validation_uses_the_models_capped_rows(tmp_path):
    """eval.max_samples caps validation per user group exactly as for a model."""
    from fedrec.build import make_split, seq_fed_data
    from fedrec.fl.seq import SeqRecTask

    cfg = hand_cfg("popularity", "random", max_samples=1)  # ≤ 1 user per group
    data = hand_data()
    s = run_experiment(cfg, tmp_path / "r", False, data)
    fed = seq_fed_data(cfg, data, make_split(data, cfg), "random")
    task = SeqRecTask(None, fed, max_eval_samples=1, seed=0)  # type: ignore[arg-type]
    rows = np.concatenate([task.eval_rows("val", c) for c in range(fed.n_clients)])
    assert s["best_val_users"] == len(rows) == len(np.unique(fed.group_of_user))
    assert s["test_users"] == 3  # test: every user


def test_reference_refuses_an_engine():
    from fedrec.build import build_engine
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="reference rankings without training"):
        build_engine(hand_cfg("item-knn"), hand_data())
    ctr = config_from_raw({"method": {"name": "popularity"}})  # no item ranking
    with pytest.raises(ConfigError, match="needs a top-K backbone"):
        run_experiment(ctr, None, False, hand_data())


TINY = {
    "data": {
        "kind": "synthetic",
        "options": {"n_users": 40, "n_items": 30, "seed": 4},
        "split": "leave_one_out",
        "clients": "random",
        "n_clients": 3,
    },
    "backbone": {"kind": "text-encoder", "path": "tiny", "max_len": 48},
    "train": {
        "rounds": 1,
        "engine": "loop",
        "batch_size": 8,
        "lr": 0.05,
        "max_rows_per_client": 16,
    },
    "eval": {"select_metric": "ndcg@10", "max_samples": 8, "splits": ["val"]},
    "method": {"name": "fedavg"},
    "variants": {
        "popularity": {"method": {"name": "popularity"}},
        "item-knn": {"method": {"name": "item-knn"}},
        "fedavg": {},
    },
}


def test_table_has_reference_rows_with_intervals(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from fedrec import intervals, tables

    # Execute: what `fedrec table` does
    rows = tables.run_all(tables.variants(config_from_raw(TINY)), 1, tmp_path, False)
    got = intervals.paired_intervals(rows, "fedavg", b=50)
    text = tables.write_table(rows, tmp_path, "header", intervals=got)
    # Assert: one row each, in the backbone's block, with their run directories
    by = {r["method"]: r for r in rows}
    assert list(by) == ["popularity", "item-knn", "fedavg"]
    summaries = {}
    for m, r in by.items():
        assert r["backbone"] == "text-encoder:tiny"
        d = tmp_path / "runs" / "text-encoder" / f"{m}-s0"
        assert {"config.json", "summary.json", ROWS_FILE} <= {
            p.name for p in d.iterdir()
        }
        summaries[m] = json.loads((d / "summary.json").read_text())
    metric_keys = {
        m: {
            k
            for k in s
            if k.startswith(("test_", "best_val_")) and not k.endswith("_s")
        }
        for m, s in summaries.items()
    }
    assert metric_keys["popularity"] == metric_keys["fedavg"]  # same metrics
    assert metric_keys["item-knn"] == metric_keys["fedavg"]
    assert "test_ndcg@10_clients" in metric_keys["fedavg"]
    assert summaries["popularity"]["best_round"] == 0
    # every run tests every user: Δ is the difference of the table's columns
    for m in ("popularity", "item-knn"):
        (iv,) = [
            x for x in got.rows if (x["method"], x["metric"]) == (m, "test_ndcg@10")
        ]
        point = by[m]["test_ndcg@10"] - by["fedavg"]["test_ndcg@10"]
        assert iv["diff"] == pytest.approx(point, abs=1e-12)
        assert iv["lo"] <= iv["diff"] <= iv["hi"] and iv["n_users"] == 40
        assert f"| text-encoder:tiny | {m} | 1 |" in text
        assert got.cell("text-encoder:tiny", m, "test_ndcg@10") in text


def test_fedrec_table_with_reference_variants_only(tmp_path):
    """`fedrec table` scores references without a backbone; the header says so."""
    from fedrec.cli import main

    cfg = tmp_path / "refs.toml"
    cfg.write_text(
        """
[data]
kind = "synthetic"
options = { n_users = 40, n_items = 30, seed = 4 }
split = "leave_one_out"
clients = "random"
n_clients = 3

[backbone]
kind = "text-encoder"
path = "tiny"

[eval]
select_metric = "ndcg@10"
initial = true

[variants.popularity]
method = { name = "popularity" }

[variants.item-knn]
method = { name = "item-knn" }
"""
    )
    out = tmp_path / "t"
    assert main(["table", str(cfg), "--out", str(out), "--quiet", "--seeds", "2"]) == 0
    md = (out / "table.md").read_text()
    assert "Test users per run: 40." in md
    assert "Reference rows popularity, item-knn" in md
    assert "(the untrained model, round -1, included)" in md
    assert "| text-encoder:tiny | item-knn | 2 |" in md
    assert "Δtest_ndcg@10 vs popularity [95% CI]" in md  # the first variant
    assert (out / "test_ndcg@10_per_client.png").exists()
