"""The paper's figures, one function each: plain data in, a PNG out, the data behind it back.

    overlap_heatmap      pairwise expert-mask overlap, orthogonality weight in the title (Fig. 5)
    capacity_bars        kept capacity by generic layer type and by depth, spread over experts
                         as error bars (Fig. 4)
    routing_heatmap      mean alpha per task (rows in dendrogram order)              (Fig. 2)
    routing_dendrogram   tasks clustered by their mean alpha, leaves prefixed by category
    training_curves      NLL, sparsity per expert + union (+ target), lambda, routing entropy
    comparison_bars      parameters (trainable / stored / active per token) and peak memory
                         of several runs side by side (Fig. 1 / Table 8)

Every function returns a JSON-serialisable dict (the numbers drawn), so tests check data, not
pixels. matplotlib runs on the non-interactive Agg backend; colour maps are perceptually uniform
(viridis/cividis/Greys, monotone in lightness) and lines/bars also differ by style or hatch, so
the figures survive grey-scale printing. Files are written atomically (temp file + os.replace).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 150
_STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
          "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": DPI}
_LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 2)),
               (0, (5, 2, 1, 2, 1, 2))]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
_HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]


# ---------------------------------------------------------------------------------- helpers
def human(n: float | None) -> str:
    """1234567 -> '1.23M'; None -> 'n/a'."""
    if n is None:
        return "n/a"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}" if isinstance(n, float) and not float(n).is_integer() else f"{int(n)}"


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to a temporary file beside ``path``, then rename it; close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _figure(width: float, height: float, **kw: Any) -> tuple[Figure, Any]:
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(figsize=(width, height), layout="constrained", **kw)
    return fig, axes


def _text_colour(cmap: Any, value: float) -> str:
    """Black on light cells, white on dark ones (by the cell colour's luminance)."""
    r, g, b, _ = cmap(value)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _title(base: str, run: str | None) -> str:
    return f"{base} — {run}" if run else base


# ---------------------------------------------------------------------------------- Fig. 5
def overlap_heatmap(matrix: Sequence[Sequence[float]], path: str | os.PathLike,
                    ortho_weight: float | None = None, run: str | None = None) -> dict[str, Any]:
    """Expert-overlap heatmap: cell (i, j) = |nz(z_i) & nz(z_j)| / |nz(z_i) | nz(z_j)|."""
    mat = np.asarray(matrix, dtype=float)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] == 0:
        raise ValueError(f"overlap matrix must be square and non-empty, got shape {mat.shape}")
    m = mat.shape[0]
    off = ~np.eye(m, dtype=bool)
    mean = float(mat[off].mean()) if m > 1 else 1.0
    data: dict[str, Any] = {"matrix": mat.tolist(), "experts": m, "mean_overlap": mean,
                            "ortho_weight": ortho_weight}
    if m > 1:
        upper = [(i, j) for i in range(m) for j in range(i + 1, m)]
        hi = max(upper, key=lambda ij: mat[ij])
        lo = min(upper, key=lambda ij: mat[ij])
        data["max_pair"] = [hi[0], hi[1], float(mat[hi])]
        data["min_pair"] = [lo[0], lo[1], float(mat[lo])]

    size = min(9.0, 2.6 + 0.45 * m)
    fig, ax = _figure(size + 1.0, size)
    cmap = plt.get_cmap("viridis")
    im = ax.imshow(mat, cmap=cmap, vmin=0.0, vmax=1.0)
    if m <= 16:
        fs = 8 if m <= 10 else 6
        for i in range(m):
            for j in range(m):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=fs,
                        color=_text_colour(cmap, mat[i, j]))
    ticks = list(range(m))
    ax.set_xticks(ticks, [f"e{i}" for i in ticks])
    ax.set_yticks(ticks, [f"e{i}" for i in ticks])
    ax.set_xlabel("expert j")
    ax.set_ylabel("expert i")
    weight = "n/a" if ortho_weight is None else f"{ortho_weight:g}"
    ax.set_title(_title(f"Expert mask overlap, β_ortho = {weight}", run)
                 + f"\nmean off-diagonal overlap {mean:.3f}")
    fig.colorbar(im, ax=ax, shrink=0.85, label="|z_i ∩ z_j| / |z_i ∪ z_j| (non-zero gates)")
    save_figure(fig, path)
    return data


