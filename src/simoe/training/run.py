"""`train(job)`: one run of any method, from a job to a finished run directory.

    CLI -> TrainJob -> prepare (data, tokenizer, base) -> method.build -> method.trainer
        -> Trainer.train -> method.save -> final_stats.json

A finished run directory holds what the method saved (SIMoE: simoe_config.json +
simoe_model.safetensors, pruned; baselines: a plain transformers model), the tokenizer,
final_stats.json, metrics.jsonl and checkpoint-N/ directories.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..loading import resolve_model_reference
from ..runtime import atomic_write_json, peak_memory_mb
from .job import Prepared, TrainJob, prepare
from .methods import get_method
from .rundir import FINAL_STATS_NAME


def train(job: TrainJob) -> Path:
    """Run ``job`` with the method it names; returns the finished run directory."""
    method = get_method(job.method)
    method.check(job)
    prep = prepare(job, task_routing=method.needs_task_ids(job))
    model = method.build(prep)
    trainer = method.trainer(prep, model)
    result = trainer.train(resume_from_checkpoint=prep.checkpoint)
    stats = method.save(prep, model, trainer)
    return finish(prep, method.name, trainer.state.global_step, result.training_loss, stats)


def finish(prep: Prepared, method: str, steps: int, train_loss: float,
           stats: dict[str, Any]) -> Path:
    """Write final_stats.json with what every method reports, and the tokenizer."""
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
        "base_model": resolve_model_reference(prep.job.model),
    })
    prep.tokenizer.save_pretrained(prep.output)
    atomic_write_json(prep.output / FINAL_STATS_NAME, stats)
    return prep.output
