"""The run directory: where a run's logs and results live, and how a resumed run finds its place.

    run dir/  final_stats.json   metrics.jsonl   checkpoint-N/   (+ what the method saves)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

FINAL_STATS_NAME = "final_stats.json"
METRICS_NAME = "metrics.jsonl"


class MetricsLogger(TrainerCallback):
    """Appends every training log (loss and, for SIMoE, the vital signs) to metrics.jsonl."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.is_world_process_zero:
            self.path.touch()  # a run too short to log still has its (empty) log
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if state.is_world_process_zero and logs and "loss" in logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        return control


def resume_checkpoint(output: Path, resume: str | bool) -> str | None:
    """The checkpoint a run resumes from: an explicit path, the newest in ``output``, or None."""
    if not resume:
        return None
    if isinstance(resume, str):
        return resume
    last = get_last_checkpoint(str(output)) if output.is_dir() else None
    if last is None:
        raise FileNotFoundError(f"--resume: no checkpoint-* directory in {output}")
    return last


def trim_metrics(output: Path, checkpoint: str | None) -> None:
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