# ---------------------------------------------------------------------------------- Fig. 4
def _bar_panel(ax: Any, groups: Mapping[str, Mapping[str, Any]], labels: list[str],
               colour: Any, xlabel: str) -> None:
    keys = list(groups)
    x = np.arange(len(keys))
    means = np.array([groups[k]["mean"] for k in keys], dtype=float)
    stds = [groups[k].get("std") for k in keys]
    err = np.array([s if s is not None else 0.0 for s in stds], dtype=float)
    ax.bar(x, means, width=0.7, color=colour, edgecolor="black", linewidth=0.6,
           label="mean over experts")
    ax.errorbar(x, means, yerr=err, fmt="none", ecolor="black", elinewidth=1.0, capsize=3,
                label="± std over experts")
    unions = [groups[k].get("union") for k in keys]
    if any(u is not None for u in unions):
        ax.scatter(x, [u if u is not None else np.nan for u in unions], marker="D",
                   facecolor="white", edgecolor="black", zorder=3, s=22,
                   label="union (kept by any expert)")
    rotate = max(map(len, labels)) > 7 or len(keys) > 16
    ax.set_xticks(x, labels, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  rotation_mode="anchor")
    ax.set_ylim(0, 1.08)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", color="0.85", linewidth=0.6)
    ax.set_axisbelow(True)


