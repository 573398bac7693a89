"""One gated SIMoE tensor and the autograd node of its linear path (SIMOE.md section 1).

A :class:`GatedDelta` holds one shared delta ``theta_delta`` and the hard-concrete gate logits
of M experts over its live columns; ``m = alpha @ Z`` mixes the gates for a batch.
:class:`GatedDeltaLinear` computes ``(x[..., live] * m) theta_delta^T`` saving only ``x``,
``m`` and ``theta_delta`` for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gates import gate


class FP32Module(nn.Module):
    """A module whose parameters stay fp32 when the model is cast (``model.to(torch.bfloat16)``
    moves them but keeps their dtype): trainable SIMoE state and gate math are fp32."""

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module internals
        before = {n: p.data for n, p in self.named_parameters()}
        super()._apply(fn, recurse)
        for n, p in self.named_parameters():
            if p.dtype != torch.float32:
                p.data = before[n].to(device=p.device, dtype=torch.float32)
        return self


class GatedDelta(FP32Module):
    """One shared delta with M experts' hard-concrete gates over its live columns.

    ``delta`` is ``[rows, k]`` for a matrix (gates per input column, each standing for ``rows``
    parameters) or ``[k]`` for a vector (element-wise gates); ``log_alpha`` is ``[M, k]``;
    ``live_idx`` holds the ``k`` surviving column indices out of ``full_size``. ``mode`` is the
    gate kind (see :func:`simoe.gates.gate`); ``log_alpha`` starts at N(init_mean, noise_std^2).
    """

    def __init__(self, full_size: int, rows: int | None, num_experts: int, init_mean: float,
                 noise_std: float, mode: str = "deterministic", straight_through: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.full_size = full_size
        self.rows = rows
        self.mode = mode
        self.straight_through = straight_through
        shape = (rows, full_size) if rows is not None else (full_size,)
        self.register_buffer("live_idx", torch.arange(full_size, device=device))
        self.delta = nn.Parameter(torch.zeros(shape, device=device, dtype=torch.float32))
        self.log_alpha = nn.Parameter(torch.empty(
            num_experts, full_size, device=device, dtype=torch.float32).normal_(init_mean,
                                                                               noise_std))

    @property
    def num_live(self) -> int:
        return self.log_alpha.shape[1]

    @property
    def is_full(self) -> bool:
        return self.num_live == self.full_size

    @property
    def params_per_gate(self) -> int:
        """How many delta parameters one gate switches (rows of a matrix, 1 for a vector)."""
        return self.rows if self.rows is not None else 1

    def gates(self, training: bool = False) -> torch.Tensor:
        """Z: [M, k] in fp32 (sampled only for stochastic gates in training)."""
        return gate(self.log_alpha, self.mode, training, self.straight_through)

    def mix(self, alpha: torch.Tensor, training: bool = False) -> torch.Tensor:
        """m = alpha @ Z: [..., k] in fp32 for alpha [..., M]."""
        return alpha.float() @ self.gates(training)

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """Scatter [..., k] values over the live columns into a zero [..., full_size] tensor."""
        if self.is_full:
            return values
        out = values.new_zeros(*values.shape[:-1], self.full_size)
        return out.index_copy(-1, self.live_idx, values)

    def merged_delta(self, m: torch.Tensor) -> torch.Tensor:
        """theta_delta * m over the full shape, for one mixing vector m [k]."""
        return self.dense(self.delta * m)

    @torch.no_grad()
    def keep_columns(self, keep: torch.Tensor) -> torch.Tensor:
        """Physically drop the columns where ``keep`` is False; returns the kept positions."""
        pos = keep.nonzero().flatten()
        self.live_idx = self.live_idx[pos]
        self.delta = nn.Parameter(self.delta.detach().index_select(-1, pos).contiguous())
        self.log_alpha = nn.Parameter(self.log_alpha.detach()[:, pos].contiguous())
        return pos

    @torch.no_grad()
    def load_state(self, live_idx: torch.Tensor, delta: torch.Tensor, log_alpha: torch.Tensor,
                   name: str) -> None:
        """Load a (possibly pruned) state, checking it fits the base parameter's shape."""
        k = live_idx.numel()
        want_delta = (self.rows, k) if self.rows is not None else (k,)
        ok = (tuple(delta.shape) == want_delta and log_alpha.shape[1] == k
              and (k == 0 or int(live_idx.max()) < self.full_size))
        if not ok:
            raise ValueError(
                f"checkpoint tensor {name!r} does not fit the base model: delta "
                f"{tuple(delta.shape)} "
                f"over {k} live columns, but the base parameter has "
                f"{self.rows if self.rows is not None else ''}x{self.full_size}. "
                "Was the checkpoint made for a base model of another shape?")
        if log_alpha.shape[0] != self.log_alpha.shape[0]:
            raise ValueError(f"checkpoint tensor {name!r} has {log_alpha.shape[0]} experts, "
                             f"the config says {self.log_alpha.shape[0]}")
        device = self.log_alpha.device
        self.live_idx = live_idx.to(device=device, dtype=torch.long)
        if self.delta.shape == delta.shape:  # same parameters: optimiser references stay valid
            self.delta.copy_(delta)
            self.log_alpha.copy_(log_alpha)
        else:  # a pruned checkpoint
            self.delta = nn.Parameter(delta.to(device=device, dtype=torch.float32))
            self.log_alpha = nn.Parameter(log_alpha.to(device=device, dtype=torch.float32))


