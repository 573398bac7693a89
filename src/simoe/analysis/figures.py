"""The figures of the experts' masks, and what every figure module shares.

    overlap_heatmap      pairwise expert-mask overlap, orthogonality weight in the title (Fig. 5)
    capacity_bars        kept capacity by generic layer type and by depth, spread over experts
                         as error bars (Fig. 4)

The other figures: routing_figures (routing heatmap and dendrogram, Fig. 2) and curve_figures
(training curves, cost comparison, Fig. 1). Shared here: the style (STYLE, DPI), new_figure,
save_figure, titled, text_colour, human. Those modules import this one, never the reverse.

Every figure function returns a JSON-serialisable dict (the numbers drawn), so tests check data,
not pixels. matplotlib runs on the non-interactive Agg backend; colour maps are perceptually
uniform (viridis/cividis/Greys, monotone in lightness) and lines/bars also differ by style or
hatch, so the figures survive grey-scale printing. Files are written atomically (temp file +
os.replace).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 150
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": DPI}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]


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


def new_figure(width: float, height: float, **kw: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure (and its axes) in the shared style."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(figsize=(width, height), layout="constrained", **kw)
    return fig, axes


def text_colour(cmap: Any, value: float) -> str:
    """Black on light cells, white on dark ones (by the cell colour's luminance)."""
    r, g, b, _ = cmap(value)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def titled(base: str, run: str | None) -> str:
    """The title, with the run's name after a dash when there is one."""
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
    fig, ax = new_figure(size + 1.0, size)
    cmap = plt.get_cmap("viridis")
    im = ax.imshow(mat, cmap=cmap, vmin=0.0, vmax=1.0)
    if m <= 16:
        fs = 8 if m <= 10 else 6
        for i in range(m):
            for j in range(m):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=fs,
                        color=text_colour(cmap, mat[i, j]))
    ticks = list(range(m))
    ax.set_xticks(ticks, [f"e{i}" for i in ticks])
    ax.set_yticks(ticks, [f"e{i}" for i in ticks])
    ax.set_xlabel("expert j")
    ax.set_ylabel("expert i")
    weight = "n/a" if ortho_weight is None else f"{ortho_weight:g}"
    ax.set_title(titled(f"Expert mask overlap, β_ortho = {weight}", run)
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
    ratios = [max(len(p), 2) for p in panels]
    fig, axes = new_figure(width, 4.0, ncols=len(panels), sharey=True,
                           gridspec_kw={"width_ratios": ratios})
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
    fig.suptitle(titled("Kept capacity of the experts", run))
    save_figure(fig, path)
    return {"by_type": by_type, "by_depth": by_depth}
