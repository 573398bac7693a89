"""Hard-concrete gates (Louizos et al. 2018; paper appendix A.1; SIMOE.md section 1).

Every function takes the gate logits ``log_alpha`` (the paper's log phi) and works in fp32,
whatever dtype the model runs in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
# beta * log(-gamma / zeta): the shift between log_alpha and the logit of P(z != 0).
L0_SHIFT = BETA * math.log(-GAMMA / ZETA)
# The deterministic gate is exactly 0 iff sigmoid(log_alpha / beta) <= -gamma / (zeta - gamma),
# i.e. iff log_alpha <= beta log(-gamma / zeta) = L0_SHIFT (about -1.60, where P(z != 0) = 1/2),
# and exactly 1 iff log_alpha >= -L0_SHIFT (about +1.60).
CLOSED_BELOW = L0_SHIFT
OPEN_ABOVE = -L0_SHIFT
# SMAT (szc12153/sparse_meta_tuning) keeps log phi within [log 0.01, log 100].
LOG_ALPHA_MIN = math.log(0.01)
LOG_ALPHA_MAX = math.log(100.0)


class _StraightThroughClamp(torch.autograd.Function):
    """clamp(s, 0, 1) forward; the identity backward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return s.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad


def deterministic_gate(log_alpha: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
    """Median gate z = clamp(sigmoid(log_alpha / beta) (zeta - gamma) + gamma, 0, 1) (eq. 6-7).

    ``straight_through``: the same value, but the clamp passes gradients through unchanged, so
    a closed gate (z = 0) still receives dL/dz times the sigmoid's slope: the data can reopen
    it, and gates near the threshold are told apart by the NLL rather than moving in lockstep.
    """
    s = torch.sigmoid(log_alpha.float() / BETA) * (ZETA - GAMMA) + GAMMA
    return _StraightThroughClamp.apply(s) if straight_through else s.clamp(0.0, 1.0)


def stochastic_gate(log_alpha: torch.Tensor, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    """A reparameterised sample, u ~ U(0, 1):
    z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) (zeta - gamma) + gamma, 0, 1)."""
    la = log_alpha.float()
    eps = torch.finfo(torch.float32).eps
    u = torch.rand(la.shape, generator=generator, device=la.device, dtype=torch.float32)
    u = u.clamp(eps, 1.0 - eps)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / BETA) * (ZETA - GAMMA) + GAMMA
    return s.clamp(0.0, 1.0)


def gate(log_alpha: torch.Tensor, mode: str, training: bool,
         straight_through: bool = False) -> torch.Tensor:
    """The gate of a forward pass: sampled only for mode='stochastic' in training; for
    mode='free' (ablation c: masks are free real values, no sparsity) the logits themselves.
    ``straight_through`` applies to the deterministic gate in training only."""
    if mode == "free":
        return log_alpha.float()
    if mode == "stochastic" and training:
        return stochastic_gate(log_alpha)
    return deterministic_gate(log_alpha, straight_through and training)


def expected_l0(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z != 0) = sigmoid(log_alpha - beta log(-gamma/zeta)) (eq. 8), element-wise."""
    return torch.sigmoid(log_alpha.float() - L0_SHIFT)


def init_mean(drop_prob: float) -> float:
    """The log_alpha for which P(z = 0) = drop_prob (drop_prob=0.05 gives about 1.35)."""
    if not 0.0 < drop_prob < 1.0:
        raise ValueError(f"drop_prob must lie in (0, 1), got {drop_prob}")
    return math.log((1.0 - drop_prob) / drop_prob) + L0_SHIFT


def init_log_alpha(tensor: torch.Tensor, drop_prob: float, std: float) -> torch.Tensor:
    """Fill ``tensor`` in place with N(init_mean(drop_prob), std^2) and return it."""
    with torch.no_grad():
        return tensor.normal_(init_mean(drop_prob), std)


@torch.no_grad()
def clamp_log_alpha_(gated: Iterable, low: float = LOG_ALPHA_MIN, high: float = LOG_ALPHA_MAX
                     ) -> None:
    """Clamp every gate logit into [low, high] in place (call it after each optimiser step).

    ``gated`` holds GatedDelta-like objects (anything with a ``log_alpha`` tensor) or tensors.

    Why: outside the band [CLOSED_BELOW, OPEN_ABOVE] ~ [-1.6, 1.6] the deterministic gate is
    flat at 0 or 1, so nothing stops Adam from carrying a logit arbitrarily far (momentum keeps
    moving it after its gradient vanishes); a gate at log_alpha = -30 would need thousands of
    steps to come back. With the clamp a closed gate sits at most |low - CLOSED_BELOW| ~ 3.0
    logits from reopening (~300 Adam steps at gate lr 1e-2) and an open one at most ~3.0 from
    the point where it starts to close, so the optimiser can still change its mind.

    What the clamp does NOT do: under the deterministic gate (our default) a gate at exactly 0
    gets no gradient from the NLL (the clamp of the gate at 0 has zero derivative; moreover
    theta_delta gets no gradient on a column every expert has closed) and none from the
    orthogonality penalty either (that acts on z itself, which is flat at 0). The only
    gradient on a closed logit is the expected-L0 term's, because
    expected_l0 = sigmoid(log_alpha - L0_SHIFT) is smooth everywhere (at log_alpha = -4.6 it
    is 0.047 with slope 0.045) -- and that term only pushes towards sparser (or is 0 once lambda
    is reset). So with deterministic gates a closed gate stays closed; the clamp bounds the
    drift and makes reopening *reachable* when something else supplies the upward signal:
    stochastic gates in training (mode='stochastic': at log_alpha = -4.6 a sample is non-zero
    with probability 0.047, and those samples carry the NLL gradient, which is SMAT's setting),
    or a straight-through estimator for the clamp (not implemented here).
    """
    if low >= high:
        raise ValueError(f"clamp_log_alpha_ needs low < high, got low={low}, high={high}")
    for item in gated:
        tensor = item if isinstance(item, torch.Tensor) else item.log_alpha
        tensor.clamp_(low, high)
