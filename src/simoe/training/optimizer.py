"""AdamW whose gate groups share one second moment per expert row.

Why (issue 11, measured): under element-wise Adam every gate logit moves ~lr per step whatever
the size of its gradient. While the deltas are small the NLL's force on a gate is tiny next to
the sparsity pressure, so element-wise normalisation turns "push down, a little less for the
columns the data needs" into "push every gate down at full speed": all gates of an expert cross
the threshold in the same few steps (sparsity jumping 0.5 -> 0.9 -> 0.5 on SmolLM2) and which
columns survive is decided by the init noise, not the data.

With ``second_moment="row"`` the running mean of g^2 is taken over each row of a ``[M, k]``
gate tensor (one expert in one layer): a row is still scale-free (the step of a typical gate is
~lr), but within a row a gate moves in proportion to its own net force, so gates the data holds
open close later or not at all, and the expected sparsity responds smoothly to lambda.

    m   <- b1 m + (1 - b1) g
    v   <- b2 v + (1 - b2) g^2                 (element)   or  mean_row(g^2)   (row)
    p   <- p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

With every group ``second_moment="element"`` this is ``torch.optim.AdamW`` (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

SECOND_MOMENTS = ("element", "row")


class SIMoEAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, no amsgrad) with a per-group ``second_moment``:
    'element' (Adam's own) or 'row' (shared along the last dimension)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, second_moment: str = "element") -> None:
        if not (lr >= 0 and eps >= 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid AdamW settings: lr={lr}, betas={betas}, eps={eps}")
        if second_moment not in SECOND_MOMENTS:
            raise ValueError(f"second_moment must be one of {SECOND_MOMENTS}, "
                             f"got {second_moment!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay, "second_moment": second_moment})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            row = group["second_moment"] == "row"
            if group["second_moment"] not in SECOND_MOMENTS:
                raise ValueError(f"unknown second_moment {group['second_moment']!r}")
            for p in group["params"]:
                if p.grad is None or p.numel() == 0:
                    continue
                g = p.grad.float()
                state = self.state[p]
                g2 = g * g
                if row and p.dim() > 0:
                    g2 = g2.mean(dim=-1, keepdim=True)
                if not state:  # zeros_like: a DTensor's moments are DTensors sharded alike
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(g2)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).add_(g2, alpha=1 - b2)
                if wd:
                    p.mul_(1 - lr * wd)
                denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                update = (m / denom) * (lr / (1 - b1 ** t))
                p.sub_(update.to(p.dtype))
        return loss
