"""What a finished run reports: sparsity, overlap, kept capacity by layer type and depth."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from typing import Any

import torch

from ..model import SIMoEModel
from ..objective import mean_overlap, measured_sparsity, overlap_matrix

_DEPTH = re.compile(r"\.(\d+)\.")


def layer_type(param_name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'q_proj'; biases get a '.bias' suffix."""
    module, _, pname = param_name.rpartition(".")
    kind = module.rpartition(".")[2]
    return kind if pname == "weight" else f"{kind}.{pname}"


def layer_depth(param_name: str) -> int | None:
    """The block index in the name (the first integer component), None outside the blocks."""
    match = _DEPTH.search(param_name)
    return int(match.group(1)) if match else None


@torch.no_grad()
def kept_capacity(model: SIMoEModel) -> dict[str, dict[str, dict[str, float]]]:
    """Fraction of gated parameters each expert keeps (gate != 0), grouped by layer type and by
    depth: the parameter-weighted mean over experts, its spread (std) and the union."""
    groups: dict[str, dict[Any, list]] = {"by_type": defaultdict(list),
                                          "by_depth": defaultdict(list)}
    for name, gd in model.gated_deltas():
        alive = gd.gates() != 0
        kept = alive.sum(dim=1).double() * gd.params_per_gate
        union = float(alive.any(dim=0).sum()) * gd.params_per_gate
        total = gd.full_size * gd.params_per_gate
        entry = (kept, union, total)
        groups["by_type"][layer_type(name)].append(entry)
        depth = layer_depth(name)
        groups["by_depth"]["other" if depth is None else str(depth)].append(entry)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for grouping, table in groups.items():
        out[grouping] = {}
        for key, entries in table.items():
            total = sum(e[2] for e in entries)
            per_expert = (sum(e[0] for e in entries) / total).tolist()
            out[grouping][key] = {
                "mean": statistics.fmean(per_expert),
                "std": statistics.pstdev(per_expert),
                "union": sum(e[1] for e in entries) / total,
                "parameters": total,
            }
    out["by_depth"] = dict(sorted(out["by_depth"].items(),
                                  key=lambda kv: (kv[0] == "other", int(kv[0]) if
                                                  kv[0].isdigit() else 0)))
    return out


def final_stats(model: SIMoEModel, lagrange_multiplier: float) -> dict[str, Any]:
    """Sparsity, lambda, overlap and kept capacity of the model as it is now."""
    gated = [gd for _, gd in model.gated_deltas()]
    overlap = overlap_matrix(gated)
    return {
        "sparsity": measured_sparsity(gated),
        "target_sparsity": model.simoe_config.target_sparsity,
        "lambda": lagrange_multiplier,
        "overlap": overlap,
        "mean_overlap": mean_overlap(overlap),
        "kept_capacity": kept_capacity(model),
    }
