"""SNI metrics: ROUGE-L F and exact match, as the benchmark's official script computes them
(``../shared/data/sni-mini/reference/eval_automatic_evaluation.py``, default track):
``rouge_score`` with ``use_stemmer=True`` and its default English tokenizer, the best score
over the references, x100. Aggregation: mean per task, mean of task scores per category, and
overall = mean over categories (the paper's Avg. column)."""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import lru_cache
from statistics import fmean
from typing import Any


@lru_cache(maxsize=1)
def _scorer():  # noqa: ANN202 - rouge_score.rouge_scorer.RougeScorer
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (SQuAD's, articles kept)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(text.split())


def rouge_l(prediction: str, references: Iterable[str]) -> float:
    """Best ROUGE-L F over the references, x100."""
    scorer = _scorer()
    return 100.0 * max(scorer.score(target=ref, prediction=prediction)["rougeL"].fmeasure
                       for ref in references)


def exact_match(prediction: str, references: Iterable[str]) -> float:
    """100 if the normalised prediction equals a normalised reference, else 0."""
    pred = normalize_answer(prediction)
    return 100.0 * any(pred == normalize_answer(ref) for ref in references)


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Scores of prediction records (task, category, rougeL, exact_match) per task, per
    category (mean of its tasks) and overall (mean of the categories)."""
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    category_of: dict[str, str] = {}
    for r in records:
        task = r.get("task") or "unknown"
        by_task[task].append(r)
        category_of[task] = r.get("category") or "unknown"
    per_task = {
        task: {"category": category_of[task], "n": len(rows),
               "rougeL": fmean(r["rougeL"] for r in rows),
               "exact_match": fmean(r["exact_match"] for r in rows)}
        for task, rows in sorted(by_task.items())
    }
    tasks_of: dict[str, list[str]] = defaultdict(list)
    for task, category in category_of.items():
        tasks_of[category].append(task)
    per_category = {
        cat: {"tasks": len(tasks), "n": sum(per_task[t]["n"] for t in tasks),
              "rougeL": fmean(per_task[t]["rougeL"] for t in tasks),
              "exact_match": fmean(per_task[t]["exact_match"] for t in tasks)}
        for cat, tasks in sorted(tasks_of.items())
    }
    n = sum(v["n"] for v in per_task.values())
    overall = {
        "rougeL": fmean(v["rougeL"] for v in per_category.values()) if per_category else 0.0,
        "exact_match": fmean(v["exact_match"] for v in per_category.values())
        if per_category else 0.0,
        "categories": len(per_category), "tasks": len(per_task), "n": n,
    }
    return {"overall": overall, "per_category": per_category, "per_task": per_task}
