"""FELLRec's training objectives: what they mask, scale, read and end with."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.data import load_dataset
from fedrec.data.sequences import Samples
from fedrec.fl.seq import GenRecTask, SeqRecTask
from fedrec.models.causal_lm import swapped_in, title_in
from fedrec.models.text_encoder import TextSeqRecommender, load_encoder

pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_fellrec_pipeline import RAW  # noqa: E402  (the tiny text-encoder run)

GEN = {
    **RAW,
    "backbone": {"kind": "causal-lm", "path": "tiny", "max_len": 256},
}


def tiny_encoder_model(texts: list[str], temperature: float = 0.5):
    enc, tok = load_encoder("tiny", texts)
    return TextSeqRecommender(
        enc, tok, texts, temperature=temperature, learn_temperature=True
    )


# ----------------------------------------------------- history-masked softmax

# four unit item vectors; e = (1, 0) has cos = [1, 0, -1, 0] with them
TABLE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
E = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
# row 0: target 1, seen {0, 3}; row 1: target 0, seen {0, 2} (target kept)
TRAIN = Samples(
    user=np.array([0, 0]),
    history=[np.array([0, 3]), np.array([0, 2])],
    targets=[np.array([1]), np.array([0])],
    seen=[np.array([0, 3]), np.array([0, 2])],
)


def masked_task() -> SeqRecTask:
    model = tiny_encoder_model(["a", "b", "c", "d"], temperature=0.5)
    return SeqRecTask(model, SimpleNamespace(samples={"train": TRAIN}))


def test_the_training_softmax_masks_the_history_but_not_the_target():
    task = masked_task()
    rows = torch.tensor([0, 1])
    rho = torch.zeros(())
    # τ₀ = 0.5: logits 2·cos = [2, 0, -2, 0]
    # row 0 ranks {1, 2}: z = [0, -2], target z = 0
    ce0 = math.log(1 + math.exp(-2))
    # row 1 ranks {0, 1, 3}: z = [2, 0, 0], target z = 2
    ce1 = -2 + math.log(math.exp(2) + 2)
    got = task._item_ce(E, rows, torch.ones(2), TABLE, rho)
    assert float(got) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    # sample weights: only row 0 counts
    got0 = task._item_ce(E, rows, torch.tensor([1.0, 0.0]), TABLE, rho)
    assert float(got0) == pytest.approx(ce0, rel=1e-6)
    # unmasked it would be log(e² + 1 + e⁻² + 1) for row 0: masking changes it
    assert ce0 != pytest.approx(math.log(math.exp(2) + 2 + math.exp(-2)))


def test_the_logit_scale_multiplies_the_logits_and_has_a_gradient():
    task = masked_task()
    rho = torch.tensor(math.log(2.0), requires_grad=True)  # τ = τ₀/2: z = 4·cos
    loss = task._item_ce(E[:1], torch.tensor([0]), torch.ones(1), TABLE, rho)
    # row 0 ranks {1, 2}: z = [0, -4]
    assert float(loss.detach()) == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-5)
    loss.backward()
    # dℓ/dρ = -z_y + Σ p_i z_i = p_2 · (-4), p_2 = e⁻⁴/(1 + e⁻⁴)
    p2 = math.exp(-4) / (1 + math.exp(-4))
    assert float(rho.grad) == pytest.approx(-4 * p2, rel=1e-5)


def test_the_split_tail_loss_masks_and_scales_the_same_way():
    task = masked_task()
    with torch.no_grad():
        task.model.log_scale.fill_(math.log(2.0))
    out = E[:, None, :] * 3.0  # (b, L=1, d): pooling normalises back to E
    am = torch.ones(2, 1, dtype=torch.long)
    got = task.out_loss(out, torch.tensor([0, 1]), am, am, TABLE)
    ce0 = math.log(1 + math.exp(-4))
    ce1 = -4 + math.log(math.exp(4) + 2)
    assert float(got.detach()) == pytest.approx((ce0 + ce1) / 2, rel=1e-5)


# ------------------------------------------------------ learnable logit scale


def test_the_logit_scale_is_shared_trained_and_mixed_and_the_round_logs_s():
    eng = build_engine(config_from_raw(RAW))
    assert eng.partition.roles["log_scale"] == "shared"  # uploaded with LoRA
    assert torch.equal(eng.server["log_scale"], torch.zeros(3))  # starts at τ₀
    m = eng.run_round(0)
    rho = eng.server["log_scale"]
    assert torch.all(rho != 0) and len(set(rho.tolist())) == 3  # moved, per client
    # the round's metrics carry FELLRec's balance decisions
    assert m["fellrec_clients"] == [0, 1, 2]
    assert 0 <= m["fellrec_s_min"] <= m["fellrec_s_mean"] <= m["fellrec_s_max"] <= 1
    assert len(m["fellrec_heat"]) == 3 and len(m["fellrec_self_weight"]) == 3
    assert all(0 < a <= 1 for a in m["fellrec_self_weight"])
    # FedAvg logs no balance
    avg = build_engine(config_from_raw({**RAW, "method": {"name": "fedavg"}}))
    assert not any(k.startswith("fellrec_") for k in avg.run_round(0))


def test_a_fixed_temperature_is_frozen_and_not_uploaded():
    raw = {**RAW, "backbone": {**RAW["backbone"], "learn_temperature": False}}
    eng = build_engine(config_from_raw(raw))
    assert eng.partition.roles["log_scale"] == "frozen"
    assert "log_scale" not in eng.server


# ------------------------------------------------------------- item texts


def test_the_encoder_reads_full_texts_and_the_lm_writes_titles():
    data = load_dataset("synthetic", n_users=40, n_items=30, seed=4)
    titles = list(data.item_text)
    data = dataclasses.replace(
        data, item_text=[f"{t} (1995) Drama" for t in titles], item_title=titles
    )
    enc = build_engine(config_from_raw(RAW), data=data)
    tok = enc.model.item_tokens[0]
    _, tokenizer = load_encoder("tiny", data.item_text)
    want = tokenizer(data.item_text[0], add_special_tokens=False)["input_ids"]
    assert tok.tolist() == want  # the title, the year and the genre
    gen = build_engine(config_from_raw(GEN), data=data)
    assert gen.model.titles == titles  # prompts and grounding use bare titles


# ------------------------------------------------------------- generative


def test_training_targets_end_with_eos_and_it_is_a_label():
    eng = build_engine(config_from_raw(GEN))
    task: GenRecTask = eng.task
    rows = torch.as_tensor(eng.fed.client_rows("train", 0)[:3])
    ids, mask = task.inputs(rows)
    eos = eng.model.tok.eos_token_id
    last = mask.sum(1) - 1
    assert ids[torch.arange(3), last].tolist() == [eos] * 3
    # the token before the eos closes the quoted answer
    assert eng.model.tok.convert_ids_to_tokens(int(ids[0, last[0] - 1])) == '"'
    # the eos is a label: the loss is the mean next-token CE over every position
    # whose next token is unmasked, the eos included
    params = {n: t[0] for n, t in eng.client_params(torch.tensor([0]))[0].items()}
    full = task.loss(params, rows, torch.ones(3)).detach()
    with torch.no_grad():
        logits = eng.model.lm(ids, attention_mask=mask).logits  # (b, L, V)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    labelled = mask[:, 1:].bool()  # (b, L-1)
    assert labelled[torch.arange(3), last - 1].all()  # predicting the eos counts
    assert float(full) == pytest.approx(float(ce[labelled].mean()), rel=1e-5)


def test_decoded_titles_stop_at_the_closing_quote_newline_or_eos():
    assert title_in(' "Toy Story", "Heat"') == "Toy Story"
    assert title_in('"Heat"\n### Instruction') == "Heat"
    assert title_in("Heat\nCasino") == "Heat"
    assert title_in(' " "') == "?"
    eng = build_engine(config_from_raw(GEN))
    tok, eos = eng.model.tok, eng.model.tok.eos_token_id

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    title = eng.model.titles[0]  # "item 0 ..." : word tokens decode back exactly
    generated = [
        ids(f'"{title}", "x"'),  # the prompt's separator after the title
        ids(f'"{title}"') + [eos] + ids("Heat"),  # nothing after the eos
        ids(f'"{title}'),  # unfinished: the whole text
    ]
    assert eng.model.titles_of(generated) == [title, title, title]


def test_a_tiny_lm_fitted_to_one_answer_writes_it_and_stops():
    eng = build_engine(config_from_raw(GEN))
    task, model, train = eng.task, eng.model, eng.fed.samples["train"]
    row = torch.as_tensor(eng.fed.client_rows("train", 0)[:1])
    received = eng.client_params(torch.tensor([0]))[0]
    params = {n: t[0].clone().requires_grad_(True) for n, t in received.items()}
    opt = torch.optim.Adam(params.values(), lr=0.01)
    for _ in range(100):  # LoRA alone fits the one prompt + answer + eos
        opt.zero_grad()
        task.loss(params, row, torch.ones(1)).backward()
        opt.step()
    history = [train.history[int(row)]]
    title = model.titles[int(train.targets[int(row)][0])]  # "item 19 red drama"
    with swapped_in(model, {n: p.detach() for n, p in params.items()}):
        ids, mask = model.encode(model.prompt_texts(history), left_pad=True)
        out = model.lm.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=16,
            pad_token_id=model.tok.pad_token_id,
        )[0, ids.shape[1] :].tolist()
        words = model.tok.convert_ids_to_tokens(out)
        assert words == ['"', *title.split(), '"', model.tok.eos_token]  # it stops
        assert model.generate_titles(history) == [title]
