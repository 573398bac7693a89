"""Analysis of finished runs: the paper's figures (expert overlap, kept capacity, routing
dendrogram, training curves, cost comparison) and a report in Markdown and self-contained HTML.

    from simoe.analysis import analyze
    summary = analyze(["runs/simoe"], ["evals/simoe"], output="analysis")
"""

from .layer_types import GENERIC_TYPES, LayerName, classify, layer_type
from .report import analyze, kept_capacity, load_run, task_alpha

__all__ = [
    "GENERIC_TYPES",
    "LayerName",
    "analyze",
    "classify",
    "kept_capacity",
    "layer_type",
    "load_run",
    "task_alpha",
]
