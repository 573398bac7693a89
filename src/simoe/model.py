"""SIMoEModel: a frozen Hugging Face causal LM upcycled into a Sparse Interpolated MoE.

    model = SIMoEModel.from_base(AutoModelForCausalLM.from_pretrained(name), SIMoEConfig())
    out = model(input_ids, attention_mask, labels)          # routes, then runs the wrapped LM
    model.generate(input_ids, attention_mask=mask)          # routes once on the prompt
    model.save_pretrained(d); SIMoEModel.from_pretrained(d)  # SIMoE state only, safetensors
    dense = model.merged_model(alpha)                        # a merged copy; model intact
    dense = model.merge_and_unload(alpha)                    # in place (PEFT); model is spent

One forward pass: (1) the router reads the prompt with every delta off (or takes a cached
routing embedding / an explicit alpha), (2) alpha is stored in the shared RoutingState,
(3) the wrapped model runs; each SIMoE layer adds (x * alpha@Z) theta_delta^T to its output.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from . import persistence
from .config import SIMoEConfig
from .gated_delta import GatedDelta
from .layers import RoutingState, SIMoELayer
from .loading import load_base_model
from .persistence import WEIGHTS_NAME
from .router import Router, TaskRouter, position_ids_from_mask, routing_positions
from .targets import find_targets, is_simoe_param, wrap_targets

__all__ = ["WEIGHTS_NAME", "SIMoECausalLMOutput", "SIMoEModel", "find_targets"]


@dataclasses.dataclass
class SIMoECausalLMOutput(CausalLMOutputWithPast):
    """The wrapped model's causal-LM output plus the mixing weights alpha ([B, M] or [B, T, M])."""

    alpha: torch.Tensor | None = None


