"""Is a SIMoE run healthy? Five checks on what the run (and its evaluation) says, each a
`Finding` with the numbers behind it; a check whose data is absent is 'skipped' with the reason.

    constraint        the constrained sparsity (union, mean or every expert's, as trained) is
                      within ±SPARSITY_TOLERANCE of τ; union, mean and per-expert sparsity are
                      always quoted
    dead_expert       no expert is gated off entirely (per-expert sparsity ≥ 1 − 1e-9)
    unused_expert     every expert's mean routing weight α is at least 1/(4M)
    routing_collapse  routing entropy at least ENTROPY_AT_8 · ln M / ln 8 nats
    dendrogram        the tasks' mean α differ enough (max pairwise distance ≥ DENDROGRAM_MIN)
                      for the routing dendrogram to mean anything

The thresholds are those of the acceptance criteria in shared/design/SIMOE.md. Only SIMoE runs
are checked: baselines have no gates, constraint or router.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .routing_figures import task_distances
from .run_data import NO_EVAL, Run, overall_alpha, tail_mean
from .run_data import task_alpha as alpha_per_task  # health_checks' argument is task_alpha

#: |constrained sparsity − τ| above this is a warning (missed below, overshot above).
SPARSITY_TOLERANCE = 0.03
#: An expert whose sparsity is at least this keeps no parameter: dead.
DEAD_SPARSITY = 1.0 - 1e-9
#: An expert whose mean α is below UNUSED_FRACTION / M is unused (1/(4M)).
UNUSED_FRACTION = 0.25
#: Routing entropy (nats) below which routing has collapsed, for M = 8 experts.
ENTROPY_AT_8 = 0.5
#: Largest pairwise distance between the tasks' mean α (the dendrogram's metric) below which
#: the dendrogram only draws noise: 0.02 is 2% of routing weight moved between two experts.
DENDROGRAM_MIN = 0.02
#: The metrics log is averaged over this last fraction of its logged rows.
TAIL_FRACTION = 0.2
CONSTRAINTS = ("union", "mean", "per-expert")


@dataclass(frozen=True)
class Finding:
    """One check's outcome: severity 'warning' | 'ok' | 'skipped', a one-line message."""

    severity: str
    check: str
    message: str


def entropy_threshold(m: int) -> float:
    """ENTROPY_AT_8 · ln M / ln 8 nats: 0.5 for M = 8, scaled to the maximum entropy ln M."""
    return ENTROPY_AT_8 * math.log(m) / math.log(8)


def _numbered(row: dict[str, Any], prefix: str) -> list[float]:
    """row[prefix0], row[prefix1], ... while present."""
    out = []
    while isinstance(row.get(f"{prefix}{len(out)}"), (int, float)):
        out.append(float(row[f"{prefix}{len(out)}"]))
    return out


def sparsity_figures(run: Run) -> tuple[dict[str, Any] | None, str]:
    """{'mean', 'union', 'per_expert'} sparsity and where it came from: final_stats.json's
    ``sparsity`` (nested, or flat ``sparsity_mean``/``sparsity_union``/``sparsity_per_expert``),
    else the last metrics.jsonl row that logs it. (None, why) when neither has it."""
    st = run.stats
    sp = st.get("sparsity")
    if isinstance(sp, dict) and any(sp.get(k) is not None for k in ("mean", "union")):
        return {k: sp.get(k) for k in ("mean", "union", "per_expert")}, "final_stats.json"
    flat = {k: st.get(f"sparsity_{k}") for k in ("mean", "union", "per_expert")}
    if flat["mean"] is not None or flat["union"] is not None:
        return flat, "final_stats.json"
    for row in reversed(run.metrics):
        if "sparsity_union" in row or "sparsity_mean" in row:
            return {"mean": row.get("sparsity_mean"), "union": row.get("sparsity_union"),
                    "per_expert": _numbered(row, "sparsity_expert_") or None}, \
                "the last metrics.jsonl row"
    return None, "neither final_stats.json nor metrics.jsonl reports sparsity"


def constraint_kind(stats: dict[str, Any]) -> str:
    """final_stats.json's ``constraint``, else its ``training_args.constraint``, else 'union'."""
    kind = stats.get("constraint") or (stats.get("training_args") or {}).get("constraint")
    return str(kind or "union").replace("_", "-")


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _experts(values: list[float], digits: int = 3) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"


