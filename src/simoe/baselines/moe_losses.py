"""Router losses for the Mixtral baselines: ST-MoE router z-loss (transformers has none) and a
thin wrapper over transformers' Switch-Transformer load-balancing loss.

``router_logits`` are what ``MixtralForCausalLM(..., output_router_logits=True)`` returns: one
``[B*T, E]`` tensor per layer, rows in batch-major order (row ``b*T + t``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

ROUTER_Z_LOSS_COEF = 1e-3
"""Router z-loss strength of the paper's upcycling/BTX baselines (appendix B.1)."""


def _layers(router_logits: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    layers = (router_logits,) if isinstance(router_logits, Tensor) else tuple(router_logits or ())
    if not layers:
        raise ValueError("router_logits is empty; run the model with output_router_logits=True")
    return layers


def _flat_mask(attention_mask: Tensor | None, rows: int, device: torch.device) -> Tensor | None:
    if attention_mask is None:
        return None
    mask = attention_mask.reshape(-1).to(device=device, dtype=torch.float32)
    if mask.numel() != rows:
        raise ValueError(f"attention_mask has {mask.numel()} tokens but router_logits have {rows} "
                         "rows per layer (the mask must be [B, T] for the same forward pass)")
    return mask


def router_z_loss(
    router_logits: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None
) -> Tensor:
    """ST-MoE router z-loss (Zoph et al., 2022): per layer, the mean over tokens of
    ``logsumexp_e(logits)^2``, then the mean over layers. With ``attention_mask`` ([B, T], 0 =
    padding) the per-layer mean runs over the non-padding tokens only. Computed in fp32."""
    layers = _layers(router_logits)
    per_layer = []
    for logits in layers:
        z = torch.logsumexp(logits.float(), dim=-1).square()
        mask = _flat_mask(attention_mask, z.shape[0], z.device)
        if mask is None:
            per_layer.append(z.mean())
        else:
            per_layer.append((z * mask).sum() / mask.sum().clamp_min(1.0))
    return torch.stack(per_layer).mean()


def load_balancing_loss(
    router_logits: Tensor | Sequence[Tensor],
    num_experts: int,
    top_k: int,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """transformers' ``load_balancing_loss_func`` (the loss ``MixtralForCausalLM`` adds with
    ``router_aux_loss_coef``): ``E * sum_e f_e * P_e`` over the tokens of all layers pooled, where
    ``f_e`` = (top-k assignments to expert e) / tokens (so ``sum_e f_e = top_k``) and ``P_e`` = mean
    softmax probability of e; padding tokens (``attention_mask`` == 0) are left out of both."""
    layers = _layers(router_logits)
    if attention_mask is not None:
        _flat_mask(attention_mask, layers[0].shape[0], layers[0].device)  # shape check
    return load_balancing_loss_func(layers, num_experts, top_k, attention_mask)


__all__ = ["ROUTER_Z_LOSS_COEF", "load_balancing_loss", "router_z_loss"]
