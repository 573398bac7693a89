"""The SIMoE objective (SIMOE.md section 2, paper eq. 3 and 10-13).

    L = NLL + beta * L_ortho(Z) + lambda * (tau - expected_sparsity(Z))

Conventions fixed here:

- Sparsity counts *parameters*: a column gate of an ``out x in`` matrix stands for ``out``
  parameters, an element gate for one. Columns removed by pruning count as gated off. The
  measured sparsity of expert i is the fraction of gated parameters whose gate z_i is exactly 0;
  'mean' averages it over experts, 'union' is the fraction gated off for *every* expert (what
  pruning can remove, so it bounds the stored size).
- Expected sparsity replaces "z == 0" by 1 - P(z != 0) (the expected L0, differentiable). For the
  union, P(some expert keeps a column) = 1 - prod_i (1 - P(z_i != 0)) (gates are independent).
- L_ortho = ||Z Z^T - I||_F with Z in R^{M x D} the concatenated live gates, one entry per gate
  (not weighted by parameters), no normalisation, as written in the paper (its beta = 5e-6 is
  calibrated to this raw scale).
- lambda >= 0 is a Lagrange multiplier: after each optimiser step
  lambda <- max(0, lambda + eta * (tau - measured)), and lambda <- 0 as soon as the constraint
  measured >= tau holds (Gallego-Posada et al. 2022).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .gates import expected_l0
from .layers import GatedDelta

CONSTRAINTS = ("mean", "union")


def _totals(gated: list[GatedDelta]) -> float:
    return float(sum(gd.full_size * gd.params_per_gate for gd in gated))


@torch.no_grad()
def measured_sparsity(gated: Iterable[GatedDelta]) -> dict[str, object]:
    """Fraction of gated parameters whose deterministic gate is 0: per expert, mean, union."""
    gated = list(gated)
    total = _totals(gated)
    kept = None
    kept_union = 0.0
    for gd in gated:
        alive = gd.gates() != 0  # [M, k]
        per_expert = alive.sum(dim=1).double() * gd.params_per_gate
        kept = per_expert if kept is None else kept + per_expert
        kept_union += float(alive.any(dim=0).sum()) * gd.params_per_gate
    per_expert_sparsity = (1.0 - kept / total).tolist()
    return {"per_expert": per_expert_sparsity,
            "mean": sum(per_expert_sparsity) / len(per_expert_sparsity),
            "union": 1.0 - kept_union / total}


def expected_sparsity(gated: Iterable[GatedDelta], constraint: str = "mean") -> torch.Tensor:
    """Differentiable 1 - expected L0, parameter-weighted: mean over experts, or of the union."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
    gated = list(gated)
    total = _totals(gated)
    kept = 0.0
    for gd in gated:
        p_on = expected_l0(gd.log_alpha)  # [M, k]
        if constraint == "mean":
            kept = kept + p_on.sum() / p_on.shape[0] * gd.params_per_gate
        else:
            p_any = 1.0 - torch.prod(1.0 - p_on, dim=0)
            kept = kept + p_any.sum() * gd.params_per_gate
    return 1.0 - kept / total


def concatenated_gates(gated: Iterable[GatedDelta], training: bool = False) -> torch.Tensor:
    """Z in R^{M x D}: every live gate of every layer, side by side."""
    return torch.cat([gd.gates(training) for gd in gated], dim=1)


def orthogonality(gated: Iterable[GatedDelta], training: bool = False) -> torch.Tensor:
    """||Z Z^T - I||_F over the concatenated gates (paper section 3.1.2)."""
    z = concatenated_gates(gated, training)
    gram = z @ z.t()
    return torch.linalg.matrix_norm(gram - torch.eye(z.shape[0], device=z.device), ord="fro")


@torch.no_grad()
def overlap_matrix(gated: Iterable[GatedDelta]) -> list[list[float]]:
    """Pairwise |nz(z_i) & nz(z_j)| / |nz(z_i) | nz(z_j)|, parameter-weighted (paper Fig. 5)."""
    inter = union = None
    for gd in gated:
        alive = (gd.gates() != 0).double()  # [M, k]
        w = float(gd.params_per_gate)
        i = alive @ alive.t() * w
        n = alive.sum(dim=1) * w
        u = n[:, None] + n[None, :] - i
        inter = i if inter is None else inter + i
        union = u if union is None else union + u
    out = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.ones_like(union))
    return out.tolist()


def mean_overlap(matrix: list[list[float]]) -> float:
    """Mean of the off-diagonal overlaps."""
    m = len(matrix)
    if m < 2:
        return 1.0
    return sum(matrix[i][j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))


@dataclass
class Lagrangian:
    """lambda for the constraint sparsity >= target: projected dual ascent with reset."""

    target: float
    lr: float = 1.0
    value: float = 0.0

    def penalty(self, expected: torch.Tensor) -> torch.Tensor:
        """lambda * (tau - expected sparsity); lambda is a constant for the primal step."""
        return self.value * (self.target - expected)

    def update(self, measured: float) -> float:
        """One dual step after an optimiser step; reset to 0 once the constraint holds."""
        violation = self.target - measured
        if violation <= 0:
            self.value = 0.0
        else:
            self.value = max(0.0, self.value + self.lr * violation)
        return self.value


def routing_entropy(alpha: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the mixing weights over examples (and tokens)."""
    a = alpha.float().clamp(min=1e-12)
    return -(a * a.log()).sum(dim=-1).mean()
