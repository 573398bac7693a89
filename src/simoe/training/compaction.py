"""Live compaction: columns that every expert has closed, well past the threshold, leave the
deltas, the gates and the optimiser's state during training instead of at the end.

Rule: a column is removed once *every* expert's gate logit is at least ``margin`` below the
closing threshold (log_alpha <= CLOSED_BELOW - margin, about -3.1 for the default 1.5). Its gate
is then 0 for every expert, so it adds exactly nothing to any forward pass; and a logit only
gets that far after being pushed down for a while (under the gates' Adam, ~lr per step at
most: 15 steps at lr 0.1), so a gate that has just crossed and may still reopen through the
straight-through gradient is left alone. The rule reads only the current logits, so a run
resumed from a checkpoint compacts exactly where the uninterrupted run does.
"""

from __future__ import annotations

from typing import Any

import torch

from ..gates import CLOSED_BELOW

DEFAULT_MARGIN = 1.5


def dead_columns(log_alpha: torch.Tensor, margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """Bool[k]: columns whose every expert's logit is <= CLOSED_BELOW - margin."""
    if log_alpha.shape[1] == 0:
        return torch.zeros(0, dtype=torch.bool, device=log_alpha.device)
    return log_alpha.detach().max(dim=0).values <= CLOSED_BELOW - margin


def _slice_state(value: Any, old: torch.Tensor, pos: torch.Tensor) -> Any:  # noqa: ANN401
    """An optimiser state entry cut to the kept columns: tensors shaped like the parameter are
    sliced on the last dimension; the rest (step counts, row-shared second moments) stay."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == old.shape:
        return value.index_select(-1, pos.to(value.device)).contiguous()
    return value


def _swap_parameter(optimizer: Any, old: torch.nn.Parameter, new: torch.nn.Parameter,
                    pos: torch.Tensor) -> None:
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state:
                    optimizer.state[new] = {k: _slice_state(v, old, pos)
                                            for k, v in state.items()}
                return
    raise RuntimeError("live compaction: a SIMoE parameter is not in the optimiser")


@torch.no_grad()
def compact(gated: list, optimizer: Any | None = None, margin: float = DEFAULT_MARGIN) -> int:
    """Remove the dead columns (see the module) from every GatedDelta in ``gated`` and, when
    given, from ``optimizer``'s parameter groups and state; returns the parameters removed."""
    removed = 0
    for gd in gated:
        if gd.mode == "free":
            continue
        dead = dead_columns(gd.log_alpha, margin)
        if not bool(dead.any()):
            continue
        old = {"delta": gd.delta, "log_alpha": gd.log_alpha}
        pos = gd.keep_columns(~dead)
        if optimizer is not None:
            for attr, param in old.items():
                _swap_parameter(optimizer, param, getattr(gd, attr), pos)
        removed += int(dead.sum()) * gd.params_per_gate
    return removed
