"""Routing figures (Fig. 2): how the tasks' mean routing weights alpha spread over experts.

    routing_heatmap      mean alpha per task (rows in dendrogram order)
    routing_dendrogram   tasks clustered by their mean alpha, leaves prefixed by category
                         (task_distances: the pairwise distances it clusters; leaf_label: the
                         'category · task' label of a row or leaf)

``task_alpha`` = {"tasks": [...], "categories": [...], "alpha": [[...] per task], "n"?}, as
run_data.task_alpha builds it. Style, saving and titles: figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# plt: pyplot on the Agg backend that figures selects
from .figures import STYLE, new_figure, plt, save_figure, text_colour, titled


def leaf_label(task: str, category: str | None) -> str:
    """'Textual Entailment · task1612_sick_label_classification'."""
    return f"{category} · {task}" if category else task


def task_distances(task_alpha: Mapping[str, Any], metric: str = "euclidean") -> np.ndarray:
    """Condensed pairwise distances between the tasks' mean alpha (scipy pdist): what
    routing_dendrogram clusters."""
    from scipy.spatial.distance import pdist

    return pdist(np.asarray(task_alpha["alpha"], dtype=float), metric=metric)


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
    labels = [leaf_label(t, c) for t, c in zip(tasks, task_alpha["categories"], strict=True)]
    z = linkage(task_distances(task_alpha, metric), method=method)
    height = max(3.0, 0.6 + 0.24 * len(tasks))
    longest = max(map(len, labels))
    fig, ax = new_figure(min(14.0, 4.0 + 0.065 * longest), height)
    with plt.rc_context(STYLE):
        tree = dendrogram(z, labels=labels, orientation="left", ax=ax, leaf_font_size=8,
                          color_threshold=0, above_threshold_color="black")
    ax.set_xlabel(f"{metric} distance between mean α ({method} linkage)")
    ax.set_title(titled("Tasks clustered by their mean routing α", run))
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
    fig, ax = new_figure(min(16.0, 2.5 + 0.065 * longest + 0.5 * m), max(3.0, 1.2 + 0.24 * t))
    cmap = plt.get_cmap("cividis")
    vmax = max(float(alpha.max()), 1e-9)
    im = ax.imshow(alpha, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
    if m <= 16 and t <= 60:
        for i in range(t):
            for j in range(m):
                ax.text(j, i, f"{alpha[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color=text_colour(cmap, alpha[i, j] / vmax))
    ax.set_xticks(range(m), [f"e{j}" for j in range(m)])
    ax.set_yticks(range(t), labels)
    ax.set_xlabel("expert")
    ax.set_title(titled("Mean routing weight α per task", run))
    fig.colorbar(im, ax=ax, shrink=0.6 if t > 8 else 0.9, label="mean α")
    save_figure(fig, path)
    return {"tasks": [tasks[i] for i in idx], "categories": [cats[i] for i in idx],
            "alpha": alpha.tolist(),
            "n": [task_alpha["n"][i] for i in idx] if "n" in task_alpha else None}
