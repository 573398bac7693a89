"""`simoe eval` and `simoe report`: predictions, metrics and Table-1-style reports.

    eval dir/  predictions.jsonl   one line per instance: task, category, id, prediction,
                                   references, rougeL, exact_match (and alpha for SIMoE)
               metrics.json        overall, per_category, per_task
               report.md           the same as tables
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import CONFIG_NAME
from ..data import DataError, encode_prompts, load_examples
from ..loading import resolve_model_reference
from ..runtime import atomic_write_text, check_output_dir, fit_source_length
from .generation import generate, load_for_eval
from .metrics import aggregate, exact_match, rouge_l

logger = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.jsonl"
METRICS_NAME = "metrics.json"
REPORT_NAME = "report.md"
EVAL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class EvalJob:
    """Everything `simoe eval` needs."""

    model: str
    data: str
    output: str
    split: str = "test"
    max_instances: int = 100
    batch_size: int = 8
    max_source_len: int = 1024
    max_new_tokens: int = 128
    num_pos_examples: int = 2
    device: str | None = None
    base_model: str | None = None
    dtype: str = "fp32"  # the base model's weights (SIMoE's own parameters stay fp32)

    def __post_init__(self) -> None:
        """Refuse values no evaluation should accept, before any work (one line each)."""
        if self.dtype not in EVAL_DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(EVAL_DTYPES)}, got "
                             f"{self.dtype!r}")
        for name, minimum in (("max_instances", 1), ("batch_size", 1), ("max_source_len", 1),
                              ("max_new_tokens", 1), ("num_pos_examples", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be an integer >= {minimum}, got {value!r}")
        if not self.split:
            raise ValueError("--split must name a split, got ''")


def _check_model_reference(model: str) -> None:
    """Fail at once on a model path that does not exist (no data loading, no Hub retries)."""
    path = Path(model).expanduser()
    if not (path.is_dir() and (path / CONFIG_NAME).is_file()):
        resolve_model_reference(model)


def evaluate(job: EvalJob) -> dict[str, Any]:
    """Generate for every instance of the split, score it, write the three files. The output
    directory is checked writable before anything is loaded; it is created only at the end."""
    start = time.time()
    out_dir = check_output_dir(job.output)
    _check_model_reference(job.model)
    if job.base_model:
        resolve_model_reference(job.base_model)
    examples = load_examples(job.data, job.split, num_pos_examples=job.num_pos_examples,
                             max_instances_per_task=job.max_instances)
    if not examples:
        raise DataError(f"{job.data}: split {job.split!r} has no instances to evaluate")
    loaded = load_for_eval(job.model, dtype=EVAL_DTYPES[job.dtype], device=job.device,
                           base_model=job.base_model)
    max_source = fit_source_length(loaded.model, job.max_source_len, job.max_new_tokens)
    routing = getattr(getattr(loaded.model, "simoe_config", None), "routing", None)
    if routing == "task":
        unknown = sorted({e.task for e in examples} - set(loaded.task_ids or {}))
        if unknown:
            raise ValueError(f"task-level routing cannot route unseen tasks: {unknown[:5]}")
    prompts = encode_prompts(examples, loaded.tokenizer, max_source,
                             task_ids=loaded.task_ids if routing == "task" else None)
    outputs = generate(loaded, prompts, job.batch_size, job.max_new_tokens)

    records = []
    for i, (ex, out) in enumerate(zip(examples, outputs, strict=True)):
        refs = ex.references or [ex.completion]
        rec = {"task": ex.task, "category": ex.category, "id": ex.id or str(i),
               "prediction": out["prediction"], "references": refs,
               "rougeL": rouge_l(out["prediction"], refs),
               "exact_match": exact_match(out["prediction"], refs)}
        if out["alpha"] is not None:
            rec["alpha"] = out["alpha"]
        records.append(rec)
    metrics = aggregate(records)
    metrics["model"] = job.model
    metrics["data"] = job.data
    metrics["split"] = job.split
    metrics["truncated_prompts"] = prompts.num_truncated
    metrics["max_source_len"] = max_source
    metrics["max_new_tokens"] = job.max_new_tokens
    metrics["dtype"] = job.dtype
    metrics["wall_time_s"] = time.time() - start

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / PREDICTIONS_NAME, "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(out_dir / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out_dir / REPORT_NAME, eval_report(metrics))
    return metrics


def eval_report(metrics: dict[str, Any]) -> str:
    """Markdown tables for one evaluation: per category and per task."""
    o = metrics["overall"]
    lines = [f"# Evaluation of `{metrics.get('model')}`", "",
             f"Data `{metrics.get('data')}`, split `{metrics.get('split')}`: {o['n']} instances, "
             f"{o['tasks']} tasks, {o['categories']} categories.", "",
             f"**Overall ROUGE-L {o['rougeL']:.2f}**, exact match {o['exact_match']:.2f} "
             "(mean over categories of the mean over their tasks).", "",
             "| category | tasks | n | ROUGE-L | EM |", "|---|---:|---:|---:|---:|"]
    for cat, v in metrics["per_category"].items():
        lines.append(f"| {cat} | {v['tasks']} | {v['n']} | {v['rougeL']:.2f} | "
                     f"{v['exact_match']:.2f} |")
    lines += ["", "| task | category | n | ROUGE-L | EM |", "|---|---|---:|---:|---:|"]
    for task, v in metrics["per_task"].items():
        lines.append(f"| {task} | {v['category']} | {v['n']} | {v['rougeL']:.2f} | "
                     f"{v['exact_match']:.2f} |")
    return "\n".join(lines) + "\n"


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _run_stats(model: str | None) -> dict[str, Any] | None:
    if not model:
        return None
    stats = Path(model) / "final_stats.json"
    try:
        return json.loads(stats.read_text()) if stats.is_file() else None
    except ValueError:
        return None


def read_metrics(eval_dir: str | os.PathLike) -> dict[str, Any]:
    """The metrics.json of an evaluation directory, checked to hold what a report reads."""
    path = Path(eval_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{eval_dir}: no {METRICS_NAME}; run `simoe eval` first")
    try:
        metrics = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object as `simoe eval` writes it")
    for key in ("per_category", "overall"):
        if not isinstance(metrics.get(key), dict):
            raise ValueError(f"{path}: lacks '{key}'; is it a `simoe eval` metrics file?")
    rouge = metrics["overall"].get("rougeL")
    if not isinstance(rouge, (int, float)) or not math.isfinite(rouge):
        raise ValueError(f"{path}: lacks a number at overall.rougeL")
    for cat, v in metrics["per_category"].items():
        if not isinstance(v, dict) or not isinstance(v.get("rougeL"), (int, float)):
            raise ValueError(f"{path}: per_category[{cat!r}] lacks a number at 'rougeL'")
    return metrics


def comparison_report(eval_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None
                      ) -> str:
    """One table in the layout of the paper's Table 1: rows = runs, columns = the categories
    present + Avg., plus stored parameters from each run's final_stats.json (Table 3 style)."""
    evals = [read_metrics(d) for d in eval_dirs]
    categories = sorted({c for m in evals for c in m["per_category"]})
    header = ["run", *categories, "Avg.", "params (stored)"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for i, m in enumerate(evals):
        name = names[i] if names else Path(eval_dirs[i]).name
        cells = [f"{m['per_category'][c]['rougeL']:.2f}" if c in m["per_category"] else "–"
                 for c in categories]
        stats = _run_stats(m.get("model"))
        params = "–"
        if stats and "parameter_counts" in stats:
            params = _human(stats["parameter_counts"]["total_stored"])
        lines.append("| " + " | ".join([name, *cells, f"{m['overall']['rougeL']:.2f}", params])
                     + " |")
    return ("ROUGE-L per category (mean over its tasks); Avg. = mean over categories.\n\n"
            + "\n".join(lines) + "\n")
