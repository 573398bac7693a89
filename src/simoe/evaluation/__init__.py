"""Evaluation: batched generation, SNI metrics, per-task/category reports."""

from .generation import LoadedModel, generate, load_for_eval
from .metrics import aggregate, exact_match, normalize_answer, rouge_l
from .run import EvalJob, comparison_report, eval_report, evaluate

__all__ = [
    "EvalJob",
    "LoadedModel",
    "aggregate",
    "comparison_report",
    "eval_report",
    "evaluate",
    "exact_match",
    "generate",
    "load_for_eval",
    "normalize_answer",
    "rouge_l",
]