def broadcast_like(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example [B, k] (or per-token [B, T, k]) vector to broadcast against x."""
    lead = m.dim() - 1  # 1 for instance routing, 2 for token routing
    return m.reshape(*m.shape[:lead], *([1] * (x.dim() - lead - 1)), m.shape[-1])


class GatedDeltaLinear(torch.autograd.Function):
    """The delta path of a SIMoE linear, ``(x[..., live] * m) theta_delta^T``, in one autograd
    node that saves only ``x`` (which the base linear keeps anyway), the small mixing vectors
    ``m`` ([B, k] or [B, T, k]) and ``theta_delta``; ``x * m`` is recomputed in backward instead
    of being kept alive for every linear of the model, and the column gather of a pruned layer
    is redone rather than stored.

        forward   u = x_s * m,  y = u D^T
        backward  g_u = g D,  dx_s = g_u * m,  dm = sum_t g_u * x_s,  dD = g^T (x_s * m)

    ``m`` is not broadcast: the instance-routing gradient is reduced over the tokens here.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor, delta: torch.Tensor,  # noqa: ANN001
                live_idx: torch.Tensor | None) -> torch.Tensor:
        xs = x if live_idx is None else x.index_select(-1, live_idx)
        y = F.linear(xs * broadcast_like(m, x).to(x.dtype), delta.to(x.dtype))
        ctx.live_idx = live_idx
        ctx.save_for_backward(x, m, delta)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        x, m, delta = ctx.saved_tensors
        idx = ctx.live_idx
        xs = x if idx is None else x.index_select(-1, idx)
        mb = broadcast_like(m, x).to(x.dtype)
        need_x, need_m, need_delta = ctx.needs_input_grad[:3]
        grad_x = grad_m = grad_delta = None
        if need_x or need_m:
            gu = g @ delta.to(g.dtype)  # [..., k]
            if need_x:
                gxs = gu * mb
                grad_x = gxs if idx is None else gxs.new_zeros(x.shape).index_copy_(-1, idx, gxs)
            if need_m:
                prod = gu * xs  # summed over every dimension m was broadcast along
                lead = m.dim() - 1
                if prod.dim() > m.dim():  # flatten, not reshape(-1): k may be 0 after compaction
                    prod = prod.flatten(lead, -2)
                    grad_m = prod.sum(lead, dtype=torch.float32).to(m.dtype)
                else:
                    grad_m = prod.to(m.dtype)
        if need_delta:
            u = xs * mb
            grad_delta = g.flatten(0, -2).t() @ u.flatten(0, -2)
            grad_delta = grad_delta.to(delta.dtype)
        return grad_x, grad_m, grad_delta, None
