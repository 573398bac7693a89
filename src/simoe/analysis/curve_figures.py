"""Figures across training and across runs.

    training_curves      NLL, sparsity per expert + union (+ target), lambda, routing entropy
    comparison_bars      parameters (trainable / stored / active per token) and peak memory
                         of several runs side by side (Fig. 1 / Table 8)

Style, saving and titles: figures.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# plt: pyplot on the Agg backend that figures selects
from .figures import human, new_figure, plt, save_figure, titled

_LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 2)),
               (0, (5, 2, 1, 2, 1, 2))]
_HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]


# ---------------------------------------------------------------------------------- curves
def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows
           if r.get(key) is not None and r.get("step") is not None
           and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    return [float(p[0]) for p in pts], [float(p[1]) for p in pts]


def _plot_nll(ax: Any, series: Mapping[str, Any]) -> None:
    if "nll" in series:
        ax.plot(series["nll"]["steps"], series["nll"]["values"], "-o", color="black",
                markersize=3, label="NLL")
    if "loss" in series:
        ax.plot(series["loss"]["steps"], series["loss"]["values"], "--s", color="0.5",
                markersize=3,
                label="training loss (full objective)" if "nll" in series else "training loss")
    ax.legend(loc="best")
    ax.set_ylabel("nats / token")
    ax.set_title("negative log-likelihood" if "nll" in series else "training loss")


def _plot_sparsity(ax: Any, series: Mapping[str, Any], expert_keys: list[str],
                   target: float | None) -> None:
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(expert_keys):
        if k in series:
            ax.plot(series[k]["steps"], series[k]["values"],
                    linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                    color=cmap(i / max(len(expert_keys) - 1, 1) * 0.85), linewidth=1.0,
                    label=f"expert {k.rsplit('_', 1)[1]}")
    if "sparsity_mean" in series:
        ax.plot(series["sparsity_mean"]["steps"], series["sparsity_mean"]["values"], "-o",
                color="black", linewidth=2.0, markersize=3, label="mean")
    if "sparsity_union" in series:
        ax.plot(series["sparsity_union"]["steps"], series["sparsity_union"]["values"], "--s",
                color="0.35", linewidth=2.0, markersize=3, label="union (off for all)")
    if "expected_sparsity_union" in series:
        exp = series["expected_sparsity_union"]
        ax.plot(exp["steps"], exp["values"],
                linestyle=(0, (4, 1, 1, 1, 1, 1)), marker="^", markersize=3, color="0.2",
                linewidth=1.5, label="expected union (1 − L0)")
    if target is not None:
        ax.axhline(target, color="0.1", linestyle="-", linewidth=3.0, alpha=0.35,
                   label=f"target τ = {target:g}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("fraction of gated parameters off")
    ax.set_title("mask sparsity")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=7)


def _plot_lambda(ax: Any, series: Mapping[str, Any]) -> None:
    ax.plot(series["lambda"]["steps"], series["lambda"]["values"], "-^", color="black",
            markersize=3)
    ax.set_ylabel("λ")
    ax.set_title("Lagrange multiplier λ")


def _plot_entropy(ax: Any, series: Mapping[str, Any], m: int) -> None:
    ax.plot(series["routing_entropy"]["steps"], series["routing_entropy"]["values"], "-D",
            color="black", markersize=3, label="mean entropy of α")
    if m > 1:
        ax.axhline(math.log(m), color="0.4", linestyle="--",
                   label=f"maximum ln {m} = {math.log(m):.2f}")
    ax.set_ylabel("nats")
    ax.set_title("routing entropy")
    ax.legend(loc="best")


def training_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                    target_sparsity: float | None = None, run: str | None = None
                    ) -> dict[str, Any]:
    """Panels from metrics.jsonl, those with data: NLL (or loss), sparsity per expert + mean +
    union (+ expected, + target), lambda, routing entropy (with its maximum ln M)."""
    rows = [r for r in rows if "step" in r]
    if not rows:
        raise ValueError("metrics.jsonl has no logged steps")
    last = {k for r in rows for k in r}
    expert_keys = sorted((k for k in last if re.fullmatch(r"sparsity_expert_\d+", k)),
                         key=lambda k: int(k.rsplit("_", 1)[1]))
    m = len([k for k in last if re.fullmatch(r"alpha_mean_\d+", k)]) or len(expert_keys)
    keys = ["loss", "nll", "lambda", "ortho", "sparsity_mean", "sparsity_union",
            "expected_sparsity_union", "routing_entropy", *expert_keys]
    series = {k: dict(zip(("steps", "values"), _series(rows, k), strict=True)) for k in keys}
    series = {k: v for k, v in series.items() if v["values"]}

    panels = []
    if "nll" in series or "loss" in series:
        panels.append(lambda ax: _plot_nll(ax, series))
    if expert_keys or "sparsity_mean" in series:
        panels.append(lambda ax: _plot_sparsity(ax, series, expert_keys, target_sparsity))
    if "lambda" in series:
        panels.append(lambda ax: _plot_lambda(ax, series))
    if "routing_entropy" in series:
        panels.append(lambda ax: _plot_entropy(ax, series, m))
    if not panels:
        raise ValueError("metrics.jsonl logs none of loss, nll, sparsity, lambda, entropy")
    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(5.0 * ncols, 3.3 * nrows + 0.3, nrows=nrows, ncols=ncols,
                           sharex=True, squeeze=False)
    flat = list(axes.flat)
    for ax, draw in zip(flat, panels, strict=False):
        draw(ax)
        ax.grid(color="0.9", linewidth=0.6)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for i in range(len(panels)):
        if i + ncols >= len(panels):  # nothing drawn below: this panel shows the step axis
            flat[i].set_xlabel("optimiser step")
            flat[i].xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(titled("Training curves", run))
    save_figure(fig, path)
    return {"series": series, "target_sparsity": target_sparsity,
            "last_step": rows[-1].get("step"), "panels": len(panels)}


# ---------------------------------------------------------------------------------- Fig. 1
PARAM_KINDS = (("trainable", "trainable"), ("total_stored", "stored"),
               ("active_per_token", "active per token"))


def comparison_bars(runs: Sequence[Mapping[str, Any]], path: str | os.PathLike
                    ) -> dict[str, Any]:
    """Several runs side by side: parameter counts (log scale) and peak memory.

    ``runs`` = [{"name", "method", "trainable", "total_stored", "active_per_token",
    "peak_memory_mb"}, ...]; missing values (None) are drawn as 'n/a'.
    """
    if not runs:
        raise ValueError("no runs to compare")
    names = [r["name"] for r in runs]
    n = len(runs)
    rotate = n > 3 or max(map(len, names)) > 10
    fig, (ax_p, ax_m) = new_figure(min(16.0, 5.5 + 1.4 * n), 4.6, ncols=2,
                                   gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(n)
    width = 0.8 / len(PARAM_KINDS)
    greys = ["0.25", "0.6", "0.9"]
    values = [v for r in runs for k, _ in PARAM_KINDS if (v := r.get(k))]
    for j, (key, label) in enumerate(PARAM_KINDS):
        pos = x + (j - (len(PARAM_KINDS) - 1) / 2) * width
        vals = [r.get(key) for r in runs]
        ax_p.bar(pos, [v if v else np.nan for v in vals], width, color=greys[j],
                 hatch=_HATCHES[j], edgecolor="black", linewidth=0.6, label=label)
        for p, v in zip(pos, vals, strict=True):
            txt = human(v) if v else "n/a"
            y = v if v else (min(values) if values else 1.0)
            ax_p.annotate(txt, (p, y), xytext=(0, 2), textcoords="offset points", ha="center",
                          va="bottom", fontsize=7, rotation=90)
    if values:
        ax_p.set_yscale("log")
        ax_p.set_ylim(min(values) / 3, max(values) * 20)
    ax_p.set_xlim(-0.6, n - 0.4)
    ax_p.set_xticks(x, names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax_p.set_ylabel("parameters (log scale)")
    ax_p.set_title("parameters")
    ax_p.legend(loc="upper left", frameon=False)

    mem = [r.get("peak_memory_mb") for r in runs]
    known = [v for v in mem if v]
    ax_m.bar(x, [v if v else np.nan for v in mem], 0.6, color="0.6", hatch="//",
             edgecolor="black", linewidth=0.6)
    log_mem = bool(known) and max(known) / min(known) > 20
    for p, v in zip(x, mem, strict=True):
        ax_m.annotate(f"{v:,.0f} MiB" if v else "n/a", (p, v if v else (min(known) if log_mem
                                                                    else 0)), xytext=(0, 2),
                      textcoords="offset points", ha="center", va="bottom", fontsize=7)
    if log_mem:
        ax_m.set_yscale("log")
    elif known:
        ax_m.set_ylim(0, max(known) * 1.15)
    else:
        ax_m.set_ylim(0, 1)
        ax_m.set_yticks([])
        ax_m.text(0.5, 0.5, "no run reports its peak memory", ha="center", va="center",
                  transform=ax_m.transAxes, color="0.4")
    ax_m.set_xlim(-0.6, n - 0.4)
    ax_m.set_xticks(x, names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax_m.set_ylabel("peak memory (MiB" + (", log scale)" if log_mem else ")"))
    ax_m.set_title("peak training memory")
    fig.suptitle("Cost of the runs side by side")
    save_figure(fig, path)
    return {"runs": [{k: r.get(k) for k in ("name", "method", "trainable", "total_stored",
                                            "active_per_token", "peak_memory_mb")}
                     for r in runs]}
