"""The SIMoE objective (SIMOE.md section 2, paper eq. 3 and 10-13).

    L = NLL + beta * L_ortho(Z) + sum_i lambda_i * (tau_i(t) - expected_sparsity_i(Z))

Conventions fixed here:

- Sparsity counts *parameters*: a column gate of an ``out x in`` matrix stands for ``out``
  parameters (its weight w_c), an element gate for one. D = sum_c w_c is the number of gated
  parameters *including* pruned columns, which count as gated off. The measured sparsity of
  expert i is the fraction of D whose gate z_i is exactly 0; 'mean' averages it over experts,
  'union' is the fraction gated off for *every* expert (what pruning removes, so it bounds the
  stored and activated size).
- Constraints (``CONSTRAINTS``): 'union' and 'mean' give one row (one lambda); 'per-expert'
  gives M rows, one lambda and one target per expert (SMAT's choice: every expert is held to
  tau separately, so no expert can be starved while another stays dense).
- Expected sparsity replaces "z == 0" by 1 - P(z != 0) (the expected L0, differentiable). For the
  union, P(some expert keeps a column) = 1 - prod_i (1 - P(z_i != 0)) (gates are independent).
  Beware: with M = 8 gates at their initial P(z != 0) = 0.95 that product is ~1e-9, so the union
  surrogate has almost no gradient until the experts have spread apart.
- The multipliers lambda_i and the schedule tau(t) live in :mod:`simoe.constraint`; how the
  trainer applies the pressure (through every expert's expected L0, routing-weighted, scaled by
  the number of gates) is :meth:`simoe.training.SIMoETrainer.regularizer`.
- ``load_imbalance``: log M - H(batch-mean alpha), the routing balance term.

Orthogonality (``orthogonality(..., form=...)``):

- 'literal': ||Z Z^T - I||_F with Z in R^{M x N} the concatenated live gates, one entry per gate,
  unweighted, as the paper writes it. Its diagonal (||z_i||^2 - 1)^2 ~ N^2 dwarfs the overlap
  and pushes every gate to 0 (SIMOE.md section 2, failure mode 1). Kept for comparison.
- 'offdiag': L_off = sum_{i != j} sum_c w_c z_ic z_jc / D, the off-diagonal of the
  parameter-weighted Gram matrix Z W Z^T divided by D. For binary gates the (i, j) term is the
  fraction of gated parameters kept by both i and j, so L_off lies in [0, M(M-1)] and does not
  change when the model grows (duplicating every tensor leaves it unchanged). Weighted by
  parameters, not per gate, because that is what the sparsity constraint and the overlap of
  Table 5 / Fig. 5 count (a gate_proj column of Llama-3-8B holds 14336 parameters, a k_proj
  column 1024), and because the NLL gradient on a column gate is itself a sum over its w_c rows.

Scale of beta for 'offdiag' (to be calibrated by runs). The gates are trained with Adam, which
normalises each gate's total gradient, so what matters is the ratio of the forces on one gate:

    d(beta L_off)/d z_ic          = 2 beta (w_c / D) sum_{j != i} z_jc
    d(lambda (tau - e_i))/d p_ic  = -lambda (w_c / D)       ('per-expert'; '/M' for 'mean')
    d NLL / d z_ic                = alpha_i sum_r delta_rc dNLL/dW_rc   (no 1/D)

In 'offdiag' beta is thus on lambda's scale (both price a fraction of D), but both shrink like
1/N_gates against the NLL; lambda adapts (it settles near N_gates times the NLL force), a fixed
beta does not, so a fixed beta on L_off weakens ~10x from a 135M model (N ~ 1.5e5 column gates)
to an 8B one (N ~ 1.25e6). The paper's literal norm has a per-gate gradient of order 2 beta
whatever N is (numerator and norm both grow like N), so its beta in {0, 5e-6, 5e-5, 5e-4} is a
per-gate force. Proposal: put ``beta * num_gates(gated) * L_off`` in the loss (and log L_off).
Its per-gate gradient 2 beta (w_c / w_mean) sum_{j != i} z_jc is independent of model size, of
the same order as the paper's literal form at the paper's beta (about 14 beta at initialisation
where all 7 other experts keep the column, falling to 0 as overlap vanishes, instead of the
literal form's push on every gate), so the paper's beta range can be swept as is. Equivalently,
beta_offdiag = beta_paper * N_gates (e.g. 5e-6 -> ~0.75 at 135M, ~6 at 8B) if L_off is used
unscaled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .gated_delta import GatedDelta
from .gates import LOG_ALPHA_MAX, LOG_ALPHA_MIN, clamp_log_alpha_, expected_l0

CONSTRAINTS = ("union", "mean", "per-expert")
ORTHO_FORMS = ("literal", "offdiag")

__all__ = [
    "CONSTRAINTS", "ORTHO_FORMS", "LOG_ALPHA_MIN", "LOG_ALPHA_MAX",
    "clamp_log_alpha_", "concatenated_gates", "expected_sparsity",
    "expected_sparsity_per_expert", "load_imbalance", "mean_overlap", "measured_constraint",
    "measured_sparsity",
    "num_gates", "orthogonality", "overlap_matrix", "routing_entropy",
]


def _check_constraint(constraint: str) -> None:
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")


def _totals(gated: list[GatedDelta]) -> float:
    return float(sum(gd.full_size * gd.params_per_gate for gd in gated))


def num_gates(gated: Iterable[GatedDelta]) -> int:
    """N: gate positions per expert over all tensors, pruned columns included."""
    return sum(gd.full_size for gd in gated)


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


def measured_constraint(gated: Iterable[GatedDelta], constraint: str) -> float | list[float]:
    """The measured figure that ``constraint`` bounds: a float, or M floats for 'per-expert'
    (what :meth:`Lagrangian.update` takes)."""
    _check_constraint(constraint)
    return measured_sparsity(gated)[constraint.replace("-", "_")]


def expected_sparsity_per_expert(gated: Iterable[GatedDelta]) -> torch.Tensor:
    """Tensor[M]: 1 - sum_c w_c P(z_ic != 0) / D per expert, differentiable (fp32)."""
    gated = list(gated)
    total = _totals(gated)
    kept = 0.0
    for gd in gated:
        kept = kept + expected_l0(gd.log_alpha).sum(dim=1) * gd.params_per_gate  # [M]
    return 1.0 - kept / total


def expected_sparsity(gated: Iterable[GatedDelta], constraint: str = "mean") -> torch.Tensor:
    """Differentiable 1 - expected L0, parameter-weighted: a scalar for 'mean' (over experts)
    and 'union', a Tensor[M] for 'per-expert'."""
    _check_constraint(constraint)
    gated = list(gated)
    if constraint == "per-expert":
        return expected_sparsity_per_expert(gated)
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


def orthogonality(gated: Iterable[GatedDelta], training: bool = False,
                  form: str = "literal", weights: torch.Tensor | None = None) -> torch.Tensor:
    """The orthogonality penalty on the gates (paper section 3.1.2; see the module docstring).

    form='literal': ||Z Z^T - I||_F over the concatenated live gates, unweighted.
    form='offdiag': L_off = sum_{i != j} sum_c w_c z_ic z_jc / D in [0, M(M-1)], w_c the
      parameters gate c stands for, D all gated parameters (pruned columns included); for
      free real-valued masks the bound is lost (|z| may exceed 1).
      Recommended loss term: beta * num_gates(gated) * L_off. Free real-valued masks
      (gate_mode 'free', ablation c) enter as |z|, so the penalty stays >= 0.
      ``weights`` (offdiag only; [M], e.g. M x the mean routing weights) weight the pair
      (i, j) by w_i w_j, so the force on expert i's gates scales with w_i like its NLL force.
    """
    if form not in ORTHO_FORMS:
        raise ValueError(f"orthogonality form must be one of {ORTHO_FORMS}, got {form!r}")
    gated = list(gated)
    if form == "literal":
        z = concatenated_gates(gated, training)
        gram = z @ z.t()
        return torch.linalg.matrix_norm(gram - torch.eye(z.shape[0], device=z.device),
                                        ord="fro")
    total = _totals(gated)
    off = 0.0
    for gd in gated:
        z = gd.gates(training)  # [M, k]
        if gd.mode == "free":  # real-valued masks (ablation c): the overlap of their magnitudes,
            z = z.abs()        # else opposite signs would drive the penalty to -infinity
        if weights is not None:
            z = z * weights.to(device=z.device, dtype=z.dtype)[:, None]
        col = z.sum(dim=0)
        # sum_{i != j} z_i z_j = (sum_i z_i)^2 - sum_i z_i^2, per gate position
        off = off + ((col * col).sum() - (z * z).sum()) * gd.params_per_gate
    return off / total


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


def load_imbalance(alpha: torch.Tensor) -> torch.Tensor:
    """log M - H(mean alpha): the KL divergence of the batch's mean routing from uniform, in
    [0, log M]. 0 when every expert gets the same share of the batch; individual prompts may
    still route sharply (unlike penalising each prompt's entropy)."""
    mean = alpha.float().reshape(-1, alpha.shape[-1]).mean(0).clamp(min=1e-12)
    return math.log(alpha.shape[-1]) + (mean * mean.log()).sum()


def routing_entropy(alpha: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the mixing weights over examples (and tokens)."""
    a = alpha.float().clamp(min=1e-12)
    return -(a * a.log()).sum(dim=-1).mean()


@torch.no_grad()
def project_to_target(gated: Iterable[GatedDelta], tau: float, constraint: str = "union"
                      ) -> dict[str, object]:
    """Close the least committed open gates until the constraint holds exactly at the end of
    training (the dynamics land near tau; this makes ``measured >= tau`` true by construction).

    'union': columns still kept by some expert, ranked by their largest gate logit, are closed
    for every expert, lowest first, until the union sparsity reaches tau. 'mean'/'per-expert':
    each expert below tau closes its own lowest-logit open gates. Closing sets the logits to
    LOG_ALPHA_MIN. Returns the sparsity before and after and how many parameters were closed.
    """
    _check_constraint(constraint)
    gated = list(gated)
    total = _totals(gated)
    before = measured_sparsity(gated)
    m = gated[0].log_alpha.shape[0]
    rows = [None] if constraint == "union" else list(range(m))
    closed = 0.0
    for row in rows:
        now = before["union"] if row is None else measured_sparsity(gated)["per_expert"][row]
        need = (tau - now) * total
        if need <= 0:
            continue
        cands = []  # (score, tensor index, column indices, weight per gate)
        for t, gd in enumerate(gated):
            z = gd.gates()
            la = gd.log_alpha
            keep = (z != 0).any(0) if row is None else z[row] != 0
            score = la.max(0).values if row is None else la[row]
            idx = keep.nonzero().flatten()
            cands.append((score[idx], torch.full_like(idx, t), idx,
                          torch.full((idx.numel(),), float(gd.params_per_gate))))
        score = torch.cat([c[0] for c in cands])
        which = torch.cat([c[1] for c in cands])
        col = torch.cat([c[2] for c in cands])
        weight = torch.cat([c[3] for c in cands]).double()
        order = torch.argsort(score)
        upto = int(torch.searchsorted(weight[order].cumsum(0), torch.tensor(need).double())) + 1
        for i in order[:upto].tolist():
            gd = gated[int(which[i])]
            if row is None:
                gd.log_alpha[:, int(col[i])] = LOG_ALPHA_MIN
            else:
                gd.log_alpha[row, int(col[i])] = LOG_ALPHA_MIN
            closed += float(weight[i])
    after = measured_sparsity(gated)
    return {"before": {k: before[k] for k in ("union", "mean")},
            "after": {k: after[k] for k in ("union", "mean")},
            "closed_parameters": int(closed)}
