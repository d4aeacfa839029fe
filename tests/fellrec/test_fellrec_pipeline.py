"""FELLRec's data protocol, adapter swapping and per-client personalisation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.data.dataset import InteractionData
from fedrec.data.sequences import build_samples
from fedrec.data.splits import Split

pytest.importorskip("transformers")
pytest.importorskip("peft")


def test_samples_follow_the_reference_protocol():
    # user 0: train a0..a4 (items 0..4), val v0 v1 (5, 6), test t0 t1 (7, 8)
    items = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    df = pd.DataFrame({"user": 0, "item": items, "timestamp": range(9), "label": 1.0})
    data = InteractionData(df, np.array(["u"]), np.arange(9))
    split = Split(np.arange(5), np.array([5, 6]), np.array([7, 8]), 0, "toy")
    s = build_samples(data, split, window=2)
    # train targets at positions [min(2, 4), 5) = 2, 3, 4 with the 2 items before
    assert [h.tolist() for h in s["train"].history] == [[0, 1], [1, 2], [2, 3]]
    assert [t.tolist() for t in s["train"].targets] == [[2], [3], [4]]
    # every valid item is a target; history = last 2 of train + earlier valid
    assert [h.tolist() for h in s["val"].history] == [[3, 4], [4, 5]]
    assert [t.tolist() for t in s["val"].targets] == [[5], [6]]
    # one test sample, multi-item targets, history from train + valid; seen = all 7
    assert s["test"].history[0].tolist() == [5, 6]
    assert s["test"].targets[0].tolist() == [7, 8]
    assert s["test"].seen[0].tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_leave_one_out_samples_one_validation_and_one_test_per_user():
    from fedrec.data.splits import leave_one_out_split

    # user 0: 0 1 2 3 4; user 1: 5 6 7; user 2: 8 9 (too few: dropped)
    seqs = {0: [0, 1, 2, 3, 4], 1: [5, 6, 7], 2: [8, 9]}
    rows = [(u, i, t) for u, items in seqs.items() for t, i in enumerate(items)]
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    df["label"] = 1.0
    data = InteractionData(df, np.arange(3), np.arange(10))
    split = leave_one_out_split(data, min_interactions=3)
    assert split.dropped_users == 1
    s = build_samples(data, split, window=2)
    # validation: the second-to-last item; history = the last 2 train items
    assert s["val"].user.tolist() == [0, 1]
    assert [t.tolist() for t in s["val"].targets] == [[3], [6]]
    assert [h.tolist() for h in s["val"].history] == [[1, 2], [5]]
    assert [x.tolist() for x in s["val"].seen] == [[0, 1, 2], [5]]
    # test: the last item; history = the last 2 of train + validation
    assert s["test"].user.tolist() == [0, 1]
    assert [t.tolist() for t in s["test"].targets] == [[4], [7]]
    assert [h.tolist() for h in s["test"].history] == [[2, 3], [5, 6]]
    assert [x.tolist() for x in s["test"].seen] == [[0, 1, 2, 3], [5, 6]]
    # train: user 0's positions [min(2, 2), 3) = 2; user 1's one item: none
    assert [h.tolist() for h in s["train"].history] == [[0, 1]]
    assert [t.tolist() for t in s["train"].targets] == [[2]]


RAW = {
    "data": {
        "kind": "synthetic",
        "options": {"n_users": 40, "n_items": 30, "seed": 4},
        "split": "global_temporal",
        "val_ratio": 0.1,
        "test_ratio": 0.1,
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
    "eval": {"select_metric": "ndcg@10", "max_samples": 8},
    "method": {"name": "fellrec"},
}


def test_one_base_model_and_exact_adapter_swaps():
    eng = build_engine(config_from_raw(RAW))
    base = eng.model.encoder
    base_weight = dict(eng.model.named_parameters())[
        "encoder.base_model.model.embeddings.word_embeddings.weight"
    ]
    eng.run_round(0)
    assert eng.model.encoder is base  # the same object after training 3 clients
    assert (
        dict(eng.model.named_parameters())[
            "encoder.base_model.model.embeddings.word_embeddings.weight"
        ]
        is base_weight
    )
    received, _ = eng.client_params(torch.arange(3))
    ids, mask = eng.model.sequence_tokens([np.array([1, 2, 3]), np.array([4])])
    a = {n: t[0] for n, t in received.items()}
    b = {n: t[1] for n, t in received.items()}
    out_a = functional_call(eng.model, a, (ids, mask))
    out_b = functional_call(eng.model, b, (ids, mask))
    assert not torch.equal(out_a, out_b)  # personalised adapters differ
    assert torch.equal(
        functional_call(eng.model, a, (ids, mask)), out_a
    )  # swap back: exact


def test_fellrec_personalises_and_fedavg_broadcasts_one_model():
    eng = build_engine(config_from_raw(RAW))
    first = {n: t.clone() for n, t in eng.server.items()}
    assert all(torch.equal(t[0], t[c]) for t in first.values() for c in range(3))
    eng.run_round(0)
    lora_b = [n for n in eng.server if "lora_B" in n][0]
    assert not torch.equal(eng.server[lora_b][0], eng.server[lora_b][1])
    avg = build_engine(config_from_raw({**RAW, "method": {"name": "fedavg"}}))
    avg.run_round(0)
    received, _ = avg.client_params(torch.arange(3))
    assert torch.equal(received[lora_b][0], received[lora_b][2])
    m = eng.history[0]
    assert {"val_ndcg@10", "test_recall@10_client_std", "val_ndcg@10_clients"} <= set(m)


GEN = {
    **RAW,
    "backbone": {
        "kind": "causal-lm",
        "path": "tiny",
        "max_len": 256,
        "max_new_tokens": 8,
    },
}


def test_generative_prompt_swap_and_grounding():
    from fedrec.models.causal_lm import prompt, swapped_in

    text = prompt(["A", "B"], "C")
    assert 'watched the following movies before: "A", "B"' in text
    assert text.endswith('### Response:\n"C"')
    eng = build_engine(config_from_raw(GEN))
    assert {r for n, r in eng.partition.roles.items() if "lora_" in n} == {"shared"}
    eng.run_round(0)
    received, _ = eng.client_params(torch.arange(3))
    p0 = {n: t[0] for n, t in received.items()}
    model = eng.model
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    with swapped_in(model, p0):
        inside = dict(model.named_parameters())
        assert all(torch.equal(inside[n], p0[n]) for n in p0)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before)  # restored exactly
    # grounding: a generated text equal to item 3's title is nearest to item 3
    model.generate_titles = lambda hs: [model.titles[3]] * len(hs)
    scores = model.scores([np.array([1, 2])])
    assert int(scores.argmax()) == 3 and float(scores[0, 3]) == pytest.approx(
        0, abs=1e-4
    )


def test_topk_table_and_per_client_plot(tmp_path):
    from fedrec import plots, tables
    from fedrec.intervals import paired_intervals

    cfg = config_from_raw(
        {**RAW, "variants": {"fedavg": {"method": {"name": "fedavg"}}, "fellrec": {}}}
    )
    rows = tables.run_all(tables.variants(cfg), 1, tmp_path, progress=False)
    intervals = paired_intervals(rows, "fellrec", b=50)
    text = tables.write_table(rows, tmp_path, "header", intervals=intervals)
    assert "test_ndcg@10_client_std" in text and "test_auc" not in text
    assert "Δtest_ndcg@10 vs fellrec [95% CI]" in text
    (r,) = [r for r in intervals.rows if r["metric"] == "test_ndcg@10"]
    point = rows[0]["test_ndcg@10"] - rows[1]["test_ndcg@10"]  # fedavg − fellrec
    assert r["method"] == "fedavg" and r["diff"] == pytest.approx(point, abs=1e-12)
    assert len(rows[0]["test_ndcg@10_clients"]) == 3
    assert rows[0]["backbone"] == "text-encoder:tiny" and rows[0]["split_k"] == 0
    png = plots.plot_clients(rows, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["text-encoder", "causal-lm"])
def test_fellrec_through_the_split_trains_to_the_same_state(kind):
    """Flexible storage changes where blocks run, not what is computed."""
    base = GEN if kind == "causal-lm" else RAW
    plain = build_engine(config_from_raw(base))
    raw = {**base, "backbone": {**base["backbone"], "split_k": 2}}
    split = build_engine(config_from_raw(raw))
    m_plain, m_split = plain.run_round(0), split.run_round(0)
    for n in plain.server:
        torch.testing.assert_close(
            split.server[n], plain.server[n], rtol=1e-4, atol=1e-6
        )
    assert m_split["train_loss"] == pytest.approx(m_plain["train_loss"], rel=1e-5)
    assert m_split["test_ndcg@10"] == pytest.approx(m_plain["test_ndcg@10"], abs=1e-6)
    assert split.model.wire.up > 0 and split.model.wire.down > 0
    assert plain.model.wire.total == 0


def test_per_client_selection_by_hand():
    from fedrec.rundir import per_client_selection

    hist = [  # two clients, three rounds
        {
            "round": 0,
            "val_ndcg@10_clients": [0.1, 0.5],
            "test_ndcg@10_clients": [0.2, 0.6],
            "test_recall@10_clients": [0.3, 0.7],
            "test_users_clients": [1, 3],
        },
        {
            "round": 1,
            "val_ndcg@10_clients": [0.4, 0.2],
            "test_ndcg@10_clients": [0.8, 0.1],
            "test_recall@10_clients": [0.9, 0.2],
            "test_users_clients": [1, 3],
        },
        {
            "round": 2,
            "val_ndcg@10_clients": [0.4, None],
            "test_ndcg@10_clients": [0.0, 0.0],
            "test_recall@10_clients": [0.0, 0.0],
            "test_users_clients": [1, 3],
        },
    ]
    out = per_client_selection(hist, "ndcg@10")
    assert out["selected_rounds"] == [1, 0]  # client 0: tie at 0.4, earliest round 1
    assert out["test_ndcg@10_per_client_selection"] == pytest.approx(
        (0.8 * 1 + 0.6 * 3) / 4
    )
    assert out["test_recall@10_per_client_selection"] == pytest.approx(
        (0.9 + 0.7 * 3) / 4
    )


def test_per_client_split_depth_changes_nothing_but_where_blocks_run():
    plain = build_engine(config_from_raw(RAW))
    raw = {**RAW, "backbone": {**RAW["backbone"], "split_k_per_client": [1, 2, 1]}}
    eng = build_engine(config_from_raw(raw))
    seen = []
    set_client = eng.task.set_client

    def spy(cid):
        set_client(cid)
        seen.append((cid, eng.model.split_k))

    eng.task.set_client = spy
    plain.run_round(0)
    eng.run_round(0)
    assert {(0, 1), (1, 2), (2, 1)} <= set(seen)
    for n in plain.server:
        torch.testing.assert_close(eng.server[n], plain.server[n], rtol=1e-4, atol=1e-6)
    bad = {**RAW, "backbone": {**RAW["backbone"], "split_k_per_client": [1, 2]}}
    with pytest.raises(
        Exception, match="split_k_per_client has 2 values for 3 clients"
    ):
        build_engine(config_from_raw(bad))


def test_item_encodings_in_item_order_equal_one_at_a_time(tmp_path):
    """Length-sorted batches change the cost only: each item alone gives the same."""
    enc = build_engine(config_from_raw(RAW)).model
    params = dict(enc.named_parameters())
    table = enc.encode_items(params, chunk=4)
    for i in (0, 5, len(enc.item_tokens) - 1):
        ids = torch.as_tensor([[enc.cls_id, *enc.item_tokens[i], enc.sep_id]])
        alone = functional_call(enc, params, (ids, torch.ones_like(ids)))
        torch.testing.assert_close(table[i], alone[0], atol=1e-5, rtol=1e-5)

    gen = build_engine(config_from_raw(GEN)).model
    gen.emb_cache = str(tmp_path)
    emb = gen.item_embeddings()
    for i in (0, 7):
        torch.testing.assert_close(emb[i], gen.last_hidden([gen.titles[i]])[0])
    (cached,) = tmp_path.glob("*.pt")
    torch.testing.assert_close(torch.load(cached), emb)
    gen._item_emb = None
    torch.save(emb + 1, cached)  # a second model with the same weights reads it
    torch.testing.assert_close(gen.item_embeddings(), emb + 1)


def test_centralised_is_evaluated_over_the_same_user_groups_and_rows():
    """One client holds everyone, yet per-client metrics use the config's groups."""
    fed_avg = build_engine(config_from_raw(RAW))
    cen = build_engine(config_from_raw({**RAW, "method": {"name": "centralised"}}))
    assert cen.fed.n_clients == 1 and fed_avg.fed.n_clients == 3
    np.testing.assert_array_equal(cen.fed.group_of_user, fed_avg.fed.client_of_user)

    def rows(eng, split):
        t = eng.task
        return np.sort(
            np.concatenate([t.eval_rows(split, c) for c in range(eng.fed.n_clients)])
        )

    for split in ("val", "test"):
        np.testing.assert_array_equal(rows(cen, split), rows(fed_avg, split))
    # the validation cap is per group (8 here); test keeps every row
    v = fed_avg.fed.samples["val"]
    per_group = np.bincount(fed_avg.fed.client_of_user[v.user[rows(cen, "val")]])
    assert per_group.max() <= 8 < len(v)
    assert len(rows(cen, "test")) == len(fed_avg.fed.samples["test"])
    m = cen.evaluate("test")
    assert len(m["ndcg@10_clients"]) == 3 and sum(m["users_clients"]) == m["users"]


