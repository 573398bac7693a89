"""Which modules of a transformers model SIMoE wraps, and the wrapping itself (module surgery).

Targets are found by module type (nn.Linear, transformers' Conv1D, any one-input norm with a
1-D scale), so no per-architecture list of names is needed; `include`/`exclude` regexes narrow
them. Wrapping replaces each target in its parent module by a SIMoE layer sharing one
RoutingState.
"""

from __future__ import annotations

import re

from torch import nn

from .config import SIMoEConfig
from .gates import init_mean
from .layers import (
    RoutingState,
    SIMoEEmbedding,
    SIMoELayer,
    SIMoELinear,
    SIMoENorm,
    is_linear,
    is_norm,
)

_WRAPPERS = {"linear": SIMoELinear, "norm": SIMoENorm, "embedding": SIMoEEmbedding}


def find_targets(model: nn.Module, config: SIMoEConfig) -> dict[str, str]:
    """Module name -> kind ('linear', 'norm', 'embedding') of every module SIMoE wraps.

    Found by module type (nn.Linear, transformers' Conv1D, any norm with a 1-D scale), so no
    per-architecture list of names is needed. Embeddings and the LM head are opt-in.
    """
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    in_emb = get_in() if get_in else None
    out_emb = get_out() if get_out else None
    targets: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, SIMoELayer):
            raise ValueError(f"module {name!r} is already a SIMoE layer; wrap a plain model")
        if module is out_emb and out_emb is not None:
            kind = "linear" if config.target_lm_head and is_linear(module) else None
        elif module is in_emb and in_emb is not None:
            kind = "embedding" if config.target_embeddings and isinstance(module, nn.Embedding) \
                else None
        elif is_linear(module):
            kind = "linear" if config.target_linear else None
        elif is_norm(module):
            kind = "norm" if config.target_norms else None
        else:
            kind = None
        if kind is None:
            continue
        if config.include and not any(re.search(p, name) for p in config.include):
            continue
        if any(re.search(p, name) for p in config.exclude):
            continue
        targets[name] = kind
    return targets


def wrap_targets(model: nn.Module, config: SIMoEConfig,
                 state: RoutingState) -> list[tuple[str, SIMoELayer]]:
    """Replace every target of ``model`` in place by its SIMoE wrapper; returns (name, layer)."""
    targets = find_targets(model, config)
    if not targets:
        raise ValueError(
            f"nothing to target in {type(model).__name__}: no module matched the SIMoE "
            f"targets (linear={config.target_linear}, norms={config.target_norms}, "
            f"include={config.include}, exclude={config.exclude})")
    gate_kw = {"num_experts": config.num_experts, "noise_std": config.init_noise_std,
               "mode": config.gate_mode, "straight_through": config.straight_through,
               "init_mean": 1.0 if config.gate_mode == "free" else init_mean(
                   config.init_drop_prob)}
    layers: list[tuple[str, SIMoELayer]] = []
    for name, kind in targets.items():
        layer = _WRAPPERS[kind](model.get_submodule(name), state, gate_kw,
                                target_bias=config.target_biases)
        replace_module(model, name, layer)
        layers.append((name, layer))
    return layers


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def is_simoe_param(name: str) -> bool:
    """True for the parameter names SIMoE adds to a wrapped model (deltas, gates, router)."""
    return (".weight_delta." in name or ".bias_delta." in name) or name.startswith("router.")
