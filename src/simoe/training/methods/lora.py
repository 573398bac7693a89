"""LoRA (PEFT) on every linear layer; saved as the adapter plus the merged dense model."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import Trainer, TrainingArguments

from ..job import Prepared
from .base import Method, count_parameters


class LoRA(Method):
    name = "lora"
    uses = frozenset({"lora_r", "lora_alpha", "lora_lr"})

    def build(self, prep: Prepared) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        job = prep.job
        lora = LoraConfig(r=job.lora_r, lora_alpha=job.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        return get_peft_model(prep.base, lora)

    def training_args(self, prep: Prepared, **overrides: Any) -> TrainingArguments:
        return super().training_args(prep, learning_rate=prep.job.lora_lr, **overrides)

    def save(self, prep: Prepared, model: nn.Module, trainer: Trainer) -> dict[str, Any]:
        job = prep.job
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        model.save_pretrained(prep.output / "adapter")
        merged = model.merge_and_unload()
        merged.save_pretrained(prep.output)
        total = count_parameters(merged)
        return {"parameter_counts": {"trainable": trainable, "total_stored": total + trainable,
                                     "active_per_token": total},
                "lora": {"r": job.lora_r, "alpha": job.lora_alpha, "lr": job.lora_lr}}
