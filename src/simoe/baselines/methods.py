"""The baselines trained through the same data, schedule, outputs and evaluation as SIMoE:
full fine-tuning, LoRA (PEFT), sparse upcycling and BTX (both as Mixtral models).

Each writes a run directory that `simoe eval` loads as a plain transformers model
(config.json + model.safetensors) plus final_stats.json and metrics.jsonl.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ..data import SIMoECollator
from ..training.run import FINAL_STATS_NAME, Prepared, TrainJob, finish, prepare, training_arguments
from ..training.trainer import METRICS_NAME, MetricsLogger
from .moe_losses import ROUTER_Z_LOSS_COEF, router_z_loss

logger = logging.getLogger(__name__)

class PlainCollator(SIMoECollator):
    """The SIMoE collator without the routing fields a plain causal LM does not take."""

    def __call__(self, features):  # noqa: ANN001, ANN204
        batch = super().__call__(features)
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}


class MoETrainer(Trainer):
    """Trainer for the Mixtral baselines: the model's loss (NLL + 1e-2 load balancing, from
    ``output_router_logits``) plus the router z-loss (1e-3), padding masked.

    The loss is a per-micro-batch mean that the Trainer divides by the accumulation steps, so
    every term counts once per optimiser step."""

    def __init__(self, *args: Any, z_loss_weight: float = ROUTER_Z_LOSS_COEF,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.z_loss_weight = z_loss_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        outputs = model(**inputs, output_router_logits=True)
        loss = outputs.loss
        if self.z_loss_weight and outputs.router_logits is not None:
            loss = loss + self.z_loss_weight * router_z_loss(outputs.router_logits,
                                                             inputs.get("attention_mask"))
        return (loss, outputs) if return_outputs else loss


def _rows(prep: Prepared, keep: list[int] | None = None) -> list[dict[str, Any]]:
    idx = range(len(prep.encoded)) if keep is None else keep
    return [{"input_ids": prep.encoded[i].input_ids, "labels": prep.encoded[i].labels,
             "routing_index": prep.encoded[i].routing_index} for i in idx]


def _fit(prep: Prepared, model: torch.nn.Module, rows: list[dict[str, Any]], output: Path,
         trainer_cls: type = Trainer, resume: str | None = None, **overrides: Any):
    args = training_arguments(prep.job, output, **overrides)
    output.mkdir(parents=True, exist_ok=True)
    trainer = trainer_cls(model=model, args=args, train_dataset=rows,
                          data_collator=PlainCollator(prep.tokenizer),
                          callbacks=[MetricsLogger(output / METRICS_NAME)])
    result = trainer.train(resume_from_checkpoint=resume)
    return trainer, result


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _moe_counts(model: torch.nn.Module, trainable: int) -> dict[str, int]:
    cfg = model.config
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    total = _count(model)
    active = total - experts + experts * cfg.num_experts_per_tok // cfg.num_local_experts
    return {"trainable": trainable, "total_stored": total, "active_per_token": active}


def total_steps(job: TrainJob, n_examples: int) -> int:
    """Optimiser steps the job's budget allows (max_steps, or epochs over the data)."""
    if job.max_steps > 0:
        return job.max_steps
    per_epoch = math.ceil(n_examples / (job.batch_size * job.grad_accum))
    return max(1, math.ceil(per_epoch * job.epochs))


def _domains(prep: Prepared) -> dict[str, list[int]]:
    """Example indices per BTX domain."""
    from .btx import DEFAULT_SNI_DOMAINS, domain_of

    mapping = DEFAULT_SNI_DOMAINS
    if prep.job.domains:
        mapping = json.loads(Path(prep.job.domains).read_text())
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(prep.examples):
        # The category map wins where it knows the category (SNI's own "Domains" field names
        # topics, not BTX training domains); else the record's domain; else the fallback.
        if ex.category and ex.category in mapping:
            domain = mapping[ex.category]
        else:
            domain = ex.domain or domain_of(ex.category or "", mapping)
        groups[domain].append(i)
    return dict(sorted(groups.items()))


def train_baseline(job: TrainJob) -> Path:
    """Train a baseline method; returns its run directory."""
    if job.method == "btx" and job.resume:
        raise ValueError("--resume is not supported for btx (its branches train in memory)")
    prep = prepare(job)
    out = prep.output
    stats: dict[str, Any] = {}
    if job.method == "full":
        model = prep.base
        for p in model.parameters():
            p.requires_grad_(True)
        trainer, result = _fit(prep, model, _rows(prep), out, resume=prep.checkpoint)
        total = _count(model)
        stats["parameter_counts"] = {"trainable": total, "total_stored": total,
                                     "active_per_token": total}
    elif job.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=job.lora_r, lora_alpha=job.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(prep.base, lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trainer, result = _fit(prep, model, _rows(prep), out, resume=prep.checkpoint,
                               learning_rate=job.lora_lr)
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
        total = _count(model)
        stats["parameter_counts"] = {"trainable": trainable, "total_stored": total + trainable,
                                     "active_per_token": total}
        stats["lora"] = {"r": job.lora_r, "alpha": job.lora_alpha, "lr": job.lora_lr}
    elif job.method == "upcycle":
        from .upcycle import upcycle_to_mixtral

        model = upcycle_to_mixtral(prep.base, num_experts=job.moe_experts, top_k=job.moe_top_k,
                                   seed=job.seed)
        trainer, result = _fit(prep, model, _rows(prep), out, MoETrainer,
                               resume=prep.checkpoint)
        stats["parameter_counts"] = _moe_counts(model, _count(model))
    else:  # btx
        model, trainer, result, branch_stats = _train_btx(prep)
        stats["parameter_counts"] = _moe_counts(model, _count(model))
        stats["btx"] = branch_stats
    model.save_pretrained(out)
    return finish(prep, job.method, trainer.state.global_step, result.training_loss, stats)


def _train_btx(prep: Prepared):  # noqa: ANN202
    """Branch: one dense copy per domain, trained on its domain; MiX: their FFNs (plus the
    base FFN) become Mixtral experts, the rest is averaged; then everything trains on all data.
    Budget: half of the steps for the branches (split equally), half for the mix phase."""
    from .btx import btx_merge

    job = prep.job
    domains = _domains(prep)
    steps = total_steps(job, len(prep.encoded))
    branch_steps = max(1, steps // (2 * len(domains)))
    mix_steps = max(1, steps - branch_steps * len(domains))
    branches = []
    for name, idx in domains.items():
        logger.info("BTX branch %r: %d examples, %d steps", name, len(idx), branch_steps)
        dense = copy.deepcopy(prep.base)
        for p in dense.parameters():
            p.requires_grad_(True)
        _fit(prep, dense, _rows(prep, idx), prep.output / "branches" / _safe(name),
             max_steps=branch_steps, save_strategy="no")
        branches.append(dense)
    model = btx_merge(prep.base, branches, top_k=job.moe_top_k, seed=job.seed)
    trainer, result = _fit(prep, model, _rows(prep), prep.output, MoETrainer,
                           max_steps=mix_steps)
    info = {"domains": {k: len(v) for k, v in domains.items()}, "branch_steps": branch_steps,
            "mix_steps": mix_steps}
    return model, trainer, result, info


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "domain"


__all__ = ["FINAL_STATS_NAME", "MoETrainer", "PlainCollator", "total_steps", "train_baseline"]