def _check_constraint(run: Run, sp: dict[str, Any] | None, source: str) -> Finding:
    def say(severity: str, text: str) -> Finding:
        return Finding(severity, "constraint", text)

    st, cfg = run.stats, run.stats.get("config") or {}
    if (st.get("ablation") or {}).get("sparsity_constraint") is False or \
            (st.get("training_args") or {}).get("sparsity_constraint") is False:
        return say("skipped", "trained without a sparsity constraint (free masks)")
    tau = cfg.get("target_sparsity", st.get("target_sparsity"))
    if tau is None:
        return say("skipped", "no target sparsity τ in final_stats.json")
    if sp is None:
        return say("skipped", source)
    kind = constraint_kind(st)
    if kind not in CONSTRAINTS:
        return say("skipped", f"unknown constraint {kind!r} (expected one of {CONSTRAINTS})")
    per = sp.get("per_expert") or []
    numbers = (f"union {_num(sp.get('union'))}, mean {_num(sp.get('mean'))}, per expert "
               f"{_experts(per) if per else '–'} ({source})")
    lo, hi = tau - SPARSITY_TOLERANCE, tau + SPARSITY_TOLERANCE
    eps = 1e-9  # 0.78 − 0.75 is 0.0300...03 in floating point
    if kind == "per-expert":
        if not per:
            return say("skipped", f"per-expert constraint but no per-expert sparsity; {numbers}")
        off = [(i, s) for i, s in enumerate(per) if abs(s - tau) > SPARSITY_TOLERANCE + eps]
        if off:
            which = ", ".join(f"e{i} {s:.3f}" for i, s in off)
            return say("warning", f"{len(off)} of {len(per)} experts' sparsity outside "
                       f"τ ± {SPARSITY_TOLERANCE:g} = [{lo:.3f}, {hi:.3f}] ({which}); {numbers}")
        return say("ok", f"every expert's sparsity within τ ± {SPARSITY_TOLERANCE:g} = "
                   f"[{lo:.3f}, {hi:.3f}]; {numbers}")
    value = sp.get(kind)
    if value is None:
        return say("skipped", f"{kind} constraint but no {kind} sparsity; {numbers}")
    if value < lo - eps:
        verdict, severity = f"missed: below τ − {SPARSITY_TOLERANCE:g} = {lo:.3f}", "warning"
    elif value > hi + eps:
        verdict, severity = f"overshot: above τ + {SPARSITY_TOLERANCE:g} = {hi:.3f}", "warning"
    else:
        verdict, severity = f"within τ ± {SPARSITY_TOLERANCE:g}", "ok"
    return say(severity, f"{kind} sparsity {value:.3f} vs τ = {tau:g} ({verdict}); {numbers}")


def _check_dead(sp: dict[str, Any] | None, source: str) -> Finding:
    per = (sp or {}).get("per_expert")
    if not per:
        return Finding("skipped", "dead_expert", "no per-expert sparsity" if sp else source)
    dead = [i for i, s in enumerate(per) if s >= DEAD_SPARSITY]
    if dead:
        return Finding("warning", "dead_expert",
                       f"{len(dead)} of {len(per)} experts keep no parameter (sparsity 1): "
                       f"{', '.join(f'e{i}' for i in dead)} ({source})")
    top = max(range(len(per)), key=lambda i: per[i])
    return Finding("ok", "dead_expert", f"all {len(per)} experts keep parameters (highest "
                   f"sparsity e{top} {per[top]:.3f}; {source})")


def mean_alpha(run: Run, ta: dict[str, Any] | None) -> tuple[list[float] | None, str]:
    """Mean α per expert: over the evaluated instances when ``ta`` (task_alpha) is given, else
    metrics.jsonl's ``alpha_mean_i`` over its last TAIL_FRACTION of logged rows."""
    if ta is not None:
        n = ta.get("n") or [1] * len(ta["alpha"])
        return overall_alpha(ta), f"eval predictions, {sum(n)} instances of {len(n)} tasks"
    keys = sorted({k for r in run.metrics for k in r if re.fullmatch(r"alpha_mean_\d+", k)},
                  key=lambda k: int(k.rsplit("_", 1)[1]))
    if not keys:
        return None, "neither eval predictions with alpha nor alpha_mean_i in metrics.jsonl"
    tails = [tail_mean(run.metrics, k, TAIL_FRACTION) for k in keys]
    return [t[0] for t in tails], f"metrics.jsonl, mean of the last {tails[0][1]} logged rows"


