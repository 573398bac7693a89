"""`simoe analyze`: read run (and eval) directories, check SIMoE runs' health, draw every figure
that the data allows, and write report.md, a self-contained report.html (PNGs embedded) and
analysis.json.

    summary = analyze(["runs/simoe"], ["evals/simoe"], output="analysis")
    summary["files"]     every file written
    summary["health"]    {SIMoE run name: {"healthy", "findings": [{severity, check, message}]}}
    summary["skipped"]   [{"run", "figure", "reason"}] for figures the data did not allow
    summary["figures"]   {run name: {figure: the data drawn}}, summary["comparison"] likewise

What the directories hold and how it is read: run_data; the checks: health; Markdown and HTML:
render; the figures: figures (expert masks), routing_figures, curve_figures. A figure whose data
is absent is skipped and the report says why.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import curve_figures as cf
from . import figures as fg
from . import render as rd
from . import routing_figures as rf
from .health import health_checks
from .render import Block
from .run_data import (
    FINAL_STATS,
    METRICS_LOG,
    NO_EVAL,
    Run,
    StrPath,
    cost,
    kept_capacity,
    load_run,
    pair_evals,
    task_alpha,
    vital_signs,
)

logger = logging.getLogger(__name__)

#: Per-run figures, in report order: key -> (file stem, section title).
RUN_FIGURES: dict[str, tuple[str, str]] = {
    "overlap": ("overlap", "Expert overlap (Fig. 5)"),
    "capacity": ("capacity", "Kept capacity by layer type and depth (Fig. 4)"),
    "routing_alpha": ("routing_alpha", "Mean routing weight per task (Fig. 2)"),
    "routing_dendrogram": ("routing_dendrogram", "Tasks clustered by routing (Fig. 2)"),
    "training_curves": ("training_curves", "Training curves"),
}
COMPARISON = ("comparison", "Parameters and memory side by side (Fig. 1 / Table 8)")


# ---------------------------------------------------------------------------------- files
def _atomic_write(path: Path, data: str | bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def _unique_names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    raw = list(names) if names else [p.resolve().name for p in paths]
    seen: dict[str, int] = defaultdict(int)
    out = []
    for n in raw:
        n = _slug(n)
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


# ---------------------------------------------------------------------------------- driver
def _run_figures(run: Run, ta: dict[str, Any] | None, output: Path, prefix: str,
                 files: list[Path], skipped: list[dict[str, str]]
                 ) -> tuple[dict[str, Any], list[Block]]:
    """Draw every figure of one run the data allows (``ta``: its task_alpha); returns the data
    and report blocks."""
    data: dict[str, Any] = {}
    blocks: list[Block] = []
    label = run.name

    def skip(fig: str, reason: str) -> None:
        skipped.append({"run": run.name, "figure": fig, "reason": reason})

    def draw(fig: str, fn: Any, *args: Any, **kw: Any) -> dict[str, Any] | None:
        path = output / f"{prefix}{RUN_FIGURES[fig][0]}.png"
        try:
            d = fn(*args, path, **kw)
        except (KeyError, ValueError, TypeError, IndexError) as err:
            logger.warning("%s: figure %s failed: %s", run.name, fig, err)
            skip(fig, f"the data could not be drawn ({type(err).__name__}: {err})")
            return None
        files.append(path)
        data[fig] = d
        return d

    is_simoe = run.method == "simoe"
    # (1) overlap
    if "overlap" in run.stats:
        cfg = run.stats.get("config") or {}
        w = cfg.get("ortho_weight", (run.stats.get("ablation") or {}).get("ortho"))
        d = draw("overlap", fg.overlap_heatmap, run.stats["overlap"], ortho_weight=w, run=label)
        if d:
            blocks += [("h3", RUN_FIGURES["overlap"][1]),
                       ("img", f"{prefix}overlap.png", f"expert overlap of {label}"),
                       ("p", rd.overlap_caption(d))]
    else:
        skip("overlap", f"final_stats.json has no overlap matrix (method {run.method!r})"
             if run.stats else f"no {FINAL_STATS}")
    # (2) capacity
    cap = kept_capacity(run) if is_simoe or "kept_capacity" in run.stats else None
    if cap:
        d = draw("capacity", fg.capacity_bars, cap, run=label)
        if d:
            d.update({k: v for k, v in cap.items() if k not in ("by_type", "by_depth")})
            blocks += [("h3", RUN_FIGURES["capacity"][1]),
                       ("img", f"{prefix}capacity.png", f"kept capacity of {label}"),
                       ("p", rd.capacity_caption(cap, run)), rd.capacity_table(cap)]
    else:
        skip("capacity", "no kept-capacity data (no SIMoE checkpoint and no kept_capacity in "
             f"{FINAL_STATS}; method {run.method!r})")
    # (3) routing
    if run.predictions is None:
        reason = NO_EVAL
        skip("routing_alpha", reason)
        skip("routing_dendrogram", reason)
    elif ta is None:
        reason = (f"the predictions in `{run.eval_dir}` carry no alpha (not a SIMoE model, or "
                  "token-level routing)")
        skip("routing_alpha", reason)
        skip("routing_dendrogram", reason)
    else:
        dend = None
        if len(ta["tasks"]) >= 2:
            dend = draw("routing_dendrogram", rf.routing_dendrogram, ta, run=label)
        else:
            skip("routing_dendrogram", f"only {len(ta['tasks'])} task evaluated; clustering "
                 "needs at least 2")
        d = draw("routing_alpha", rf.routing_heatmap, ta,
                 order=dend["leaves"] if dend else None, run=label)
        if d:
            blocks += [("h3", RUN_FIGURES["routing_alpha"][1]),
                       ("img", f"{prefix}routing_alpha.png", f"mean alpha per task, {label}"),
                       ("p", rd.routing_caption(d))]
        if dend:
            blocks += [("h3", RUN_FIGURES["routing_dendrogram"][1]),
                       ("img", f"{prefix}routing_dendrogram.png", f"task dendrogram, {label}"),
                       ("p", rd.dendrogram_caption(dend))]
    # (4) curves
    if run.metrics:
        d = draw("training_curves", cf.training_curves, run.metrics,
                 target_sparsity=run.stats.get("target_sparsity"), run=label)
        if d:
            blocks += [("h3", RUN_FIGURES["training_curves"][1]),
                       ("img", f"{prefix}training_curves.png", f"training curves of {label}"),
                       ("p", rd.curves_caption(d, run))]
    else:
        skip("training_curves", f"no {METRICS_LOG} (or it is empty)")
    return data, blocks


def analyze(runs: Sequence[StrPath], eval_dirs: Sequence[StrPath] = (),
            output: StrPath = "analysis", names: Sequence[str] | None = None) -> dict[str, Any]:
    """Write every figure the runs (and evals) allow, report.md, report.html and analysis.json
    into ``output``; returns the summary (files, health of the SIMoE runs, skipped figures with
    reasons, figure data). The report opens with the SIMoE runs' health.

    Eval directories are matched to runs by the model path in their metrics.json, else to the
    only run, else by position. With one run the PNGs are ``overlap.png`` etc.; with several,
    each is prefixed by the run's name (``<name>_overlap.png``).
    """
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if isinstance(eval_dirs, (str, os.PathLike)):
        eval_dirs = [eval_dirs]
    if not runs:
        raise ValueError("analyze needs at least one run directory")
    if names is not None and len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    paths = [Path(r) for r in runs]
    loaded = [load_run(p, n) for p, n in zip(paths, _unique_names(paths, names), strict=True)]
    notes = pair_evals(loaded, eval_dirs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    fig_data: dict[str, dict[str, Any]] = {}
    several = len(loaded) > 1
    signs = {r.name: vital_signs(r) for r in loaded}
    alphas = {r.name: task_alpha(r.predictions) if r.predictions is not None else None
              for r in loaded}
    health = {r.name: health_checks(r, alphas[r.name]) for r in loaded if r.method == "simoe"}

    blocks: list[Block] = [("h1", "SIMoE analysis"), *rd.health_blocks(health)]
    blocks.append(("table", ["run", "method", "directory", "evaluation"],
                   [[r.name, r.method, f"`{r.path}`",
                     f"`{r.eval_dir}`" if r.eval_dir else "–"] for r in loaded]))
    if notes:
        blocks.append(("ul", notes))
    blocks += [("h2", "Vital signs"), rd.vital_signs_table(loaded, signs)]
    for run in loaded:
        prefix = f"{run.name}_" if several else ""
        data, run_blocks = _run_figures(run, alphas[run.name], output, prefix, files, skipped)
        fig_data[run.name] = data
        blocks += [("h2", f"Run {run.name}"), ("p", f"`{run.path}` — method {run.method}"
                   + (f"; {'; '.join(run.notes)}" if run.notes else "") + "."), *run_blocks]

    comparison = None
    if several:
        costs = [cost(r) for r in loaded]
        if any(c[k] for c in costs for k in ("trainable", "total_stored", "active_per_token",
                                             "peak_memory_mb")):
            path = output / f"{COMPARISON[0]}.png"
            comparison = cf.comparison_bars(costs, path)
            files.append(path)
            blocks += [("h2", COMPARISON[1]), ("img", path.name, "parameters and peak memory"),
                       rd.cost_table(costs)]
        else:
            skipped.append({"run": "*", "figure": "comparison",
                            "reason": "no run reports parameter counts or peak memory"})
    else:
        skipped.append({"run": "*", "figure": "comparison",
                        "reason": "needs two or more runs"})

    blocks.append(("h2", "Skipped figures"))
    blocks.append(("ul", [f"{s['figure']} ({s['run']}): {s['reason']}" for s in skipped]
                   or ["none"]))

    summary: dict[str, Any] = {
        "output": str(output),
        "runs": [{"name": r.name, "path": str(r.path), "method": r.method,
                  "eval": str(r.eval_dir) if r.eval_dir else None, "notes": r.notes}
                 for r in loaded],
        "health": {name: {"healthy": not any(f.severity == "warning" for f in findings),
                          "findings": [asdict(f) for f in findings]}
                   for name, findings in health.items()},
        "vital_signs": signs, "figures": fig_data, "comparison": comparison,
        "skipped": skipped, "notes": notes,
    }
    md_path = _atomic_write(output / "report.md", rd.render_md(blocks))
    html_path = _atomic_write(output / "report.html",
                              rd.render_html(blocks, output, "SIMoE analysis"))
    json_path = output / "analysis.json"
    files += [md_path, html_path, json_path]
    summary["files"] = [str(f) for f in files]
    _atomic_write(json_path, json.dumps(_jsonable(summary), indent=1) + "\n")
    return summary
