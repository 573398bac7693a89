"""A training job and what every method shares before it runs: data, tokenizer, base model,
lengths and the training schedule (the job's part of CLI -> job -> data -> method -> trainer)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from ..data import DataError, build_task_ids, encode_examples, load_examples
from ..loading import load_base_model, load_tokenizer
from ..runtime import fit_source_length, reset_peak_memory
from .compaction import DEFAULT_MARGIN
from .validation import validate_job


@dataclass
class TrainJob:
    """Everything `simoe train` needs. Defaults: paper Table 6 (SNI column) and SIMOE.md."""

    model: str
    data: str
    output: str
    method: str = "simoe"
    experts: int = 8
    sparsity: float = 0.75
    ortho: float = 5e-6
    routing: str = "instance"
    gate_mode: str = "deterministic"
    constraint: str = "union"
    sparsity_warmup: float = 0.75
    sparsity_hold: float = 0.25
    ortho_form: str = "offdiag"
    targets: str = "all"
    sparsity_constraint: bool = True
    lr: float = 2e-5
    gate_lr: float = 0.1
    gate_second_moment: str = "row"
    gate_beta1: float = 0.0
    live_compaction: bool = True
    compact_margin: float = DEFAULT_MARGIN
    router_lr: float = 1e-4
    lambda_lr: float = 0.02
    balance: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_lr: float = 2e-4
    moe_experts: int = 4
    moe_top_k: int = 2
    domains: str | None = None
    batch_size: int = 16
    grad_accum: int = 1
    epochs: float = 2.0
    max_steps: int = -1
    max_source_len: int = 1024
    max_target_len: int = 128
    num_pos_examples: int = 2
    max_instances_per_task: int = 100
    seed: int = 42
    bf16: bool = False
    gradient_checkpointing: bool = False
    resume: str | bool = False
    overwrite: bool = False
    logging_steps: int = 10
    save_steps: int = 500
    routing_cache: bool = True
    skip_invalid: bool = False
    split: str = "train"
    extra_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse values no run should accept, before any work (one line each)."""
        validate_job(self)


@dataclass
class Prepared:
    """What every method shares: tokenizer, data, the frozen-or-not base model, lengths."""

    job: TrainJob
    output: Path
    checkpoint: str | None
    tokenizer: Any
    examples: list
    encoded: Any
    base: torch.nn.Module
    max_source: int
    max_target: int
    start: float
    task_ids: dict[str, int] | None = None
    base_fingerprint: dict[str, Any] | None = None


def prepare(job: TrainJob, task_routing: bool = False, checkpoint: str | None = None
            ) -> Prepared:
    """Seed, tokenizer (pad = EOS if missing), data, base model, lengths within its limit.
    ``checkpoint``: what the run resumes from (see :func:`~simoe.training.rundir.claim`)."""
    start = time.time()
    reset_peak_memory()
    output = Path(job.output).expanduser()
    set_seed(job.seed)
    tokenizer = load_tokenizer(job.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = load_examples(job.data, job.split, skip_invalid=job.skip_invalid,
                             num_pos_examples=job.num_pos_examples,
                             max_instances_per_task=job.max_instances_per_task)
    if not examples:
        raise ValueError(f"{job.data}: no training examples in split {job.split!r}")
    if all(not ex.completion.strip() for ex in examples):
        raise DataError(f"{job.data}: every completion in split {job.split!r} is empty; "
                        "training would only teach the model to stop at once")
    dtype = torch.bfloat16 if job.bf16 else torch.float32
    base = load_base_model(job.model, dtype=dtype)
    max_target = job.max_target_len
    max_source = fit_source_length(base, job.max_source_len, max_target)
    task_ids = build_task_ids(examples) if task_routing else None
    encoded = encode_examples(examples, tokenizer, max_source, max_target, task_ids=task_ids)
    output.mkdir(parents=True, exist_ok=True)
    return Prepared(job, output, checkpoint, tokenizer, examples, encoded, base, max_source,
                    max_target, start, task_ids)


def training_arguments(job: TrainJob, output: Path, cls: type = TrainingArguments,
                       **overrides: Any) -> TrainingArguments:
    """The schedule every method shares: Adam, constant lr, same batches and steps."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(output), per_device_train_batch_size=job.batch_size,
        gradient_accumulation_steps=job.grad_accum, learning_rate=job.lr,
        num_train_epochs=job.epochs, max_steps=job.max_steps, lr_scheduler_type="constant",
        weight_decay=0.0, logging_steps=job.logging_steps, save_steps=job.save_steps,
        save_total_limit=2, seed=job.seed, data_seed=job.seed, bf16=job.bf16,
        activation_checkpointing=job.gradient_checkpointing, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0)
    if job.bf16 and not _has_accelerator():
        kwargs["use_cpu"] = True  # bf16 autocast on the CPU: transformers asks for it explicitly
    kwargs.update(job.extra_args)
    kwargs.update(overrides)
    return cls(**kwargs)


def _has_accelerator() -> bool:
    """A CUDA, XPU or MPS device (where transformers decides itself whether bf16 works)."""
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(xpu and xpu.is_available())
            or torch.backends.mps.is_available())


def total_steps(job: TrainJob, n_examples: int, processes: int = 1) -> int:
    """Optimiser steps the job's budget allows (max_steps, or epochs over the data)."""
    if job.max_steps > 0:
        return job.max_steps
    per_epoch = math.ceil(n_examples / (job.batch_size * job.grad_accum * processes))
    return max(1, math.ceil(per_epoch * job.epochs))