def capacity_bars(capacity: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  path: str | os.PathLike, run: str | None = None) -> dict[str, Any]:
    """Kept capacity (fraction of non-zero expert parameters) by layer type and by depth.

    ``capacity`` = {"by_type": {type: {"mean", "std", "union", "parameters"}}, "by_depth":
    {"0": ..., "1": ..., "other": ...}}; bars = mean over experts, error bars = std over
    experts, diamonds = union over experts.
    """
    by_type = dict(capacity.get("by_type") or {})
    by_depth = dict(capacity.get("by_depth") or {})
    if not by_type and not by_depth:
        raise ValueError("no kept-capacity data")
    for grouping in (by_type, by_depth):
        for key, g in grouping.items():
            if not 0.0 <= g["mean"] <= 1.0 + 1e-9:
                raise ValueError(f"kept capacity of {key!r} is {g['mean']}, not in [0, 1]")
    depth_labels = ["outside" if k == "other" else k for k in by_depth]
    n_type, n_depth = max(len(by_type), 1), max(len(by_depth), 1)
    width = min(16.0, 3.0 + 0.45 * (n_type + n_depth))
    panels = [p for p in (by_type, by_depth) if p]
    fig, axes = _figure(width, 4.0, ncols=len(panels), sharey=True,
                        gridspec_kw={"width_ratios": [max(len(p), 2) for p in panels]})
    axes = np.atleast_1d(axes)
    i = 0
    if by_type:
        _bar_panel(axes[i], by_type, list(by_type), "0.55", "layer type")
        axes[i].set_title("by layer type")
        i += 1
    if by_depth:
        _bar_panel(axes[i], by_depth, depth_labels, "0.8",
                   "block (depth)" + ("; outside = not in a block (e.g. final norm)"
                                      if "other" in by_depth else ""))
        axes[i].set_title("by depth")
    axes[0].set_ylabel("kept capacity (fraction of parameters)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(_title("Kept capacity of the experts", run))
    save_figure(fig, path)
    return {"by_type": by_type, "by_depth": by_depth}


# ---------------------------------------------------------------------------------- Fig. 2
def leaf_label(task: str, category: str | None) -> str:
    """'Textual Entailment · task1612_sick_label_classification'."""
    return f"{category} · {task}" if category else task


def routing_dendrogram(task_alpha: Mapping[str, Any], path: str | os.PathLike,
                       run: str | None = None, method: str = "average",
                       metric: str = "euclidean") -> dict[str, Any]:
    """Tasks clustered hierarchically by their mean alpha (scipy), leaves prefixed by category.

    ``task_alpha`` = {"tasks": [...], "categories": [...], "alpha": [[...] per task]}.
    """
    from scipy.cluster.hierarchy import dendrogram, linkage

    tasks = list(task_alpha["tasks"])
    if len(tasks) < 2:
        raise ValueError(f"a dendrogram needs at least 2 tasks, got {len(tasks)}")
    alpha = np.asarray(task_alpha["alpha"], dtype=float)
    labels = [leaf_label(t, c) for t, c in zip(tasks, task_alpha["categories"], strict=True)]
    z = linkage(alpha, method=method, metric=metric)
    height = max(3.0, 0.6 + 0.24 * len(tasks))
    longest = max(map(len, labels))
    fig, ax = _figure(min(14.0, 4.0 + 0.065 * longest), height)
    with plt.rc_context(_STYLE):
        tree = dendrogram(z, labels=labels, orientation="left", ax=ax, leaf_font_size=8,
                          color_threshold=0, above_threshold_color="black")
    ax.set_xlabel(f"{metric} distance between mean α ({method} linkage)")
    ax.set_title(_title("Tasks clustered by their mean routing α", run))
    ax.spines[["top", "right", "left"]].set_visible(False)
    save_figure(fig, path)
    order = [int(i) for i in tree["leaves"]]
    # scipy draws leaf 0 at the bottom of a left-oriented tree; report top to bottom.
    order_top_down = order[::-1]
    n = len(tasks)

    def size(node: float) -> int:
        return 1 if node < n else int(z[int(node) - n, 3])

    first = z[0]  # the closest pair: the first merge always joins two tasks
    return {"leaves": [tasks[i] for i in order_top_down],
            "labels": [labels[i] for i in order_top_down],
            "linkage": z.tolist(), "method": method, "metric": metric,
            "closest": [tasks[int(first[0])], tasks[int(first[1])], float(first[2])],
            "top_split": [size(z[-1, 0]), size(z[-1, 1]), float(z[-1, 2])]}


def routing_heatmap(task_alpha: Mapping[str, Any], path: str | os.PathLike,
                    order: Sequence[str] | None = None, run: str | None = None
                    ) -> dict[str, Any]:
    """Mean alpha per task (rows, in ``order`` if given, e.g. the dendrogram's) and expert."""
    tasks = list(task_alpha["tasks"])
    cats = list(task_alpha["categories"])
    alpha = np.asarray(task_alpha["alpha"], dtype=float)
    if alpha.ndim != 2 or alpha.shape[0] != len(tasks) or not tasks:
        raise ValueError(f"alpha must be [tasks, experts], got shape {alpha.shape}")
    idx = [tasks.index(t) for t in order] if order is not None else list(range(len(tasks)))
    alpha = alpha[idx]
    labels = [leaf_label(tasks[i], cats[i]) for i in idx]
    t, m = alpha.shape
    longest = max(map(len, labels))
    fig, ax = _figure(min(16.0, 2.5 + 0.065 * longest + 0.5 * m), max(3.0, 1.2 + 0.24 * t))
    cmap = plt.get_cmap("cividis")
    vmax = max(float(alpha.max()), 1e-9)
    im = ax.imshow(alpha, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
    if m <= 16 and t <= 60:
        for i in range(t):
            for j in range(m):
                ax.text(j, i, f"{alpha[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color=_text_colour(cmap, alpha[i, j] / vmax))
    ax.set_xticks(range(m), [f"e{j}" for j in range(m)])
    ax.set_yticks(range(t), labels)
    ax.set_xlabel("expert")
    ax.set_title(_title("Mean routing weight α per task", run))
    fig.colorbar(im, ax=ax, shrink=0.6 if t > 8 else 0.9, label="mean α")
    save_figure(fig, path)
    return {"tasks": [tasks[i] for i in idx], "categories": [cats[i] for i in idx],
            "alpha": alpha.tolist(),
            "n": [task_alpha["n"][i] for i in idx] if "n" in task_alpha else None}


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
    if "expected_sparsity" in series:
        ax.plot(series["expected_sparsity"]["steps"], series["expected_sparsity"]["values"],
                linestyle=(0, (4, 1, 1, 1, 1, 1)), marker="^", markersize=3, color="0.2",
                linewidth=1.5, label="expected (1 − L0)")
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
            "expected_sparsity", "routing_entropy", *expert_keys]
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
    fig, axes = _figure(5.0 * ncols, 3.3 * nrows + 0.3, nrows=nrows, ncols=ncols,
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
    fig.suptitle(_title("Training curves", run))
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
    fig, (ax_p, ax_m) = _figure(min(16.0, 5.5 + 1.4 * n), 4.6, ncols=2,
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
