"""The sparsity constraint's controller: the pressure schedule r(t) (hold, then a linear ramp
to tau) and the Lagrange multipliers updated by projected dual ascent after every optimiser step.

    lambda_i <- max(0, lambda_i + eta (tau_i(t) - measured_i)), reset to 0 once the row holds
    (Gallego-Posada et al. 2022); with a band, lambda_i turns negative above tau_i(t) + band.

One row ('union' or 'mean') or M rows ('per-expert', SMAT's choice: one multiplier and one
target per expert, each reset separately).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


def _check_tau(tau: float, what: str = "tau") -> None:
    if not (isinstance(tau, (int, float)) and 0.0 <= tau < 1.0):
        raise ValueError(f"{what} (target sparsity) must lie in [0, 1), got {tau!r}")


def ramp(step: int, total_steps: int, warmup_fraction: float = 0.0,
         hold_fraction: float = 0.0) -> float:
    """The pressure schedule r(t) in [0, 1]: 0 until H = hold_fraction * total_steps (the deltas
    learn alone, so the NLL has something to say about the gates before anything pushes them),
    then linear up to 1 at W = warmup_fraction * total_steps, then 1."""
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1], got {warmup_fraction!r}")
    if not 0.0 <= hold_fraction <= warmup_fraction or (hold_fraction and warmup_fraction == 1.0
                                                        and hold_fraction == 1.0):
        raise ValueError(f"hold_fraction must lie in [0, warmup_fraction], got "
                         f"{hold_fraction!r} (warmup_fraction {warmup_fraction!r})")
    if total_steps < 0 or step < 0:
        raise ValueError(f"step and total_steps must be >= 0, got step={step}, "
                         f"total_steps={total_steps}")
    hold, warmup = hold_fraction * total_steps, warmup_fraction * total_steps
    if step >= warmup:
        return 1.0
    if step < hold:
        return 0.0
    return (step - hold) / (warmup - hold)


def target_at(step: int, total_steps: int, tau: float, warmup_fraction: float = 0.0,
              hold_fraction: float = 0.0) -> float:
    """The constrained target at optimiser step ``step``: tau * ramp(step) (see :func:`ramp`):
    0 during the hold, then linear up to tau at W = warmup_fraction * total_steps, then tau
    (warmup_fraction = 0: tau from step 0).

    Linear, as in CoFi (Xia et al. 2022) and Sheared-LLaMA, which ramp their target sparsity
    linearly over a Lagrangian warm-up. The cubic ramp tau (1 - (1 - t/W)^3) (Zhu & Gupta 2017)
    front-loads the pruning: it closes most gates in the first steps, when theta_delta is still
    ~0 and the NLL says nothing yet about which columns matter -- the very failure seen in wave 1
    (every gate crossing 0 within a few steps). A linear ramp asks for the same number of
    newly closed parameters every step, so the dual step on lambda stays small and steady.
    """
    _check_tau(tau)
    return float(tau) * ramp(step, total_steps, warmup_fraction, hold_fraction)


def _floats(x: Any, what: str) -> float | list[float]:
    """A float, or a list of floats for a sequence / 1-D tensor (JSON-friendly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double()
        return float(x) if x.dim() == 0 else [float(v) for v in x.flatten()]
    if isinstance(x, Sequence) and not isinstance(x, str):
        return [float(v) for v in x]
    if isinstance(x, (int, float)):
        return float(x)
    raise ValueError(f"{what} must be a number or a sequence of numbers, got {x!r}")


@dataclass
class Lagrangian:
    """lambda for the constraint(s) sparsity >= target: projected dual ascent with reset.

    ``value`` is one float (one constraint row: 'mean' or 'union') or M floats ('per-expert',
    see :meth:`per_expert`); each lambda_i has its own update and its own reset. ``target`` is
    tau; :meth:`update` takes the scheduled tau(t) (:func:`target_at`). State for checkpoints:
    :meth:`state_dict` / :meth:`load_state_dict`, plain floats and lists.
    """

    target: float
    lr: float = 1.0
    value: float | list[float] = 0.0
    current_target: float | list[float] | None = field(default=None)
    band: float | None = None
    """Two-sided control: with a band, a row whose measured sparsity exceeds tau(t) + band gets
    a negative multiplier (lambda_i <- min(0, lambda_i) - eta (measured - tau - band)), which
    pushes its expected L0 up so overshot gates reopen; inside [tau, tau + band] it is 0. This is
    the projected dual ascent of the pair tau <= s <= tau + band, folded into one signed value."""

    def __post_init__(self) -> None:
        _check_tau(self.target, "target")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr (dual step eta) must be a finite number > 0, got {self.lr!r}")
        self.value = _floats(self.value, "value")
        if self.is_per_expert and not self.value:
            raise ValueError("a per-expert Lagrangian needs at least one multiplier")
        if self.band is not None and not (math.isfinite(self.band) and self.band >= 0):
            raise ValueError(f"band must be a finite number >= 0, got {self.band!r}")
        if any((v < 0 and self.band is None) or not math.isfinite(v) for v in self.multipliers):
            raise ValueError(f"Lagrange multipliers must be finite and >= 0, got {self.value!r}")
        if self.current_target is not None:
            self.current_target = self._targets(self.current_target)

    @classmethod
    def per_expert(cls, target: float, lr: float, num_experts: int,
                   band: float | None = None) -> Lagrangian:
        """One multiplier per expert, all starting at 0."""
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        return cls(target, lr, [0.0] * num_experts, band=band)

    @property
    def is_per_expert(self) -> bool:
        return isinstance(self.value, list)

    @property
    def multipliers(self) -> list[float]:
        """The multipliers as a list (one element for the scalar case)."""
        return list(self.value) if self.is_per_expert else [self.value]

    def _rows(self, x: Any, what: str) -> list[float]:
        """x as one float per constraint row (a scalar broadcasts over the rows)."""
        v = _floats(x, what)
        n = len(self.multipliers)
        if isinstance(v, float):
            return [v] * n
        if len(v) != n:
            raise ValueError(f"{what} has {len(v)} entries, the Lagrangian has {n} "
                             f"multiplier{'s' if n > 1 else ''}")
        return v

    def _targets(self, target: Any) -> float | list[float]:
        rows = self._rows(target, "target")
        for t in rows:
            _check_tau(t, "target")
        return rows if self.is_per_expert else rows[0]

    def penalty(self, expected: torch.Tensor, target: Any = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """sum_i w_i lambda_i (tau_i - expected_i); lambda is a constant for the primal step.

        ``expected`` is a scalar (one row) or Tensor[M] (per expert). ``target`` defaults to the
        last one given to :meth:`update` (or tau); it shifts the value, not the gradient.
        ``weights`` (per-expert only, e.g. the mean routing weights, SMAT) scale each row.
        """
        tau = self._rows(target if target is not None else
                         (self.current_target if self.current_target is not None
                          else self.target), "target")
        if not self.is_per_expert:
            if weights is not None:
                raise ValueError("weights apply only to a per-expert Lagrangian")
            return self.value * (tau[0] - expected)
        if expected.dim() != 1 or expected.shape[0] != len(self.value):
            raise ValueError(f"a per-expert Lagrangian needs expected sparsity of shape "
                             f"[{len(self.value)}], got {tuple(expected.shape)}")
        lam = torch.tensor(self.value, device=expected.device, dtype=expected.dtype)
        taus = torch.tensor(tau, device=expected.device, dtype=expected.dtype)
        rows = lam * (taus - expected)
        if weights is not None:
            rows = rows * weights.to(device=expected.device, dtype=expected.dtype)
        return rows.sum()

    def update(self, measured: Any, target: Any = None) -> float | list[float]:
        """One dual step after an optimiser step: lambda_i <- max(0, lambda_i + eta (tau_i -
        measured_i)), and lambda_i <- 0 once its own constraint holds. ``target``: the
        scheduled tau(t) (a float, or M floats), default tau."""
        tau = self._rows(self.target if target is None else target, "target")
        for t in tau:
            _check_tau(t, "target")
        meas = self._rows(measured, "measured sparsity")
        new = []
        for lam, t, m in zip(self.multipliers, tau, meas, strict=True):
            violation = t - m
            if violation > 0:
                new.append(max(0.0, lam) + self.lr * violation)
            elif self.band is not None and -violation > self.band:
                new.append(min(0.0, lam) - self.lr * (-violation - self.band))
            else:
                new.append(0.0)
        self.value = new if self.is_per_expert else new[0]
        self.current_target = tau if self.is_per_expert else tau[0]
        return list(new) if self.is_per_expert else new[0]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: floats and lists only."""
        return {"target": self.target, "lr": self.lr,
                "value": list(self.value) if self.is_per_expert else self.value,
                "current_target": (list(self.current_target)
                                   if isinstance(self.current_target, list)
                                   else self.current_target)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore lambda (and the last scheduled target) from :meth:`state_dict`, or from the
        older ``{"lambda": float}``; target and lr stay as configured. The kind (one lambda or
        M) must match this Lagrangian's."""
        if "value" in state:
            value = state["value"]
        elif "lambda" in state:
            value = state["lambda"]
        else:
            raise ValueError("Lagrangian state has neither 'value' nor 'lambda'")
        value = _floats(value, "value")
        if isinstance(value, list) != self.is_per_expert or (
                self.is_per_expert and len(value) != len(self.value)):
            have = f"{len(self.value)} multipliers" if self.is_per_expert else "one multiplier"
            got = f"{len(value)} multipliers" if isinstance(value, list) else "one multiplier"
            raise ValueError(f"Lagrangian state has {got}, this Lagrangian has {have}: was the "
                             "checkpoint trained with another constraint or number of experts?")
        if any((v < 0 and self.band is None) or not math.isfinite(v)
               for v in (value if isinstance(value, list) else [value])):
            raise ValueError(f"Lagrange multipliers must be finite and >= 0, got {value!r}")
        self.value = value
        cur = state.get("current_target")
        self.current_target = None if cur is None else self._targets(cur)
