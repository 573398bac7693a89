"""The run directory: where a run's logs and results live, how a run claims it, and how a
resumed run finds its place.

    run dir/  job.json   final_stats.json   metrics.jsonl   checkpoint-N/   routing_cache/
              (+ what the method saves)

A run never replaces another by accident: a non-empty directory needs ``resume`` (continue it,
with the same hyper-parameters, from its newest *complete* checkpoint) or ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..runtime import atomic_write_json, atomic_write_text, check_output_dir
from .validation import JOB_NAME, job_differences

logger = logging.getLogger(__name__)

FINAL_STATS_NAME = "final_stats.json"
METRICS_NAME = "metrics.jsonl"
ROUTING_CACHE_DIR = "routing_cache"

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("simoe_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                 "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
# What only a run writes: a directory holding one of these may be overwritten.
_RUN_MARKERS = (JOB_NAME, FINAL_STATS_NAME, METRICS_NAME, "simoe_config.json")


class MetricsLogger(TrainerCallback):
    """Appends every training log (loss and, for SIMoE, the vital signs) to metrics.jsonl.

    When training begins (the checkpoint, if any, already loaded) the log keeps only the lines
    up to the step it starts from: a fresh run starts an empty log, a resumed run drops the lines
    it is about to redo. Nothing is trimmed before a resume has found its checkpoint."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.is_world_process_zero:
            trim_metrics(self.path, state.global_step)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if state.is_world_process_zero and logs and "loss" in logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        return control


def trim_metrics(log: Path, step: int) -> None:
    """Keep the lines of ``log`` logged at or before ``step`` (a half-written last line is
    dropped); create the log if it is missing."""
    if not log.is_file():
        log.touch()
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(log, "".join(ln + "\n" for ln in kept))


# ---------------------------------------------------------------------- checkpoints
def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (None when it is): it needs a readable
    trainer_state.json (the Trainer writes it last), model weights and an optimizer state."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "missing trainer_state.json"
    try:
        int(json.loads(state.read_text())["global_step"])
    except (ValueError, KeyError, TypeError):
        return "unreadable trainer_state.json"
    if not any((path / n).is_file() for n in _WEIGHT_FILES):
        return f"missing the weights ({' / '.join(_WEIGHT_FILES[:2])})"
    if not any(p.name.startswith("optimizer") or p.name.startswith("global_step")
               for p in path.iterdir()):
        return "missing the optimizer state (optimizer.pt)"
    return None


def checkpoints(output: Path) -> list[Path]:
    """The checkpoint-N directories of ``output``, oldest step first."""
    if not output.is_dir():
        return []
    found = [p for p in output.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))  # type: ignore[union-attr]


def auto_resume(output: Path) -> bool:
    """``resume="auto"`` (scripts and sweeps): True when ``output`` holds a finished run (it is
    reused as it is) or a complete checkpoint (it is resumed), else False (a fresh run, which
    still refuses a non-empty directory)."""
    output = Path(output).expanduser()
    return (output / FINAL_STATS_NAME).is_file() or any(
        checkpoint_problem(p) is None for p in checkpoints(output))


def resume_checkpoint(output: Path, resume: str | bool) -> str | None:
    """The checkpoint a run resumes from: the one given (it must be complete), the newest
    complete one in ``output``, or None. Says in one log line which it took and what it
    skipped."""
    if not resume:
        return None
    if isinstance(resume, str):
        path = Path(resume).expanduser()
        if not path.is_dir() and (output / resume).is_dir():
            path = output / resume
        if not path.is_dir():
            raise FileNotFoundError(f"--resume: checkpoint {resume} does not exist")
        problem = checkpoint_problem(path)
        if problem:
            raise ValueError(f"--resume: {path} is an incomplete checkpoint ({problem})")
        logger.info("resuming from %s", path)
        return str(path)
    skipped = []
    for path in reversed(checkpoints(output)):
        problem = checkpoint_problem(path)
        if problem is None:
            note = f"; skipped incomplete {', '.join(skipped)}" if skipped else ""
            (logger.warning if skipped else logger.info)("resuming from %s%s", path, note)
            return str(path)
        skipped.append(f"{path.name} ({problem})")
    detail = f" (incomplete: {', '.join(skipped)})" if skipped else ""
    raise FileNotFoundError(f"--resume: no complete checkpoint-* directory in {output}{detail}; "
                            "start it again with --overwrite")


# ---------------------------------------------------------------------- claiming the directory
@dataclass
class RunDir:
    """A run directory as this invocation found it: whether it existed and what it held, so a
    run that fails before training removes only what it created."""

    path: Path
    existed: bool
    before: set[str] = field(default_factory=set)
    checkpoint: str | None = None
    finished: bool = False

    def clean_up(self) -> None:
        """Remove what this invocation added (the whole directory if it created it)."""
        if not self.path.exists():
            return
        if not self.existed:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for entry in self.path.iterdir():
            if entry.name not in self.before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def clear(self) -> None:
        """``overwrite``: remove the previous run's files (its routing cache stays: it is keyed
        by model and prompts, so a stale entry is never read)."""
        for entry in self.path.iterdir():
            if entry.name == ROUTING_CACHE_DIR:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.before = {e.name for e in self.path.iterdir()}


def claim(job: Any, record: dict[str, Any]) -> RunDir:
    """Check ``job.output`` before any work: writable, and empty unless the job resumes it (same
    hyper-parameters as ``job.json`` records, from a complete checkpoint; a finished run is left
    as it is) or overwrites a previous run."""
    output = Path(job.output).expanduser()
    check_output_dir(output)
    existed = output.is_dir()
    entries = {e.name for e in output.iterdir()} if existed else set()
    run = RunDir(output, existed, entries)
    if job.resume:
        if not existed:
            raise FileNotFoundError(f"--resume: run directory {output} does not exist")
        recorded = output / JOB_NAME
        if recorded.is_file():
            try:
                old = json.loads(recorded.read_text())
            except ValueError as err:
                raise ValueError(f"--resume: {recorded} is not valid JSON ({err})") from None
            diff = job_differences(old, record)
            if diff:
                raise ValueError(f"--resume: {output} was started with other settings: "
                                 f"{'; '.join(diff)}. Resume with the recorded values, or "
                                 "start a new run in another --output")
        else:
            logger.warning("%s has no %s: resuming without checking the hyper-parameters",
                           output, JOB_NAME)
        if (output / FINAL_STATS_NAME).is_file():
            run.finished = True
            return run
        run.checkpoint = resume_checkpoint(output, job.resume)
        return run
    if entries - {"routing_cache"}:  # a reusable routing cache alone is not a run
        if not job.overwrite:
            raise FileExistsError(f"{output} is not empty: pass --resume to continue the run "
                                  "in it, --overwrite to replace it, or another --output")
        if not any(name in entries for name in _RUN_MARKERS) and not checkpoints(output):
            raise FileExistsError(f"--overwrite: {output} is not empty and holds no simoe run; "
                                  "refusing to delete it")
    return run


def write_job(output: Path, record: dict[str, Any]) -> None:
    """Record the job's hyper-parameters (job.json, atomically)."""
    atomic_write_json(output / JOB_NAME, record)
