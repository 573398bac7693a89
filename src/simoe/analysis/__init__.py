"""Analysis of finished runs: the paper's figures (expert overlap, kept capacity, routing
dendrogram, training curves, cost comparison), health checks of SIMoE runs, and a report in
Markdown and self-contained HTML.

    run_data         what a run directory (and its eval) says: load_run, kept_capacity, task_alpha
    health           health_checks: constraint met, no dead/unused expert, routing not collapsed
    figures          one PNG per figure, the data drawn returned; here expert overlap and kept
                     capacity, and the style and helpers the other figure modules share
    routing_figures  routing heatmap and dendrogram of the tasks' mean alpha
    curve_figures    training curves; cost comparison of several runs
    render           Markdown / HTML, captions, tables
    report           analyze: all of the above into report.md, report.html, analysis.json

    from simoe.analysis import analyze
    summary = analyze(["runs/simoe"], ["evals/simoe"], output="analysis")
"""

from .health import Finding, health_checks
from .layer_types import GENERIC_TYPES, LayerName, classify, layer_type
from .report import analyze
from .run_data import Run, kept_capacity, load_run, task_alpha

__all__ = [
    "GENERIC_TYPES",
    "Finding",
    "LayerName",
    "Run",
    "analyze",
    "classify",
    "health_checks",
    "kept_capacity",
    "layer_type",
    "load_run",
    "task_alpha",
]
