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

from .gated_delta import GatedDelta, GatedDeltaLinear, broadcast_like


class RoutingState:
    """The mixing weights of the batch in flight, shared by every SIMoE layer of one model.

    ``alpha`` is set by :class:`simoe.SIMoEModel` before the wrapped model runs and is kept until
    the next forward, so gradient checkpointing can re-run layers during backward.
    ``enabled=False`` switches every delta off (the router's pass over the frozen base model).
    Frozen inference (eval mode, no grad) memoises what depends only on alpha and the SIMoE
    parameters (each layer's ``m = alpha @ Z`` and its delta in the activations' dtype) for as
    long as alpha is unchanged: one generate() computes them once, not at every decode step.
    """

    def __init__(self) -> None:
        self._alpha: torch.Tensor | None = None
        self._memo: dict = {}
        self.enabled: bool = True

    @property
    def alpha(self) -> torch.Tensor | None:
        return self._alpha

    @alpha.setter
    def alpha(self, value: torch.Tensor | None) -> None:
        self._alpha = value
        self._memo.clear()

    def memo(self, key: tuple, stamp: tuple, build):  # noqa: ANN001, ANN201 - any value
        """``build()``, computed once per alpha and per ``stamp`` (the identity and in-place
        version of the parameters it reads, so an update or a pruning invalidates it)."""
        hit = self._memo.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = build()
        self._memo[key] = (stamp, value)
        return value

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

    def _frozen(self) -> bool:
        """Inference with nothing to differentiate: terms that depend on alpha only are
        memoised in the routing state."""
        return not self.training and not torch.is_grad_enabled()

    def _memo(self, x: torch.Tensor, build):  # noqa: ANN001, ANN202
        stamp = tuple((id(p), p._version) for gd in self.gated_deltas().values()
                      for p in (gd.delta, gd.log_alpha))
        return self.state.memo((id(self), x.shape[0], x.dtype, x.device), stamp, build)

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
        wd = self.weight_delta
        live = None if wd.is_full else wd.live_idx
        if self._frozen():  # decoding: m, the delta and the bias term computed once per alpha
            m, delta, bias = self._memo(x, lambda: self._inference_terms(x))
            xs = x if live is None else x.index_select(-1, live)
            y = y + F.linear(xs * m, delta)
            return y if bias is None else y + bias
        alpha = self.state.alpha_for(x.shape[0], x.device)
        y = y + GatedDeltaLinear.apply(x, self._mix(wd, alpha), wd.delta, live)
        if self.bias_delta is not None:
            bd = self.bias_delta
            y = y + broadcast_like(bd.dense(self._mix(bd, alpha) * bd.delta), y).to(y.dtype)
        return y

    def _inference_terms(self, x: torch.Tensor) -> tuple:
        """(m broadcast like x, theta_delta, dense bias delta or None), in x's dtype."""
        alpha = self.state.alpha_for(x.shape[0], x.device)
        wd = self.weight_delta
        m = broadcast_like(wd.mix(alpha), x).to(x.dtype)
        bias = None
        if self.bias_delta is not None:
            bd = self.bias_delta
            bias = broadcast_like(bd.dense(bd.mix(alpha) * bd.delta), x).to(x.dtype)
        return m, wd.delta.to(x.dtype), bias

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
        return broadcast_like(param.float() + d, x)

    def _scale_and_bias(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        base = self.base_layer
        alpha = self.state.alpha_for(x.shape[0], x.device)
        weight = self._per_example(self.weight_delta, base.weight, alpha, x)
        bias = base.bias if isinstance(getattr(base, "bias", None), nn.Parameter) else None
        if self.bias_delta is not None:
            bias = self._per_example(self.bias_delta, base.bias, alpha, x)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if not self.state.enabled:
            return base(x)
        if self._frozen():
            weight, bias = self._memo(x, lambda: self._scale_and_bias(x))
        else:
            weight, bias = self._scale_and_bias(x)
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
