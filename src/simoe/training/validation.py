"""What a training job may say: the allowed range of every option (checked before any work),
and what a resumed run may change.

    validate_job(job)              called by TrainJob.__post_init__; one-line ValueError
    job_record(job)                the job as recorded in the run directory (job.json)
    job_differences(old, new)      the hyper-parameters a resume would change
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..loading import fingerprint, fingerprints_match, resolve_model_reference

JOB_NAME = "job.json"

# Fields a resumed run may change: where it writes, how often it logs and saves, and options
# that change neither the data nor the arithmetic of a step (routing cache, checkpointing).
RESUME_MAY_CHANGE = frozenset({"output", "resume", "overwrite", "logging_steps", "save_steps",
                               "skip_invalid", "routing_cache", "gradient_checkpointing"})


def flag(name: str) -> str:
    """The command-line flag of a TrainJob field: ``gate_lr`` -> ``--gate-lr``."""
    return "--" + name.replace("_", "-")


def _positive(job: Any, *names: str) -> None:
    for name in names:
        value = getattr(job, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{flag(name)} must be a finite number > 0, got {value}")


def _at_least(job: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(job, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{flag(name)} must be an integer >= {minimum}, got {value!r}")


def _one_of(job: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(job, name)
    if value not in choices:
        raise ValueError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")


def validate_job(job: Any) -> None:
    """Refuse values no run should accept, naming the flag and its allowed range."""
    from ..objective import CONSTRAINTS, ORTHO_FORMS

    _one_of(job, "targets", ("all", "ffn"))
    _one_of(job, "routing", ("instance", "token", "task"))
    _one_of(job, "gate_mode", ("deterministic", "stochastic"))
    _one_of(job, "constraint", tuple(CONSTRAINTS))
    _one_of(job, "ortho_form", tuple(ORTHO_FORMS))
    _one_of(job, "gate_second_moment", ("row", "element"))
    if not 0.0 <= job.sparsity < 1.0:
        raise ValueError(f"--sparsity (tau) must lie in [0, 1), got {job.sparsity}")
    if not 0.0 <= job.gate_beta1 < 1.0:
        raise ValueError(f"--gate-beta1 must lie in [0, 1), got {job.gate_beta1}")
    if not (job.ortho >= 0 and math.isfinite(job.ortho)):
        raise ValueError(f"--ortho (beta) must be a finite number >= 0, got {job.ortho}")
    if not (job.balance >= 0 and math.isfinite(job.balance)):
        raise ValueError(f"--balance must be a finite number >= 0, got {job.balance}")
    if not (job.compact_margin >= 0 and math.isfinite(job.compact_margin)):
        raise ValueError(f"--compact-margin must be a finite number >= 0, got {job.compact_margin}")
    if not 0.0 <= job.sparsity_warmup <= 1.0:
        raise ValueError(f"--sparsity-warmup must lie in [0, 1], got {job.sparsity_warmup}")
    if not 0.0 <= job.sparsity_hold <= job.sparsity_warmup:
        raise ValueError(f"--sparsity-hold must lie in [0, --sparsity-warmup], "
                         f"got {job.sparsity_hold}")
    _positive(job, "lr", "gate_lr", "router_lr", "lambda_lr", "lora_lr", "lora_alpha")
    _at_least(job, 1, "experts", "lora_r", "moe_experts", "moe_top_k", "batch_size",
              "grad_accum", "max_source_len", "max_target_len", "max_instances_per_task",
              "logging_steps", "save_steps")
    _at_least(job, 0, "num_pos_examples", "seed")
    if job.moe_top_k > job.moe_experts and job.method == "upcycle":
        raise ValueError(f"--moe-top-k must lie in [1, --moe-experts={job.moe_experts}], "
                         f"got {job.moe_top_k}")
    if job.seed >= 2**32:
        raise ValueError(f"--seed must lie in [0, 2**32), got {job.seed}")
    if isinstance(job.max_steps, bool) or not isinstance(job.max_steps, int) \
            or not (job.max_steps == -1 or job.max_steps >= 1):
        raise ValueError(f"--max-steps must be an integer >= 1, or -1 to train for --epochs, "
                         f"got {job.max_steps!r}")
    if job.max_steps == -1:
        _positive(job, "epochs")
    if not job.split:
        raise ValueError("--split must name a split, got ''")
    if job.domains and not Path(job.domains).expanduser().is_file():
        raise ValueError(f"--domains: {job.domains} is not a file (a JSON map category -> "
                         "domain)")
    if job.resume and job.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in "
                         "--output, or replace it")


def unused_settings(job: Any, used: frozenset[str], method_specific: frozenset[str]
                    ) -> list[str]:
    """``flag=value`` for every method-specific field ``job`` sets away from its default
    although its method does not use it."""
    out = []
    for f in fields(job):
        if f.name in method_specific and f.name not in used:
            value = getattr(job, f.name)
            if value != f.default:
                out.append(f"{flag(f.name)}={value}")
    return out


def _local_path(text: str | None) -> str | None:
    if not text:
        return text
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


# A run may resume on another number of processes with another per-device batch or
# accumulation, as long as the global batch (what one optimiser step sees) is the same.
_GLOBAL_BATCH_PARTS = ("batch_size", "grad_accum", "processes")


def job_record(job: Any, processes: int = 1) -> dict[str, Any]:
    """The job's fields as job.json records them: the base as an absolute path or hub id with
    its fingerprint, data and domain files as absolute paths, the number of processes and the
    global batch (batch_size x grad_accum x processes)."""
    record = {f.name: getattr(job, f.name) for f in fields(job)}
    record["processes"] = processes
    record["global_batch_size"] = job.batch_size * job.grad_accum * processes
    record["model"] = resolve_model_reference(job.model)
    record["data"] = _local_path(job.data)
    record["domains"] = _local_path(job.domains)
    record["base_fingerprint"] = fingerprint(job.model)
    return record


def job_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``flag: recorded -> now`` for every hyper-parameter a resume would change."""
    out = []
    old = dict(old)  # job.json of a run started before processes were recorded: one process
    old.setdefault("global_batch_size", old.get("batch_size", 1) * old.get("grad_accum", 1)
                   * old.get("processes", 1))
    for name, value in new.items():
        if name in RESUME_MAY_CHANGE or name in _GLOBAL_BATCH_PARTS \
                or name == "base_fingerprint" or name not in old:
            continue
        if name == "global_batch_size":
            if old[name] != value:
                out.append(f"global batch (--batch-size x --grad-accum x processes): "
                           f"{old[name]} -> {value}")
            continue
        if name == "model":
            same = fingerprints_match(old.get("base_fingerprint"), new["base_fingerprint"])
            if not same:
                out.append(f"--model: {old['model']} -> {value} (another base model)")
            continue
        if old[name] != value:
            out.append(f"{flag(name)}: {old[name]!r} -> {value!r}")
    return out
