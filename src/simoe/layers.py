"""SIMoE layers: a frozen base module plus one shared delta gated per expert (SIMOE.md section 1).

For a targeted parameter theta_pre the layer computes with

    theta = theta_pre + sum_i alpha_i z_i * theta_delta,

where the gates z_i act on *input columns* of a weight matrix and element-wise on 1-D
parameters. Because the gates of a matrix are per column, the per-example mixture collapses
to one vector m = alpha @ Z, and a linear layer becomes two dense matmuls:

    y = x W_pre^T + b + (x * m) theta_delta^T          (no per-example weight is ever built)

Each gated tensor lives in a :class:`GatedDelta` that keeps an explicit index of its live
columns (``live_idx``): pruning removes dead columns physically from the delta and the gates.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .gates import gate


class RoutingState:
    """The mixing weights of the batch in flight, shared by every SIMoE layer of one model.

    ``alpha`` is set by :class:`simoe.SIMoEModel` before the wrapped model runs and is kept until
    the next forward, so gradient checkpointing can re-run layers during backward.
    ``enabled=False`` switches every delta off (the router's pass over the frozen base model).
    """

    def __init__(self) -> None:
        self.alpha: torch.Tensor | None = None
        self.enabled: bool = True

    def alpha_for(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """alpha ([B, M] or [B, T, M]) for a batch of ``batch_size`` rows, on ``device``.

        Batches expanded by generation (beams, several return sequences) repeat each example.
        """
        alpha = self.alpha
        if alpha is not None and device is not None and alpha.device != device:
            alpha = alpha.to(device)  # a model split over several devices
        if alpha is None:
            raise RuntimeError(
                "SIMoE layer called without routing weights: run the model through "
                "SIMoEModel.forward/generate (or set alpha explicitly)"
            )
        if alpha.shape[0] == batch_size:
            return alpha
        if batch_size % alpha.shape[0] == 0:
            return alpha.repeat_interleave(batch_size // alpha.shape[0], dim=0)
        raise RuntimeError(f"routing weights for {alpha.shape[0]} examples, batch has {batch_size}")


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


def _broadcast_like(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
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
        y = F.linear(xs * _broadcast_like(m, x).to(x.dtype), delta.to(x.dtype))
        ctx.live_idx = live_idx
        ctx.save_for_backward(x, m, delta)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        x, m, delta = ctx.saved_tensors
        idx = ctx.live_idx
        xs = x if idx is None else x.index_select(-1, idx)
        mb = _broadcast_like(m, x).to(x.dtype)
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


class SIMoELayer(nn.Module):
    """Common part of the SIMoE wrappers: the frozen base module and the shared routing state."""

    base_layer: nn.Module

    def __init__(self, base_layer: nn.Module, state: RoutingState) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.state = state

    def __getattr__(self, name: str):  # noqa: ANN204 - weight, bias, eps... of the base module
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def gated_deltas(self) -> dict[str, GatedDelta]:
        """The gated tensors of this layer by parameter name ('weight', 'bias')."""
        return {name: gd for name, gd in (("weight", getattr(self, "weight_delta", None)),
                                          ("bias", getattr(self, "bias_delta", None)))
                if gd is not None}

    def _mix(self, gd: GatedDelta, alpha: torch.Tensor) -> torch.Tensor:
        return gd.mix(alpha, self.training)

    def merge(self, alpha: torch.Tensor) -> nn.Module:
        """The base module with theta_pre + theta_delta * (alpha @ Z) written into its weights."""
        raise NotImplementedError


class SIMoELinear(SIMoELayer):
    """nn.Linear (weight [out, in]) or transformers' Conv1D (weight [in, out]) with SIMoE deltas.

    ``y = base(x) + (x[..., live] * m) theta_delta^T (+ m_b * delta_b)`` with ``m = alpha @ Z``.
    """

    def __init__(self, base_layer: nn.Module, state: RoutingState, gate_kw: dict,
                 target_bias: bool = True) -> None:
        super().__init__(base_layer, state)
        self.transposed = isinstance(base_layer, Conv1D)
        weight = base_layer.weight
        out_features, in_features = (weight.shape[1], weight.shape[0]) if self.transposed \
            else weight.shape
        self.in_features, self.out_features = in_features, out_features
        kw = {**gate_kw, "device": weight.device}
        self.weight_delta = GatedDelta(in_features, out_features, **kw)
        bias = getattr(base_layer, "bias", None)
        self.bias_delta = GatedDelta(out_features, None, **kw) \
            if target_bias and bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if not self.state.enabled:
            return y
        alpha = self.state.alpha_for(x.shape[0], x.device)
        wd = self.weight_delta
        y = y + GatedDeltaLinear.apply(x, self._mix(wd, alpha), wd.delta,
                                       None if wd.is_full else wd.live_idx)
        if self.bias_delta is not None:
            bd = self.bias_delta
            y = y + _broadcast_like(bd.dense(self._mix(bd, alpha) * bd.delta), y).to(y.dtype)
        return y

    @torch.no_grad()
    def merge(self, alpha: torch.Tensor) -> nn.Module:
        base = self.base_layer
        dw = self.weight_delta.merged_delta(self.weight_delta.mix(alpha))
        dw = dw.t() if self.transposed else dw
        base.weight = nn.Parameter((base.weight.float() + dw).to(base.weight.dtype),
                                   requires_grad=False)
        if self.bias_delta is not None:
            bd = self.bias_delta
            db = bd.merged_delta(bd.mix(alpha))
            base.bias = nn.Parameter((base.bias.float() + db).to(base.bias.dtype),
                                     requires_grad=False)
        return base


class SIMoENorm(SIMoELayer):
    """A normalisation layer whose scale (and bias) get per-example deltas g' = g + m * delta.

    torch's LayerNorm/RMSNorm are computed as normalise(x) * g' + b'; any other norm module
    (the RMSNorm variants of transformers) is called with the per-example scale swapped in,
    which works for every norm whose forward multiplies by its weight element-wise.
    """

    def __init__(self, base_layer: nn.Module, state: RoutingState, gate_kw: dict,
                 target_bias: bool = True) -> None:
        super().__init__(base_layer, state)
        weight = base_layer.weight
        self.size = weight.shape[0]
        kw = {**gate_kw, "device": weight.device}
        self.weight_delta = GatedDelta(self.size, None, **kw)
        bias = getattr(base_layer, "bias", None)
        self.bias_delta = GatedDelta(self.size, None, **kw) \
            if target_bias and isinstance(bias, nn.Parameter) else None

    def _per_example(self, gd: GatedDelta, param: torch.Tensor, alpha: torch.Tensor,
                     x: torch.Tensor) -> torch.Tensor:
        # fp32: in a bf16 model a small delta on a scale near 1 would round away.
        d = gd.dense(self._mix(gd, alpha) * gd.delta)
        return _broadcast_like(param.float() + d, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if not self.state.enabled:
            return base(x)
        alpha = self.state.alpha_for(x.shape[0], x.device)
        weight = self._per_example(self.weight_delta, base.weight, alpha, x)
        bias = base.bias if isinstance(getattr(base, "bias", None), nn.Parameter) else None
        if self.bias_delta is not None:
            bias = self._per_example(self.bias_delta, base.bias, alpha, x)
        if isinstance(base, nn.LayerNorm):
            y = F.layer_norm(x, base.normalized_shape, None, None, base.eps) * weight
            y = y + bias if bias is not None else y
        elif isinstance(base, nn.RMSNorm):
            y = F.rms_norm(x, base.normalized_shape, None, base.eps) * weight
        else:
            params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
            y = torch.func.functional_call(base, params, (x,))
        return y.to(x.dtype)

    @torch.no_grad()
    def merge(self, alpha: torch.Tensor) -> nn.Module:
        base = self.base_layer
        for name, gd in self.gated_deltas().items():
            p = getattr(base, name)
            d = gd.merged_delta(gd.mix(alpha))
            setattr(base, name, nn.Parameter((p.float() + d).to(p.dtype), requires_grad=False))
        return base


class SIMoEEmbedding(SIMoELayer):
    """An input embedding (opt-in). Its input neurons are vocabulary entries, so the gates are
    per token id; ``delta`` is [dim, k] over the k live ids, like a matrix's live columns."""

    def __init__(self, base_layer: nn.Embedding, state: RoutingState, gate_kw: dict,
                 target_bias: bool = True) -> None:
        super().__init__(base_layer, state)
        vocab, dim = base_layer.weight.shape
        self.weight_delta = GatedDelta(vocab, dim, **gate_kw, device=base_layer.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(ids)
        if not self.state.enabled:
            return y
        alpha = self.state.alpha_for(ids.shape[0], ids.device)
        wd = self.weight_delta
        # Only the gates and delta rows of the ids present are gathered: no [B, T, V] tensor.
        pos = torch.full((wd.full_size,), -1, dtype=torch.long, device=ids.device)
        pos[wd.live_idx] = torch.arange(wd.num_live, device=ids.device)
        live = pos[ids]  # [B, T], -1 for pruned ids
        keep = (live >= 0).unsqueeze(-1)
        z_tok = wd.gates(self.training).t()[live.clamp(min=0)]  # [B, T, M]
        a = alpha.unsqueeze(1) if alpha.dim() == 2 else alpha  # [B, 1 or T, M]
        m_tok = (a.float() * z_tok).sum(-1, keepdim=True) * keep  # [B, T, 1]
        delta_tok = wd.delta.t()[live.clamp(min=0)]  # [B, T, dim]
        return y + (m_tok * delta_tok).to(y.dtype)

    @torch.no_grad()
    def merge(self, alpha: torch.Tensor) -> nn.Module:
        base = self.base_layer
        wd = self.weight_delta
        dw = wd.merged_delta(wd.mix(alpha)).t()
        base.weight = nn.Parameter((base.weight.float() + dw).to(base.weight.dtype),
                                   requires_grad=False)
        return base


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer with a 1-D learnable scale and one input, found by type, not by
    model family (norms that take a second input, e.g. gated RMSNorms, are left alone)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
        return False
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    if "norm" not in type(module).__name__.lower() or any(True for _ in module.children()):
        return False
    params = list(inspect.signature(module.forward).parameters.values())
    required = [p for p in params if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) == 1


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))
