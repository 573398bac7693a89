"""`train(job)`: one run of any method, from a job to a finished run directory.

    CLI -> TrainJob (validated) -> claim the run directory -> prepare (data, tokenizer, base)
        -> job.json -> method.build -> method.trainer -> Trainer.train -> method.save
        -> final_stats.json

A finished run directory holds what the method saved (SIMoE: simoe_config.json +
simoe_model.safetensors, pruned; baselines: a plain transformers model), the tokenizer,
job.json, final_stats.json, metrics.jsonl and checkpoint-N/ directories.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..loading import resolve_model_reference
from ..runtime import atomic_write_json, check_output_dir, peak_memory_mb
from .distributed import gather_parameters, is_main, num_processes, on_main, wait_for_everyone
from .job import Prepared, TrainJob, prepare
from .methods import get_method, unused_settings
from .rundir import FINAL_STATS_NAME, auto_resume, claim, write_job
from .validation import job_record

logger = logging.getLogger(__name__)


def train(job: TrainJob) -> Path:
    """Run ``job`` with the method it names; returns the finished run directory.

    Before any work: the output must be writable and empty unless the job resumes it (same
    hyper-parameters, newest complete checkpoint; a finished run is left unchanged) or
    overwrites it. ``resume="auto"``: reuse a finished run, resume a partial one, else start.
    A run that fails before training starts removes what it created."""
    if job.resume == "auto":
        resume = on_main(lambda: auto_resume(Path(job.output)))
        job = dataclasses.replace(job, resume=resume)
    method = get_method(job.method)
    method.check(job)
    unused = unused_settings(job)
    if unused:
        logger.warning("--method %s does not use %s: ignored", job.method, ", ".join(unused))
    check_output_dir(job.output)
    processes = num_processes()
    # Under `accelerate launch` the main process claims the directory and writes every file;
    # the others share its decision (or its error) and wait where it writes.
    record = on_main(lambda: job_record(job, processes))
    run = on_main(lambda: claim(job, record))
    if run.finished:
        logger.info("%s is a finished run (%s): nothing to resume, weights unchanged",
                    run.path, FINAL_STATS_NAME)
        return run.path
    try:
        prep = prepare(job, task_routing=method.needs_task_ids(job), checkpoint=run.checkpoint)
        prep.base_fingerprint = record["base_fingerprint"]
        if is_main():
            if job.overwrite and run.existed:
                run.clear()
            write_job(prep.output, record)
        wait_for_everyone()
        model = method.build(prep)
        trainer = method.trainer(prep, model)
    except BaseException:
        if is_main():
            run.clean_up()
        raise
    result = trainer.train(resume_from_checkpoint=prep.checkpoint)
    if getattr(trainer, "is_fsdp_enabled", False):  # FSDP2: the trained state whole, to save
        trainer.optimizer = None  # its moments are no longer needed
        with torch.no_grad():
            gather_parameters(method.trained_modules(model))
    path = on_main(lambda: finish(prep, method.name, trainer.state.global_step,
                                  result.training_loss, method.save(prep, model, trainer)))
    wait_for_everyone()
    return path


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
        "base_fingerprint": prep.base_fingerprint,
    })
    prep.tokenizer.save_pretrained(prep.output)
    atomic_write_json(prep.output / FINAL_STATS_NAME, stats)
    return prep.output
