"""FELLRec's flexible storage: a transformer executed as client | server | client.

The client holds the embeddings, blocks ``[0, k)``, the last block ``L−1`` and the
output part (final norm and head); the server holds blocks ``[k, L−1)``
(fellrec.md §5). Only hidden states, the attention mask and position ids (and,
backwards, their gradients) cross between the parts, as :class:`Message` objects
whose bytes are counted. One training step (:func:`split_step`)::

    client:  h_k = B_{k-1}∘…∘B_0(Emb(x))                    → h_k, mask, positions
    server:  h_{L-1} = B_{L-2}∘…∘B_k(h_k)                   → h_{L-1}
    client:  out = Head(B_{L-1}(h_{L-1}));  loss(out)       (labels stay here)
    client:  ∂loss/∂h_{L-1}                                 → server
    server:  backward through its blocks; ∂loss/∂h_k        → client
    client:  backward through blocks [0, k) and the embeddings

Supported: Llama-style causal LMs (causal mask and rotary tables rebuilt on each
side from the mask and position ids) and BERT-style encoders (bidirectional
mask). PEFT LoRA inside the blocks goes with the block it is in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Message:
    """What crosses the wire: a hidden state (or its gradient) and its context."""

    tensor: torch.Tensor
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Positions of the prefix it belongs to (the attention mask's width)."""
        if self.attention_mask is None:
            raise ValueError("a message without an attention mask has no prefix")
        return self.attention_mask.shape[1]

    def newest(self) -> Message:
        """The newest position only; the mask still spans the prefix."""
        pos = None if self.position_ids is None else self.position_ids[:, -1:]
        return Message(self.tensor[:, -1:], self.attention_mask, pos)

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor in the message."""
        ts = [
            t
            for t in (self.tensor, self.attention_mask, self.position_ids)
            if t is not None
        ]
        return sum(t.numel() * t.element_size() for t in ts)

    def tensors(self, detach: bool = False) -> dict[str, torch.Tensor]:
        """``{field: tensor}`` of the fields that are set (a record's entries)."""
        out = {"tensor": self.tensor.detach() if detach else self.tensor}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids
        return out

    @classmethod
    def of(cls, tensors: dict[str, torch.Tensor]) -> Message:
        """The message :meth:`tensors` gave."""
        get = tensors.get
        return cls(tensors["tensor"], get("attention_mask"), get("position_ids"))


def _unwrap(model: nn.Module) -> Any:
    """The HF model under a PEFT wrapper (its attributes depend on the architecture)."""
    base = getattr(model, "base_model", None)  # PEFT: PeftModel.base_model.model
    return base.model if base is not None and hasattr(base, "model") else model


def _grad(leaf: torch.Tensor) -> torch.Tensor:
    """The gradient a backward pass left in ``leaf``."""
    if leaf.grad is None:
        raise RuntimeError("the backward pass did not reach the split's leaf")
    return leaf.grad


class SplitModel:
    """Executes ``model`` as client head / server middle / client tail at ``k``.

    Parameters
    ----------
    model
        A ``LlamaForCausalLM``-like or ``BertModel``-like model (PEFT-wrapped or not).
    k
        Blocks on the client before the server part, ``1 ≤ k ≤ L−2``.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        m = _unwrap(model)
        self.causal = hasattr(m, "lm_head")
        # Llama-like (layers, rotary_emb, embed_tokens, norm) or BERT-like
        # (encoder.layer, embeddings): what is read of it depends on `causal`
        self.body: Any = m.model if self.causal else m
        self.head_module: nn.Module | None = m.lm_head if self.causal else None
        self.layers: nn.ModuleList = (
            self.body.layers if self.causal else self.body.encoder.layer
        )
        L = len(self.layers)
        if not 1 <= k <= L - 2:
            raise ValueError(f"k = {k}: need 1 <= k <= L-2 = {L - 2}")
        self.k, self.L = k, L

    # ------------------------------------------------------------- the parts
    def _context(
        self,
        h: torch.Tensor,
        mask: torch.Tensor | None,
        pos: torch.Tensor | None,
        cache: object | None = None,
        first: int = 0,
    ) -> dict[str, Any]:
        from transformers.masking_utils import (
            create_bidirectional_mask,
            create_causal_mask,
        )

        cfg = self.body.config
        if not self.causal:
            return {
                "attention_mask": create_bidirectional_mask(
                    config=cfg, inputs_embeds=h, attention_mask=mask
                )
            }
        ctx = {
            "attention_mask": create_causal_mask(
                config=cfg,
                inputs_embeds=h,
                attention_mask=mask,
                past_key_values=cache,
                position_ids=pos,
                layer_idx=first,
            ),
            "position_embeddings": self.body.rotary_emb(h, position_ids=pos),
            "position_ids": pos,
        }
        if cache is not None:
            ctx.update(past_key_values=cache, use_cache=True)
        return ctx

    def _blocks(
        self,
        first: int,
        last: int,
        h: torch.Tensor,
        mask: torch.Tensor | None,
        pos: torch.Tensor | None,
        cache: object | None = None,
    ) -> torch.Tensor:
        """Blocks ``[first, last)``; with ``cache``, each keeps its keys and values."""
        ctx = self._context(h, mask, pos, cache, first)
        for block in self.layers[first:last]:
            out = block(h, **ctx)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def client_head(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor | None = None,
        cache: object | None = None,
    ) -> Message:
        """Embeddings and blocks ``[0, k)``: the message to the server.

        ``ids`` are the new tokens (all of them without a cache), ``mask`` the 2-D
        mask of everything seen so far, ``pos`` the new tokens' positions.
        """
        if self.causal and pos is None:
            pos = torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
        if not self.causal:
            pos = None  # an encoder needs no positions on the wire
        emb = (
            self.body.embed_tokens(ids)
            if self.causal
            else self.body.embeddings(input_ids=ids)
        )
        return Message(self._blocks(0, self.k, emb, mask, pos, cache), mask, pos)

    def server(self, msg: Message, cache: object | None = None) -> Message:
        """Blocks ``[k, L−1)``, run by the server on a client's hidden state."""
        h = self._blocks(
            self.k, self.L - 1, msg.tensor, msg.attention_mask, msg.position_ids, cache
        )
        return Message(h, msg.attention_mask, msg.position_ids)

    def client_tail(
        self, msg: Message, cache: object | None = None, last: bool = False
    ) -> torch.Tensor:
        """Block ``L−1`` and the output part: logits (LM) or last hidden states.

        ``last``: the output part on the last position only (``(b, 1, ·)``).
        """
        h = self._blocks(
            self.L - 1, self.L, msg.tensor, msg.attention_mask, msg.position_ids, cache
        )
        if last:
            h = h[:, -1:]
        if self.head_module is not None:  # causal: the LM head's logits
            return self.head_module(self.body.norm(h))
        return h

    # ------------------------------------------------------------- protocol
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Inference through the three parts (no gradients kept across the wire)."""
        with torch.no_grad():
            return self.client_tail(self.server(self.client_head(ids, mask)))

    # ------------------------------------------- a training step, in parts
    # Each part runs on one side; only the Messages cross. The client keeps no
    # activations while it waits: it recomputes its head forward when the
    # gradient comes back (``head_backward``), so between messages it holds
    # its parameters only — which is what lets a Flower node serve the steps
    # (``fedrec.flower.split_node``) with the very same functions.
    def head_forward(self, ids: torch.Tensor, mask: torch.Tensor) -> Message:
        """Client: ``h_k``, the message up (no graph kept)."""
        with torch.no_grad():
            return self.client_head(ids, mask)

    def server_forward(self, up: Message) -> tuple[torch.Tensor, Message]:
        """Server: (the leaf ``h_k`` it will return the gradient of, ``h_{L−1}``)."""
        leaf = up.tensor.detach().requires_grad_(True)
        return leaf, self.server(Message(leaf, up.attention_mask, up.position_ids))

    def tail_backward(
        self,
        down: Message,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, Message]:
        """Client: the loss and ``∂loss/∂h_{L−1}`` (tail gradients accumulate)."""
        leaf = down.tensor.detach().requires_grad_(True)
        loss = loss_fn(self.client_tail(Message(leaf, *_context(down))))
        loss.backward()  # labels never leave the client
        return loss.detach(), Message(_grad(leaf))

    def server_backward(
        self, leaf: torch.Tensor, out: Message, grad: Message
    ) -> Message:
        """Server: backward through its blocks; ``∂loss/∂h_k``, the message down."""
        out.tensor.backward(grad.tensor)
        return Message(_grad(leaf))

    def head_backward(
        self, ids: torch.Tensor, mask: torch.Tensor, grad: Message
    ) -> None:
        """Client: recompute the head forward, backward with ``∂loss/∂h_k``."""
        self.client_head(ids, mask).tensor.backward(grad.tensor)

    def step(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, int]:
        """One training step's forward and backward; returns (loss, bytes on the wire).

        Gradients land in every part's parameters; each side would then update
        its own (the optimiser step is the caller's).
        """
        up = self.head_forward(ids, mask)
        leaf, mid = self.server_forward(up)
        down = Message(mid.tensor.detach(), mid.attention_mask, mid.position_ids)
        loss, g_down = self.tail_backward(down, loss_fn)
        g_up = self.server_backward(leaf, mid, g_down)
        self.head_backward(ids, mask, g_up)
        wire = up.nbytes + down.nbytes + g_down.nbytes + g_up.nbytes
        return loss, wire

    def server_parameters(self) -> set[int]:
        """``id``s of the parameters the server holds (blocks ``[k, L−1)``)."""
        return {id(p) for b in self.layers[self.k : self.L - 1] for p in b.parameters()}

    @torch.no_grad()
    def greedy(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        new_tokens: int,
        kv_cache: bool = True,
    ) -> tuple[torch.Tensor, int]:
        """Greedy decoding through the split; returns (tokens, bytes on the wire).

        With ``kv_cache`` each side keeps the keys and values of its own blocks
        (client: [0, k) and L−1; server: [k, L−1)), so after the prompt only the
        new token's hidden state crosses the wire each step; without, the whole
        prefix is recomputed and resent. Prompts must not be padded.
        """
        from transformers import DynamicCache

        cfg = self.body.config
        client_cache = DynamicCache(config=cfg) if kv_cache else None
        server_cache = DynamicCache(config=cfg) if kv_cache else None
        wire, step_ids, out = 0, ids, ids
        for _ in range(new_tokens):
            start = out.shape[1] - step_ids.shape[1]
            pos = (
                torch.arange(start, out.shape[1]).unsqueeze(0).expand(out.shape[0], -1)
            )
            up = self.client_head(step_ids, mask, pos, client_cache)
            down = self.server(up, server_cache)
            logits = self.client_tail(down, client_cache)
            wire += up.nbytes + down.nbytes
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            step_ids = nxt if kv_cache else out
        return out, wire


def _context(msg: Message) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return msg.attention_mask, msg.position_ids


class WireMeter:
    """Counts the bytes that cross the client/server boundary, both directions."""

    def __init__(self) -> None:
        self.up = 0
        self.down = 0

    @property
    def total(self) -> int:
        """Bytes in both directions."""
        return self.up + self.down


class _Wire(torch.autograd.Function):
    """Identity in the graph that counts a hidden state forwards, its gradient back."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, meter: WireMeter, extra: int) -> torch.Tensor:
        ctx.meter = meter
        meter.up += h.numel() * h.element_size() + extra
        return h.view_as(h)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        ctx.meter.down += g.numel() * g.element_size()
        return g, None, None


def wired_forward(
    split: SplitModel, ids: torch.Tensor, mask: torch.Tensor, meter: WireMeter
) -> torch.Tensor:
    """Client head → wire → server → wire → client tail, in one autograd graph.

    Equal to :meth:`SplitModel.step`'s message protocol (the wire passes the
    hidden state forwards and its gradient backwards unchanged, counting both);
    this form lets a client's ordinary ``loss.backward()`` train through the split.
    """
    up = split.client_head(ids, mask)
    ctx = up.nbytes - up.tensor.numel() * up.tensor.element_size()
    h = _Wire.apply(up.tensor, meter, ctx)
    mid = split.server(Message(h, up.attention_mask, up.position_ids))
    h = _Wire.apply(mid.tensor, meter, 0)
    return split.client_tail(Message(h, up.attention_mask, up.position_ids))