def test_testing_only_the_best_round_gives_the_same_summary(tmp_path):
    """eval.splits = ["val"]: test once with best.pt == test every round."""
    from fedrec.runs import run_experiment

    raw = {**RAW, "train": {**RAW["train"], "rounds": 3, "lr": 0.2}}
    every = run_experiment(config_from_raw(raw), tmp_path / "a", progress=False)
    once_raw = {**raw, "eval": {**raw["eval"], "splits": ["val"]}}
    once = run_experiment(config_from_raw(once_raw), tmp_path / "b", progress=False)
    assert once["best_round"] == every["best_round"] == 1  # not the last round
    for k in ("test_ndcg@10", "test_recall@10", "test_ndcg@10_client_std"):
        assert once[k] == pytest.approx(every[k], abs=1e-12), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    tested = [json.loads(x) for x in lines if "test_ndcg@10" in x]
    assert [m["round"] for m in tested] == [once["best_round"]]
    for run, s in (("a", every), ("b", once)):  # per-user outputs of round 1
        with np.load(tmp_path / run / "test_rows.npz") as f:
            assert int(f["round"]) == 1
            assert np.nanmean(f["ndcg@10"]) == pytest.approx(s["test_ndcg@10"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["text-encoder", "causal-lm"])
def test_a_round_on_cuda_matches_the_cpu(kind):
    """train.device = "cuda": same losses and metrics as the CPU (float tolerance)."""
    raw = RAW if kind == "text-encoder" else GEN
    raw = {**raw, "train": {**raw["train"], "rounds": 2}}
    out = {}
    for device in ("cpu", "cuda"):
        eng = build_engine(
            config_from_raw({**raw, "train": {**raw["train"], "device": device}})
        )
        out[device] = [eng.run_round(r) for r in range(2)]
        if device == "cuda":
            assert next(eng.model.parameters()).is_cuda
            assert all(not t.is_cuda for t in eng.server.values())  # state on CPU
    for c, g in zip(out["cpu"], out["cuda"], strict=True):
        assert g["train_loss"] == pytest.approx(c["train_loss"], rel=1e-3)
        for k in ("val_ndcg@10", "test_ndcg@10", "test_recall@10"):
            assert g[k] == pytest.approx(c[k], abs=0.02), k


def test_device_is_validated_and_ctr_stays_on_cpu():
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="train.device"):
        config_from_raw({**RAW, "train": {**RAW["train"], "device": "tpu"}})
    with pytest.raises(ConfigError, match="CTR models run on the CPU"):
        build_engine(
            config_from_raw(
                {
                    "data": {"options": {"n_users": 20, "n_items": 30}},
                    "train": {"device": "cuda"},
                }
            )
        )
