"""Hard-concrete gates (Louizos et al. 2018; paper appendix A.1; SIMOE.md section 1).

Every function takes the gate logits ``log_alpha`` (the paper's log phi) and works in fp32,
whatever dtype the model runs in.
"""

from __future__ import annotations

import math

import torch

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
# beta * log(-gamma / zeta): the shift between log_alpha and the logit of P(z != 0).
L0_SHIFT = BETA * math.log(-GAMMA / ZETA)


def deterministic_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    """Median gate z = clamp(sigmoid(log_alpha / beta) (zeta - gamma) + gamma, 0, 1) (eq. 6-7)."""
    s = torch.sigmoid(log_alpha.float() / BETA) * (ZETA - GAMMA) + GAMMA
    return s.clamp(0.0, 1.0)


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


def gate(log_alpha: torch.Tensor, mode: str, training: bool) -> torch.Tensor:
    """The gate of a forward pass: sampled only for mode='stochastic' in training; for
    mode='free' (ablation c: masks are free real values, no sparsity) the logits themselves."""
    if mode == "free":
        return log_alpha.float()
    if mode == "stochastic" and training:
        return stochastic_gate(log_alpha)
    return deterministic_gate(log_alpha)


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
