"""SIMoE state on disk and out of the model: state dict, save/load, pruning, merging.

A checkpoint directory holds ``simoe_config.json`` and ``simoe_model.safetensors`` with, per
gated tensor ``NAME``: ``NAME.live_idx`` (surviving column indices), ``NAME.delta`` and
``NAME.log_alpha`` (possibly pruned), plus ``router.*``. The frozen base is never stored.

Every function takes a :class:`simoe.model.SIMoEModel` (duck-typed: ``gated_deltas()``,
``simoe_layers()``, ``router``, ``base_model``, ``simoe_config``); the model's methods of the
same names call them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .gguf_cache import ModelLoadError
from .targets import replace_module

WEIGHTS_NAME = "simoe_model.safetensors"


def simoe_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The SIMoE state only: live_idx, delta and log_alpha per gated tensor, router weights."""
    state: dict[str, torch.Tensor] = {}
    for name, gd in model.gated_deltas():
        state[f"{name}.live_idx"] = gd.live_idx
        state[f"{name}.delta"] = gd.delta.detach()
        state[f"{name}.log_alpha"] = gd.log_alpha.detach()
    for key, value in model.router.state_dict().items():
        state[f"router.{key}"] = value
    # Under FSDP2 a parameter is this process's shard: gathered whole (every process calls).
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().contiguous()
            for k, v in state.items()}


def load_simoe_state_dict(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`simoe_state_dict` output (possibly pruned) with shape checks."""
    state = dict(state)
    for name, gd in model.gated_deltas():
        keys = [f"{name}.{t}" for t in ("live_idx", "delta", "log_alpha")]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"checkpoint lacks {missing}: was it made for another base model "
                             "or another SIMoE target set?")
        gd.load_state(*(state.pop(k) for k in keys), name=name)
    router_state = {k[len("router."):]: state.pop(k) for k in list(state)
                    if k.startswith("router.")}
    if state:
        raise ValueError(f"checkpoint has tensors for modules this base model lacks: "
                         f"{sorted(state)[:5]}... Was it made for a base model of another "
                         "shape?")
    try:
        model.router.load_state_dict(router_state)
    except RuntimeError as err:
        raise ValueError(f"router weights do not fit this base model ({err}). Was the "
                         "checkpoint made for a base model of another shape?") from err


def save_simoe(model: Any, directory: str | os.PathLike,
               tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write simoe_config.json and simoe_model.safetensors (no pickle), each atomically;
    ``tensors``: a :func:`simoe_state_dict` already taken (gathered under FSDP)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = simoe_state_dict(model) if tensors is None else tensors
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        save_file(tensors, str(tmp_path), metadata={"format": "pt", "library": "simoe"})
        os.replace(tmp_path, directory / WEIGHTS_NAME)
    finally:
        tmp_path.unlink(missing_ok=True)
    model.simoe_config.save(directory)


def load_simoe_weights(model: Any, directory: str | os.PathLike) -> None:
    """Load ``directory/simoe_model.safetensors`` into ``model`` (one-line error if the file is
    missing, truncated or corrupt)."""
    file = Path(directory) / WEIGHTS_NAME
    if not file.is_file():
        raise ModelLoadError(f"{directory}: no {WEIGHTS_NAME}")
    try:
        state = load_file(file)
    except Exception as exc:  # noqa: BLE001 - SafetensorError is not importable portably
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise ModelLoadError(f"weight file {file} is truncated or corrupt ({reason})") from None
    load_simoe_state_dict(model, state)


@torch.no_grad()
def prune(model: Any) -> dict[str, int]:
    """Remove columns whose gate is zero for every expert; returns columns before/after.
    Free real-valued masks (gate_mode='free', ablation c) are never pruned."""
    before = after = 0
    for _, gd in model.gated_deltas():
        before += gd.num_live
        if gd.mode == "free":
            after += gd.num_live
            continue
        keep = (gd.gates() != 0).any(dim=0)
        gd.keep_columns(keep)
        after += gd.num_live
    return {"columns_before": before, "columns_after": after}


def live_fraction(gated: Any) -> float:
    """Fraction of the gated parameters still stored (1.0 until compaction or pruning)."""
    gated = list(gated)
    total = sum(gd.full_size * gd.params_per_gate for gd in gated)
    return sum(gd.num_live * gd.params_per_gate for gd in gated) / total if total else 1.0


@torch.no_grad()
def merge_and_unload(model: Any, alpha: torch.Tensor | list[float]) -> PreTrainedModel:
    """The wrapped model with ``W_pre + theta_delta diag(alpha @ Z)`` written into every
    targeted parameter: a plain PreTrainedModel. Done in place (PEFT's convention): the SIMoE
    model is spent (``detach_layers`` marks it; its methods then raise). A targeted LM head or
    input embedding tied to the other gets its own merged weight and the config is untied."""
    m = model.simoe_config.num_experts
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=model.device).reshape(-1)
    if alpha.numel() != m:
        raise ValueError(
            f"merge_and_unload needs one alpha of {m} weights, got {alpha.numel()}")
    base = model.base_model
    in_emb, out_emb = base.get_input_embeddings(), base.get_output_embeddings()
    tied = out_emb is not None and getattr(in_emb, "weight", None) is getattr(out_emb, "weight",
                                                                              None)
    for name, layer in model.simoe_layers():
        replace_module(base, name, layer.merge(alpha))
    model.detach_layers()
    if tied and base.get_input_embeddings().weight is not base.get_output_embeddings().weight:
        base.config.tie_word_embeddings = False
        base.config.get_text_config().tie_word_embeddings = False
    for p in base.parameters():
        p.requires_grad_(True)
    return base
