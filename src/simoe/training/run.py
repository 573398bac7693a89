"""One SIMoE training run, from a model and data source to a finished run directory.

    run dir/  simoe_config.json  simoe_model.safetensors   the pruned SIMoE state (+ tokenizer)
              final_stats.json   metrics.jsonl             one JSON line per logging step
              task_ids.json      routing_cache/            checkpoint-N/ (Trainer checkpoints)
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..config import SIMoEConfig
from ..data import SIMoECollator, build_task_ids, encode_examples, load_examples
from ..model import SIMoEModel
from .routing_cache import load_or_compute
from .stats import final_stats
from .trainer import METRICS_NAME, SIMoETrainer, SIMoETrainingArguments

logger = logging.getLogger(__name__)

FINAL_STATS_NAME = "final_stats.json"


@dataclass
class TrainJob:
    """Everything `simoe train` needs. Defaults: paper Table 6 (SNI column) and SIMOE.md."""

    model: str
    data: str
    output: str
    experts: int = 8
    sparsity: float = 0.75
    ortho: float = 5e-6
    routing: str = "instance"
    gate_mode: str = "deterministic"
    constraint: str = "mean"
    lr: float = 2e-5
    gate_lr: float = 1e-2
    router_lr: float = 1e-4
    lambda_lr: float = 0.05
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


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _model_max_length(model: torch.nn.Module) -> int | None:
    cfg = model.config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _resume_checkpoint(job: TrainJob) -> str | None:
    if not job.resume:
        return None
    if isinstance(job.resume, str):
        return job.resume
    last = get_last_checkpoint(job.output) if Path(job.output).is_dir() else None
    if last is None:
        raise FileNotFoundError(f"--resume: no checkpoint-* directory in {job.output}")
    return last


def _trim_metrics(output: Path, checkpoint: str) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be redone)."""
    state = Path(checkpoint) / "trainer_state.json"
    log = output / METRICS_NAME
    if not (state.is_file() and log.is_file()):
        return
    step = json.loads(state.read_text())["global_step"]
    lines = [ln for ln in log.read_text().splitlines() if json.loads(ln)["step"] <= step]
    log.write_text("".join(ln + "\n" for ln in lines))


def train(job: TrainJob) -> Path:
    """Train SIMoE as ``job`` says; returns the finished run directory."""
    start = time.time()
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
    max_source, max_target = job.max_source_len, job.max_target_len
    limit = _model_max_length(base)
    if limit is not None and max_source + max_target > limit:
        max_source = max(1, limit - max_target)
        logger.warning("the model reads at most %d tokens: max source length lowered to %d",
                       limit, max_source)

    task_ids = build_task_ids(examples) if job.routing == "task" else None
    encoded = encode_examples(examples, tokenizer, max_source, max_target, task_ids=task_ids)

    config = SIMoEConfig(num_experts=job.experts, target_sparsity=job.sparsity,
                         ortho_weight=job.ortho, routing=job.routing, gate_mode=job.gate_mode,
                         num_tasks=len(task_ids) if task_ids else 0,
                         base_model_name_or_path=job.model)
    model = SIMoEModel.from_base(base, config)

    output.mkdir(parents=True, exist_ok=True)
    if task_ids:
        _atomic_json(output / "task_ids.json", task_ids)
    rows: list[dict[str, Any]] = [
        {"input_ids": e.input_ids, "labels": e.labels, "routing_index": e.routing_index,
         **({"task_id": e.task_id} if e.task_id is not None else {})} for e in encoded]
    if job.routing_cache and job.routing == "instance":
        embeddings = load_or_compute(model, tokenizer, encoded, output / "routing_cache",
                                     batch_size=max(job.batch_size, 8))
        for row, emb in zip(rows, embeddings, strict=True):
            row["routing_embedding"] = emb

    args = SIMoETrainingArguments(
        output_dir=str(output), per_device_train_batch_size=job.batch_size,
        gradient_accumulation_steps=job.grad_accum, learning_rate=job.lr,
        gate_learning_rate=job.gate_lr, router_learning_rate=job.router_lr,
        lambda_learning_rate=job.lambda_lr, constraint=job.constraint,
        num_train_epochs=job.epochs, max_steps=job.max_steps, lr_scheduler_type="constant",
        weight_decay=0.0, logging_steps=job.logging_steps, save_steps=job.save_steps,
        save_total_limit=2, seed=job.seed, data_seed=job.seed, bf16=job.bf16,
        activation_checkpointing=job.gradient_checkpointing, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, **job.extra_args)
    trainer = SIMoETrainer(model=model, args=args, train_dataset=rows,
                           data_collator=SIMoECollator(tokenizer), processing_class=tokenizer)
    if checkpoint:
        _trim_metrics(output, checkpoint)
    elif (output / METRICS_NAME).exists():
        (output / METRICS_NAME).unlink()
    result = trainer.train(resume_from_checkpoint=checkpoint)

    stats = final_stats(model, trainer.lagrangian.value)
    model.prune()
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    stats.update({
        "parameter_counts": model.parameter_counts(),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "wall_time_s": time.time() - start,
        "examples": len(encoded),
        "truncated_prompts": encoded.num_truncated,
        "max_source_len": max_source,
        "max_target_len": max_target,
        "method": "simoe",
        "config": config.to_dict(),
    })
    _atomic_json(output / FINAL_STATS_NAME, stats)
    return output
