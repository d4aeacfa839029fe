"""LoRA for the Hugging Face backbones, via PEFT, shared by both LLM recommenders.

A recommender names its backbone attribute and LoRA targets as class data
(``backbone_attr``, ``lora_targets``, ``peft_task_type``); :func:`add_lora` wraps
that backbone (dropout 0, no bias) so only the LoRA factors train, and
:class:`NoDropout` keeps the backbone in eval mode whatever ``train()`` says:
a client's update is then a function of (seed, round, data) alone, which keeps
resumed runs exact and makes adapter swaps exact.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class NoDropout(nn.Module):
    """Mixin: ``train()`` leaves the backbone (``backbone_attr``) in eval mode."""

    backbone_attr: str = ""

    def train(self, mode: bool = True) -> Any:
        """Set ``mode`` on this module, then put the backbone back in eval mode."""
        super().train(mode)
        getattr(self, self.backbone_attr).eval()
        return self


def add_lora(model: Any, rank: int = 8, alpha: int = 16) -> Any:
    """Wrap ``model``'s backbone with PEFT LoRA on ``model.lora_targets``."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(model.lora_targets),
        task_type=model.peft_task_type,
    )
    backbone = getattr(model, model.backbone_attr)
    setattr(model, model.backbone_attr, get_peft_model(backbone, cfg).eval())
    return model