class SIMoEModel(nn.Module):
    """A frozen causal LM whose targeted parameters are theta_pre + sum_i alpha_i z_i * theta_delta.

    Build with :meth:`from_base` or :meth:`from_pretrained`.
    """

    def __init__(self, base_model: PreTrainedModel, config: SIMoEConfig) -> None:
        super().__init__()
        body = getattr(base_model, "base_model", None)
        if body is None or body is base_model or not hasattr(base_model, "generate"):
            raise ValueError(
                f"unsupported architecture {type(base_model).__name__}: SIMoE wraps a transformers "
                "causal LM (AutoModelForCausalLM) whose transformer body is reachable as "
                "`model.base_model`")
        config = dataclasses.replace(config)
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(base_model.config, "_name_or_path", None) \
                or None
        self.simoe_config = config
        self.base_model = base_model
        self._merged = False
        self.state = RoutingState()
        for p in base_model.parameters():
            p.requires_grad_(False)

        self._layers = wrap_targets(base_model, config, self.state)

        device = base_model.get_input_embeddings().weight.device
        if config.routing == "task":
            self.router: nn.Module = TaskRouter(config.num_tasks, config.num_experts, device)
        else:
            hidden = base_model.config.get_text_config().hidden_size
            self.router = Router(hidden, config.num_experts, config.router_hidden_size, device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(cls, model: PreTrainedModel, config: SIMoEConfig | None = None) -> SIMoEModel:
        """Freeze ``model`` and wrap every targeted module; the result equals ``model`` at init."""
        return cls(model, config or SIMoEConfig())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        base_model: PreTrainedModel | None = None,
                        **base_model_kwargs: Any) -> SIMoEModel:
        """Load a SIMoE checkpoint onto ``base_model`` (default: the saved base name or path)."""
        directory = Path(directory)
        config = SIMoEConfig.load(directory)
        if base_model is None:
            if not config.base_model_name_or_path:
                raise ValueError(
                    f"{directory}: the checkpoint names no base model; pass base_model")
            base_model = load_base_model(config.base_model_name_or_path, **base_model_kwargs)
        model = cls(base_model, config)
        persistence.load_simoe_weights(model, directory)
        return model

    # ------------------------------------------------------------------ introspection
    @property
    def config(self):  # noqa: ANN201 - the wrapped model's PretrainedConfig
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    def _check_not_merged(self) -> None:
        """Raise once :meth:`merge_and_unload` has written the deltas into the base model."""
        if self._merged:
            raise RuntimeError(
                "this SIMoEModel was merged by merge_and_unload() and is spent: its base model "
                "(the model merge_and_unload returned) now holds the merged weights and no "
                "deltas, gates or routing. Reload it with SIMoEModel.from_pretrained, or use "
                "merged_model(alpha), which merges a copy and leaves this model intact")

    def simoe_layers(self) -> list[tuple[str, SIMoELayer]]:
        """(module name in the base model, layer) for every wrapped module."""
        self._check_not_merged()
        return list(self._layers)

    def gated_deltas(self) -> Iterator[tuple[str, GatedDelta]]:
        """(parameter name, GatedDelta) for every gated tensor, e.g. 'model.norm.weight'."""
        self._check_not_merged()
        for name, layer in self._layers:
            for pname, gd in layer.gated_deltas().items():
                yield f"{name}.{pname}", gd

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: base, targeted base, live delta, gates, router, trainable, stored.
        Raises RuntimeError after :meth:`merge_and_unload` (count the returned model instead)."""
        self._check_not_merged()
        base = sum(p.numel() for n, p in self.base_model.named_parameters()
                   if not is_simoe_param(n))
        delta = gates = targeted = 0
        for _, gd in self.gated_deltas():
            delta += gd.delta.numel()
            gates += gd.log_alpha.numel()
            targeted += gd.full_size * gd.params_per_gate
        router = sum(p.numel() for p in self.router.parameters())
        return {"base": base, "targeted_base": targeted, "delta": delta, "gates": gates,
                "router": router, "trainable": delta + gates + router,
                "total_stored": base + delta + gates + router}

    def parameter_groups(self, delta_lr: float, gate_lr: float, router_lr: float,
                         weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimiser groups with their own learning rates; no weight decay on gates."""
        self._check_not_merged()
        deltas = [gd.delta for _, gd in self.gated_deltas()]
        gates = [gd.log_alpha for _, gd in self.gated_deltas()]
        return [
            {"name": "deltas", "params": deltas, "lr": delta_lr, "weight_decay": weight_decay},
            {"name": "gates", "params": gates, "lr": gate_lr, "weight_decay": 0.0},
            {"name": "router", "params": list(self.router.parameters()), "lr": router_lr,
             "weight_decay": weight_decay},
        ]

    # ------------------------------------------------------------------ routing
    @torch.no_grad()
    def routing_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          routing_index: torch.Tensor | None = None,
                          labels: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen base model's last hidden state at the routing position ([B, H]), or at
        every position for token routing ([B, T, H]). Deltas are off; no grad; eval mode.
        Instance routing reads no token after the last routing position (attention is causal),
        so the pass stops there: in training the completions of supervised rows are not run."""
        body = self.base_model.base_model
        token = self.simoe_config.routing == "token"
        if not token:
            if routing_index is None:
                routing_index = routing_positions(input_ids, attention_mask, labels)
            routing_index = routing_index.remainder(input_ids.shape[1])  # -1: the last token
            end = int(routing_index.max()) + 1 if routing_index.numel() else input_ids.shape[1]
            input_ids = input_ids[:, :end]
            attention_mask = None if attention_mask is None else attention_mask[:, :end]
        kwargs: dict[str, Any] = {"use_cache": False}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        was_enabled, was_training = self.state.enabled, body.training
        self.state.enabled = False
        body.eval()
        try:
            hidden = body(input_ids=input_ids, **kwargs)[0]
        finally:
            self.state.enabled = was_enabled
            body.train(was_training)
        if token:
            return hidden
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), routing_index]

    def route(self, input_ids: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
              routing_index: torch.Tensor | None = None,
              routing_embedding: torch.Tensor | None = None, alpha: torch.Tensor | None = None,
              task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """alpha for a batch: explicit, else from task ids, a routing embedding or the prompt."""
        self._check_not_merged()
        m = self.simoe_config.num_experts
        if alpha is not None:
            alpha = torch.as_tensor(alpha, device=self.device, dtype=torch.float32)
            if alpha.shape[-1] != m:
                raise ValueError(f"alpha must have {m} expert weights in its last dim, "
                                 f"got shape {tuple(alpha.shape)}")
            if alpha.dim() == 1:
                batch = input_ids.shape[0] if input_ids is not None else 1
                alpha = alpha.expand(batch, m)
            return alpha
        if self.simoe_config.routing == "task":
            if task_ids is None:
                raise ValueError("routing='task' needs task_ids (or an explicit alpha)")
            return self.router(task_ids.to(self.device))
        if routing_embedding is None:
            if input_ids is None:
                raise ValueError("routing needs input_ids, a routing_embedding or alpha")
            routing_embedding = self.routing_embedding(input_ids, attention_mask, routing_index,
                                                       labels)
        return self.router(routing_embedding.to(self.device))

    # ------------------------------------------------------------------ forward / generate
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, routing_index: torch.Tensor | None = None,
                routing_embedding: torch.Tensor | None = None, alpha: torch.Tensor | None = None,
                task_ids: torch.Tensor | None = None, **kwargs: Any) -> SIMoECausalLMOutput:
        """Route (unless alpha/routing_embedding is given), then run the wrapped causal LM."""
        self._check_not_merged()
        a = self.route(input_ids, attention_mask, labels, routing_index, routing_embedding, alpha,
                       task_ids)
        # Kept after the forward returns: gradient checkpointing re-runs layers in backward.
        self.state.alpha = a
        out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                              **kwargs)
        return SIMoECausalLMOutput(loss=out.loss, logits=out.logits,
                                   past_key_values=getattr(out, "past_key_values", None),
                                   hidden_states=out.hidden_states, attentions=out.attentions,
                                   alpha=a)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 routing_embedding: torch.Tensor | None = None, alpha: torch.Tensor | None = None,
                 task_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """transformers' generate with alpha fixed by routing once on the prompt (last non-pad
        token). Token routing re-routes every step: before each forward the frozen base runs
        over that step's new tokens with its own KV cache (the routing pass), so both passes
        decode incrementally. Beam search, assisted decoding or a cache passed in reorder or
        crop the model's cache behind the routing pass's back: those decode without a cache."""
        self._check_not_merged()
        if self.simoe_config.routing != "token" or alpha is not None:
            self.state.alpha = self.route(input_ids, attention_mask, None, None,
                                          routing_embedding, alpha, task_ids)
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                            **kwargs)
        if routing_embedding is not None or task_ids is not None:
            raise ValueError("token routing re-routes every step from the tokens; it takes no "
                             "routing_embedding or task_ids (pass alpha to fix the mixture)")
        caches: dict[str, Any] = {}
        config = kwargs.get("generation_config") or self.base_model.generation_config
        if (max(kwargs.get("num_beams") or 1, getattr(config, "num_beams", 1) or 1) > 1
                or kwargs.get("assistant_model") is not None
                or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None):
            kwargs["use_cache"] = False

        def reroute(_module: nn.Module, args: tuple, kw: dict) -> None:
            ids = kw.get("input_ids", args[0] if args else None)
            self.state.alpha = self.router(self._token_routing_pass(ids, kw, caches))

        handle = self.base_model.register_forward_pre_hook(reroute, with_kwargs=True)
        try:
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                            **kwargs)
        finally:
            handle.remove()

    def _token_routing_pass(self, ids: torch.Tensor, kw: dict, caches: dict) -> torch.Tensor:
        """The frozen base's last hidden states ([B, T_new, H]) for one generation step's new
        tokens, with the same mask and positions as the step, continuing its own KV cache
        (``caches["routing"]``, restarted with the step's cache: a new generate call)."""
        from transformers import DynamicCache

        step_cache = kw.get("cache", kw.get("past_key_values"))  # transformers >= 5.x: cache
        cached = step_cache is not None and step_cache.get_seq_length() > 0
        if not cached or "routing" not in caches:
            caches["routing"] = DynamicCache(config=self.base_model.config) if kw.get(
                "use_cache", True) else None
        elif caches["routing"].get_seq_length() != step_cache.get_seq_length():
            raise RuntimeError("token routing: the routing pass's cache holds "
                               f"{caches['routing'].get_seq_length()} tokens, the model's "
                               f"{step_cache.get_seq_length()}; decode with use_cache=False")
        mask, positions = kw.get("attention_mask"), kw.get("position_ids")
        if positions is None and mask is not None:
            positions = position_ids_from_mask(mask)[:, -ids.shape[1]:]
        extra = {k: v for k, v in (("attention_mask", mask), ("position_ids", positions),
                                   ("cache_position", kw.get("cache_position")))
                 if v is not None}
        body = self.base_model.base_model
        routing_cache = caches["routing"]
        name = "cache" if "cache" in inspect.signature(body.forward).parameters \
            else "past_key_values"
        extra[name] = routing_cache
        was_enabled, was_training = self.state.enabled, body.training
        self.state.enabled = False
        body.eval()
        try:
            return body(input_ids=ids, use_cache=routing_cache is not None, **extra)[0]
        finally:
            self.state.enabled = was_enabled
            body.train(was_training)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        **kwargs: Any) -> None:
        """Checkpoint the wrapped model's blocks (non-reentrant by default). Exact: alpha stays
        in the routing state until the next forward, so the recomputation sees it."""
        ckpt_kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        self.base_model.activation_checkpointing_enable(ckpt_kwargs, **kwargs)
        self.base_model.config.use_cache = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None,
                                      **kwargs: Any) -> None:
        """Alias of :meth:`activation_checkpointing_enable` (transformers' older name)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ------------------------------------------------------------------ pruning, merging, saving
    def prune(self) -> dict[str, int]:
        """Remove columns whose gate is zero for every expert (see :func:`persistence.prune`)."""
        self._check_not_merged()
        return persistence.prune(self)

    def merge_and_unload(self, alpha: torch.Tensor | list[float]) -> PreTrainedModel:
        """Write ``W_pre + theta_delta diag(alpha @ Z)`` into every targeted parameter of the
        wrapped model and return it: a plain PreTrainedModel (PEFT's convention: in place, no
        copy). This SIMoEModel is spent afterwards: forward, generate, route, save_pretrained,
        parameter_counts and the rest raise RuntimeError. :meth:`merged_model` keeps it."""
        self._check_not_merged()
        return persistence.merge_and_unload(self, alpha)

    def merged_model(self, alpha: torch.Tensor | list[float]) -> PreTrainedModel:
        """A merged copy at ``alpha`` (see :meth:`merge_and_unload`); this model is unchanged.
        Needs memory for a second copy of the base model."""
        self._check_not_merged()
        return persistence.merge_and_unload(copy.deepcopy(self), alpha)

    def detach_layers(self) -> None:
        """Forget the wrapped layers (after merging them away); the model is spent."""
        self._layers = []
        self.state.alpha = None
        self._merged = True

    def simoe_state_dict(self) -> dict[str, torch.Tensor]:
        """The SIMoE state only: live_idx, delta and log_alpha per gated tensor, router weights."""
        return persistence.simoe_state_dict(self)

    def load_simoe_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`simoe_state_dict` output (possibly pruned) with shape checks."""
        persistence.load_simoe_state_dict(self, state)

    def save_pretrained(self, directory: str | os.PathLike,
                        state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write simoe_config.json and simoe_model.safetensors (no pickle), each atomically
        (``state_dict``: a :meth:`simoe_state_dict` already taken, e.g. gathered under FSDP)."""
        self._check_not_merged()
        persistence.save_simoe(self, directory, state_dict)
