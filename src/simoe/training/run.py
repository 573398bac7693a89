"""One SIMoE training run, from a model and data source to a finished run directory.

    run dir/  simoe_config.json  simoe_model.safetensors   the pruned SIMoE state (+ tokenizer)
              final_stats.json   metrics.jsonl             one JSON line per logging step
              task_ids.json      routing_cache/            checkpoint-N/ (Trainer checkpoints)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..config import SIMoEConfig
from ..data import SIMoECollator, build_task_ids, encode_examples, load_examples
from ..model import SIMoEModel
from ..runtime import atomic_write_json, fit_source_length, peak_memory_mb, reset_peak_memory
from .routing_cache import load_or_compute
from .stats import final_stats
from .trainer import METRICS_NAME, MetricsLogger, SIMoETrainer, SIMoETrainingArguments

logger = logging.getLogger(__name__)

FINAL_STATS_NAME = "final_stats.json"
# FFN linears of any architecture: Llama-style mlp.*, NeoX/GPT-2 mlp.*, feed_forward.*, ffn.*
FFN_PATTERN = r"\.(mlp|feed_forward|ffn)\."


METHODS = ("simoe", "full", "lora", "upcycle", "btx")


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
    constraint: str = "mean"
    targets: str = "all"
    sparsity_constraint: bool = True
    lr: float = 2e-5
    gate_lr: float = 1e-2
    router_lr: float = 1e-4
    lambda_lr: float = 0.05
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
    logging_steps: int = 10
    save_steps: int = 500
    routing_cache: bool = True
    skip_invalid: bool = False
    split: str = "train"
    extra_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.targets not in ("all", "ffn"):
            raise ValueError(f"targets must be 'all' or 'ffn', got {self.targets!r}")


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


def _resume_checkpoint(job: TrainJob) -> str | None:
    if not job.resume:
        return None
    if isinstance(job.resume, str):
        return job.resume
    last = get_last_checkpoint(job.output) if Path(job.output).is_dir() else None
    if last is None:
        raise FileNotFoundError(f"--resume: no checkpoint-* directory in {job.output}")
    return last


def _trim_metrics(output: Path, checkpoint: str | None) -> None:
    """Resuming: drop metric lines logged after the checkpoint (they will be redone).
    A fresh run starts a fresh log."""
    log = output / METRICS_NAME
    if not log.is_file():
        return
    state = Path(checkpoint) / "trainer_state.json" if checkpoint else None
    if state is None or not state.is_file():
        log.unlink()
        return
    step = json.loads(state.read_text())["global_step"]
    lines = [ln for ln in log.read_text().splitlines() if json.loads(ln)["step"] <= step]
    log.write_text("".join(ln + "\n" for ln in lines))


def prepare(job: TrainJob, task_routing: bool = False) -> Prepared:
    """Seed, tokenizer (pad = EOS if missing), data, base model, lengths within its limit."""
    start = time.time()
    reset_peak_memory()
    output = Path(job.output)
    checkpoint = _resume_checkpoint(job)
    set_seed(job.seed)
    tokenizer = AutoTokenizer.from_pretrained(job.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = load_examples(job.data, job.split, skip_invalid=job.skip_invalid,
                             num_pos_examples=job.num_pos_examples,
                             max_instances_per_task=job.max_instances_per_task)
    if not examples:
        raise ValueError(f"{job.data}: no training examples in split {job.split!r}")
    dtype = torch.bfloat16 if job.bf16 else torch.float32
    base = AutoModelForCausalLM.from_pretrained(job.model, dtype=dtype)
    max_target = job.max_target_len
    max_source = fit_source_length(base, job.max_source_len, max_target)
    task_ids = build_task_ids(examples) if task_routing else None
    encoded = encode_examples(examples, tokenizer, max_source, max_target, task_ids=task_ids)
    output.mkdir(parents=True, exist_ok=True)
    _trim_metrics(output, checkpoint)
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
    kwargs.update(job.extra_args)
    kwargs.update(overrides)
    return cls(**kwargs)


def finish(prep: Prepared, method: str, steps: int, train_loss: float,
           stats: dict[str, Any]) -> Path:
    """Write final_stats.json with what every method reports."""
    stats.update({
        "method": method,
        "steps": steps,
        "train_loss": train_loss,
        "wall_time_s": time.time() - prep.start,
        "peak_memory_mb": peak_memory_mb(),
        "examples": len(prep.encoded),
        "truncated_prompts": prep.encoded.num_truncated,
        "max_source_len": prep.max_source,
        "max_target_len": prep.max_target,
        "base_model": prep.job.model,
    })
    prep.tokenizer.save_pretrained(prep.output)
    atomic_write_json(prep.output / FINAL_STATS_NAME, stats)
    return prep.output


def simoe_config(job: TrainJob, num_tasks: int = 0) -> SIMoEConfig:
    """The SIMoE config of a job, ablations included (targets='ffn': only FFN linears;
    no sparsity constraint: free real-valued masks)."""
    return SIMoEConfig(
        num_experts=job.experts, target_sparsity=job.sparsity, ortho_weight=job.ortho,
        routing=job.routing, num_tasks=num_tasks, base_model_name_or_path=job.model,
        gate_mode=job.gate_mode if job.sparsity_constraint else "free",
        include=[FFN_PATTERN] if job.targets == "ffn" else [],
        target_norms=job.targets != "ffn")


def train(job: TrainJob) -> Path:
    """Run ``job`` (any method); returns the finished run directory."""
    if job.method != "simoe":
        from ..baselines.methods import train_baseline

        return train_baseline(job)
    prep = prepare(job, task_routing=job.routing == "task")
    task_ids = prep.task_ids
    config = simoe_config(job, len(task_ids) if task_ids else 0)
    model = SIMoEModel.from_base(prep.base, config)
    if task_ids:
        atomic_write_json(prep.output / "task_ids.json", task_ids)
    rows: list[dict[str, Any]] = [
        {"input_ids": e.input_ids, "labels": e.labels, "routing_index": e.routing_index,
         **({"task_id": e.task_id} if e.task_id is not None else {})} for e in prep.encoded]
    if job.routing_cache and job.routing == "instance":
        embeddings = load_or_compute(model, prep.tokenizer, prep.encoded,
                                     prep.output / "routing_cache",
                                     batch_size=max(job.batch_size, 8))
        for row, emb in zip(rows, embeddings, strict=True):
            row["routing_embedding"] = emb

    args = training_arguments(
        job, prep.output, SIMoETrainingArguments, gate_learning_rate=job.gate_lr,
        router_learning_rate=job.router_lr, lambda_learning_rate=job.lambda_lr,
        constraint=job.constraint, sparsity_constraint=job.sparsity_constraint)
    trainer = SIMoETrainer(model=model, args=args, train_dataset=rows,
                           data_collator=SIMoECollator(prep.tokenizer),
                           processing_class=prep.tokenizer,
                           callbacks=[MetricsLogger(prep.output / METRICS_NAME)])
    result = trainer.train(resume_from_checkpoint=prep.checkpoint)

    stats = final_stats(model, trainer.lagrangian.value)
    model.prune()
    model.save_pretrained(prep.output)
    counts = model.parameter_counts()
    counts["active_per_token"] = counts["base"] + counts["delta"]
    stats.update({"parameter_counts": counts, "config": config.to_dict(),
                  "ablation": {"targets": job.targets, "ortho": job.ortho,
                               "sparsity_constraint": job.sparsity_constraint,
                               "routing": job.routing}})
    return finish(prep, "simoe", trainer.state.global_step, result.training_loss, stats)