def _check_unused(means: list[float] | None, source: str) -> Finding:
    if not means:
        return Finding("skipped", "unused_expert", source)
    floor = UNUSED_FRACTION / len(means)
    low = [(i, a) for i, a in enumerate(means) if a < floor]
    if low:
        which = ", ".join(f"e{i} {a:.3f}" for i, a in low)
        return Finding("warning", "unused_expert",
                       f"{len(low)} of {len(means)} experts' mean α below 1/(4M) = {floor:.3f}:"
                       f" {which}; all {_experts(means)} ({source})")
    i = min(range(len(means)), key=lambda j: means[j])
    return Finding("ok", "unused_expert", f"lowest mean α e{i} {means[i]:.3f} ≥ 1/(4M) = "
                   f"{floor:.3f}; all {_experts(means)} ({source})")


def _num_experts(run: Run, means: list[float] | None, sp: dict[str, Any] | None) -> int | None:
    m = (run.stats.get("config") or {}).get("num_experts")
    if m:
        return int(m)
    if means:
        return len(means)
    return len((sp or {}).get("per_expert") or []) or None


def _check_entropy(run: Run, m: int | None) -> Finding:
    entropy, rows = tail_mean(run.metrics, "routing_entropy", TAIL_FRACTION)
    if entropy is None:
        return Finding("skipped", "routing_collapse", "metrics.jsonl logs no routing_entropy")
    if not m or m < 2:
        return Finding("skipped", "routing_collapse", f"{m or 'unknown number of'} expert(s): "
                       "no routing to collapse")
    floor = entropy_threshold(m)
    text = (f"routing entropy {entropy:.3f} nats (metrics.jsonl, mean of the last {rows} logged "
            f"rows; maximum ln {m} = {math.log(m):.3f})")
    if entropy < floor:
        return Finding("warning", "routing_collapse", f"{text} below {floor:.3f} = "
                       f"{ENTROPY_AT_8:g}·ln {m}/ln 8: routing has collapsed onto few experts")
    return Finding("ok", "routing_collapse", f"{text} ≥ {floor:.3f}")


def _check_dendrogram(ta: dict[str, Any] | None, why: str) -> Finding:
    if ta is None:
        return Finding("skipped", "dendrogram", why)
    if len(ta["tasks"]) < 2:
        return Finding("skipped", "dendrogram", f"only {len(ta['tasks'])} task evaluated")
    dist = task_distances(ta)
    top = float(dist.max())
    text = (f"largest distance between two tasks' mean α {top:.4f} (euclidean, "
            f"{len(ta['tasks'])} tasks)")
    if top < DENDROGRAM_MIN:
        return Finding("warning", "dendrogram", f"{text} < {DENDROGRAM_MIN:g}: routing barely "
                       "depends on the task, the routing dendrogram is not informative")
    return Finding("ok", "dendrogram", f"{text} ≥ {DENDROGRAM_MIN:g}")


def health_checks(run: Run, task_alpha: dict[str, Any] | None = None) -> list[Finding]:
    """The five checks of a SIMoE run, in the module docstring's order ([] for baselines).

    ``task_alpha`` (run_data.task_alpha of the eval predictions) defaults to the run's paired
    predictions, if any; mean α per expert is taken from it when present, else from the
    metrics log. The routing-collapse threshold is ENTROPY_AT_8 · ln M / ln 8 nats (0.5 for
    M = 8), i.e. the same fraction of the maximum entropy ln M for every M.
    """
    if run.method != "simoe":
        return []
    ta, why = task_alpha, NO_EVAL
    if ta is None and run.predictions is not None:
        ta = alpha_per_task(run.predictions)
        why = f"the predictions in `{run.eval_dir}` carry no alpha"
    sp, source = sparsity_figures(run)
    means, alpha_source = mean_alpha(run, ta)
    return [_check_constraint(run, sp, source), _check_dead(sp, source),
            _check_unused(means, alpha_source),
            _check_entropy(run, _num_experts(run, means, sp)), _check_dendrogram(ta, why)]

