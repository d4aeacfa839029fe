"""The executed client/server split equals the unsplit model (fellrec.md §5.2)."""

from __future__ import annotations

import pytest
import torch

from fedrec.models.split import SplitModel

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

L = 5  # blocks; k ∈ {1, 2, 3}


def _llama(lora: bool):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=L,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    if lora:
        model = peft.get_peft_model(
            model,
            peft.LoraConfig(
                r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0
            ),
        )
        with torch.no_grad():  # make B non-zero so LoRA changes the function
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    return model


def _bert(lora: bool):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=L,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.BertModel(cfg, add_pooling_layer=False).double().eval()
    if lora:
        model = peft.get_peft_model(
            model,
            peft.LoraConfig(
                r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0
            ),
        )
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding on one row
    return ids, mask


def _grads(model):
    return {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_split_loss_and_every_gradient_equal_unsplit(kind, k, lora):
    model = _llama(lora) if kind == "llama" else _bert(lora)
    ids, mask = _batch()
    target = torch.randn(
        3,
        9,
        50 if kind == "llama" else 32,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(2),
    )

    def loss_fn(out):
        return ((out * mask.unsqueeze(-1)) * target).sum() / 100

    out = model(input_ids=ids, attention_mask=mask)
    full = out.logits if kind == "llama" else out.last_hidden_state
    ref_loss = loss_fn(full)
    ref_loss.backward()
    ref = _grads(model)
    model.zero_grad()
    split = SplitModel(model, k)
    loss, wire = split.step(ids, mask, loss_fn)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=0, atol=1e-12)
    got = _grads(model)
    assert set(got) == set(ref) and len(ref) > 0
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=1e-10, msg=n)
    # 4 hidden-state-sized tensors (h_k, h_{L-1} and their gradients) + mask/positions
    hidden = 3 * 9 * 32 * 8
    context = mask.numel() * 8 * (2 if kind == "llama" else 1) * 2
    assert wire == 4 * hidden + context


@pytest.mark.parametrize("kv_cache", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_split_greedy_generation_equals_unsplit(k, kv_cache):
    model = _llama(lora=True)
    ids = torch.tensor([[3, 14, 15, 9, 2]])
    mask = torch.ones_like(ids)
    ref = ids
    with torch.no_grad():  # plain greedy decoding on the unsplit model
        for _ in range(6):
            logits = model(input_ids=ref, attention_mask=torch.ones_like(ref)).logits
            ref = torch.cat([ref, logits[:, -1].argmax(-1, keepdim=True)], 1)
    got, wire = SplitModel(model, k).greedy(ids, mask, 6, kv_cache=kv_cache)
    assert torch.equal(got, ref)
    # per step: h_k and h_{L-1} (+ mask and positions) of the tokens sent
    sent = [5 + i for i in range(6)] if not kv_cache else [5] + [1] * 5
    seen = [5 + i for i in range(6)]
    expected = sum(
        2 * (n * 32 * 8 + m * 8 + n * 8) for n, m in zip(sent, seen, strict=True)
    )
    assert wire == expected


def test_k_out_of_range():
    with pytest.raises(ValueError, match="1 <= k <= L-2"):
        SplitModel(_llama(False), L - 1)
