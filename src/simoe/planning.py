"""`simoe plan`: peak training memory per device, estimated from a model config alone.

Every variant is built on the meta device (shapes, no weights) by the same code that trains it:
full fine-tuning, LoRA (PEFT, r 16, all linear), sparse upcycling (the Mixtral surgery's config,
4 experts, top-2) and SIMoE at init and after live compaction at tau. One forward with labels
runs on meta tensors under ``saved_tensors_hooks``; what autograd keeps for backward (each
tensor counted once, parameters excluded) is the activation memory. Per device:

    weights (every parameter, its dtype) + Adam's two moments (trainable)
    + max(activations + loss transient, gradients) [+ a gradient-sized bucket under DDP]

The loss transient is the cross-entropy's backward: the fp32 gradients of the log-probabilities
and of the logits, 2 x batch x seq x vocab x 4 bytes (plus the logits' own dtype when it is not
fp32). Backward releases the activations as it allocates the gradients, so the peak is the
larger of the two ends: all activations at its start, all gradients at its end.

Gradient checkpointing (``checkpointing=True``, as ``--gradient-checkpointing`` trains:
non-reentrant, one checkpoint per decoder layer) keeps only each layer's input hidden state and
what runs outside the layers (embeddings, final norm, logits); backward rebuilds one layer's
activations at a time, on top of what is alive then (``recompute`` = what it adds to the
gradients): at the last layer every checkpoint and the gradients outside the layers, at the
first every gradient. Peak:

    ... + max(outside + layers x hidden state + loss transient, gradients + recompute)

It leaves out the temporaries of one layer's backward: within 8% of a real step's peak on tiny
Llama and GPT-2 models (tests), within 5% on SmolLM2-135M (benchmarks/train_cost.py).

FSDP shards weights, gradients and moments over the devices and gathers one decoder layer's
weights at a time. Sparse upcycling's expert dispatch is data-dependent and cannot run on meta
tensors: its activations are the dense model's with the FFN part counted top-k times.
The estimate counts tensors, as ``torch.cuda.max_memory_allocated`` does; it leaves out the
allocator's slack (CUDA's reserved-but-free blocks; on the CPU glibc's RSS ran 30-75% above the
tensors at 135M), the CUDA context and kernels' workspaces (about 0.3-1 GiB on a GPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from .baselines.upcycle import check_upcyclable, mixtral_config_from_dense
from .config import SIMoEConfig
from .model import SIMoEModel

logger = logging.getLogger(__name__)

GIB = 1024 ** 3
ATTENTION = "simoe_plan_fused"
VARIANTS = ("full", "lora", "upcycle", "simoe", "simoe_compacted")
STRATEGIES = ("ddp", "fsdp")
_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "hidden_act": "silu",
           "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "bos_token_id": 128000, "eos_token_id": 128001}
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
                     "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                     "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                     "max_position_embeddings": 8192, "hidden_act": "silu"},
    "llama-3.2-1b": {**_LLAMA3, "hidden_size": 2048, "intermediate_size": 8192,
                     "num_hidden_layers": 16, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True},
    "llama-3.2-3b": {**_LLAMA3, "hidden_size": 3072, "intermediate_size": 8192,
                     "num_hidden_layers": 28, "num_attention_heads": 24,
                     "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
    "llama-3-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False},
}


@dataclasses.dataclass
class Estimate:
    """Bytes per device of one variant."""

    variant: str
    weights: int
    gradients: int
    optimizer: int
    activations: int
    loss_transient: int
    buffers: int
    trainable_params: int
    recompute: int = 0  # under checkpointing: one decoder layer's activations, rebuilt in backward

    @property
    def total(self) -> int:
        """The peak: gradients replace the activations (and the loss's backward) as backward
        runs, so the larger of the two counts."""
        return (self.weights + self.optimizer + self.buffers
                + max(self.activations + self.loss_transient, self.gradients + self.recompute))

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total": self.total}


def load_config(name_or_path: str) -> PretrainedConfig:
    """A named config (``NAMED_CONFIGS``), a model directory / hub id, or a ``.gguf`` file."""
    if name_or_path.lower() in NAMED_CONFIGS:
        spec = dict(NAMED_CONFIGS[name_or_path.lower()])
        return AutoConfig.for_model(spec.pop("model_type"), **spec)
    if name_or_path.endswith(".gguf"):
        from pathlib import Path

        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name_or_path}: no such GGUF file")
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoConfig.from_pretrained(name_or_path)


class _FusedAttention(torch.autograd.Function):
    """Stands for a fused attention kernel (SDPA's flash / memory-efficient path, FlashAttention):
    it keeps q, k, v (k and v unexpanded), the output and the fp32 log-sum-exp, never the
    [T, T] score matrix that the math path on meta tensors would keep."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor  # noqa: ANN001
                ) -> torch.Tensor:
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        raise RuntimeError("a planning stand-in: it has no backward")


def _fused_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    return _FusedAttention.apply(query, key, value).transpose(1, 2), None


AttentionInterface.register(ATTENTION, _fused_attention)


def _meta_model(config: PretrainedConfig, dtype: torch.dtype) -> nn.Module:
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=dtype,
                                                attn_implementation=ATTENTION)


@contextlib.contextmanager
def _saved_tensors(model: nn.Module, **inside: tuple[type, ...]) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves during the block (each tensor once, parameters not);
    ``inside``: name=module types, also count what modules of these types save (key name)."""
    params = {id(p) for p in model.parameters()}
    seen: dict[int, torch.Tensor] = {}
    counts = {"total": 0, **dict.fromkeys(inside, 0)}
    depth = dict.fromkeys(inside, 0)

    def pack(t: torch.Tensor) -> torch.Tensor:
        root = t if t._base is None else t._base
        if id(root) not in params and id(root) not in seen:
            seen[id(root)] = root  # kept alive, so ids stay unique
            size = root.numel() * root.element_size()
            counts["total"] += size
            for key, d in depth.items():
                if d:
                    counts[key] += size
        return t

    def enter(key: str, step: int):  # noqa: ANN202
        return lambda *_: depth.__setitem__(key, depth[key] + step)

    handles = []
    for module in model.modules():
        for key, types in inside.items():
            if isinstance(module, types):
                handles.append(module.register_forward_pre_hook(enter(key, 1)))
                handles.append(module.register_forward_hook(enter(key, -1)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield counts
    finally:
        for h in handles:
            h.remove()


def _forward(model: nn.Module, batch: int, seq: int, **kwargs: Any) -> None:
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    model(input_ids=ids, labels=ids, **kwargs)


def _decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The list of blocks transformers checkpoints (``GradientCheckpointingLayer``: Llama's
    decoder layers, GPT-2's blocks; the text decoder's, not a vision tower's, when both exist)."""
    found = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)
             and isinstance(m[0], GradientCheckpointingLayer)]
    if not found:
        return None
    config = getattr(model, "config", None)
    wanted = getattr(config.get_text_config(), "num_hidden_layers", None) \
        if hasattr(config, "get_text_config") else None
    return next((layers for layers in found if len(layers) == wanted), found[0])


def _mlp_type(model: nn.Module) -> tuple[type, ...]:
    layers = _decoder_layers(model)
    mlp = getattr(layers[0], "mlp", None) if layers is not None else None
    if mlp is None:
        raise ValueError(f"{type(model).__name__}: no decoder layer with an `mlp` to upcycle")
    return (type(mlp),)


def _compact(model: SIMoEModel, sparsity: float) -> None:
    """Shapes of a run after live compaction: (1 - sparsity) of every gated tensor's columns."""
    for _, gd in model.gated_deltas():
        k = max(1, round(gd.full_size * (1.0 - sparsity)))
        gd.live_idx = torch.arange(k, device="meta")
        shape = (gd.rows, k) if gd.rows is not None else (k,)
        gd.delta = nn.Parameter(torch.empty(shape, device="meta"))
        gd.log_alpha = nn.Parameter(torch.empty(gd.log_alpha.shape[0], k, device="meta"))


def _bytes(params: list[nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _largest_layer(model: nn.Module) -> int:
    """Bytes of the largest decoder layer (FSDP gathers one at a time)."""
    layers = _decoder_layers(model)
    return max(_bytes(list(layer.parameters())) for layer in layers) if layers else 0


def estimate(config: PretrainedConfig, variant: str, batch: int, seq: int, devices: int = 1,
             strategy: str = "ddp", dtype: torch.dtype = torch.float32, sparsity: float = 0.75,
             experts: int = 8, moe_experts: int = 4, top_k: int = 2, lora_r: int = 16,
             checkpointing: bool = False) -> Estimate:
    """Peak training memory per device of one variant at ``batch`` rows x ``seq`` tokens per
    device, Adam, ``devices`` data-parallel devices under ``strategy``; ``checkpointing``:
    gradient checkpointing per decoder layer."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    model = _meta_model(config, dtype)
    kwargs: dict[str, Any] = {}
    if variant == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif variant == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r,
                                                 target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    elif variant.startswith("simoe"):
        for p in model.parameters():
            p.requires_grad_(False)
        model = SIMoEModel.from_base(model, SIMoEConfig(num_experts=experts,
                                                        target_sparsity=sparsity))
        if variant == "simoe_compacted":
            _compact(model, sparsity)
        hidden = config.get_text_config().hidden_size
        kwargs["routing_embedding"] = torch.empty(batch, hidden, device="meta")  # cached
    layers = _decoder_layers(model)
    groups = {"layers": (type(layers[0]),)} if layers is not None else {}
    if variant == "upcycle":
        check_upcyclable(model)
        for p in model.parameters():
            p.requires_grad_(True)
        groups["mlp"] = _mlp_type(model)
    with _saved_tensors(model, **groups) as saved:
        _forward(model, batch, seq, **kwargs)
    activations, inside = saved["total"], saved.get("layers", 0)
    if variant == "upcycle":  # the FFN runs top-k times per token; the router's fp32 tensors
        extra = (top_k - 1) * saved["mlp"] + batch * seq * moe_experts * 4 * 3
        activations, inside = activations + extra, inside + extra
        with torch.device("meta"):
            from transformers import MixtralForCausalLM

            model = MixtralForCausalLM(mixtral_config_from_dense(config, moe_experts, top_k))
            model.to(dtype)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights, grads = _bytes(params), _bytes(trainable)
    optimizer = 2 * grads
    buffers = 0
    sharded = devices > 1 and strategy == "fsdp"
    if devices > 1 and strategy == "ddp":
        buffers = grads  # DDP's gradient buckets
    elif sharded:  # FSDP: shards, plus one layer's weights gathered at a time
        weights, grads, optimizer = (-(-x // devices) for x in (weights, grads, optimizer))
        buffers = 2 * _largest_layer(model)
    recompute = 0
    if checkpointing:
        if layers is None:
            raise ValueError(f"{type(model).__name__}: no decoder layers to checkpoint")
        n = len(layers)
        hidden_state = batch * seq * config.get_text_config().hidden_size * \
            torch.empty((), dtype=dtype).element_size()
        activations = activations - inside + n * hidden_state
        # Backward at layer l holds the checkpoints of layers 0..l, the gradients of the layers
        # above and of what lies outside them (each device's shard under FSDP), layer l's own
        # gradient in full (before FSDP's reduce-scatter), layer l rebuilt and its input's
        # gradient: the worst l is the last (every checkpoint) or the first (every gradient).
        layer_grads = [_bytes([p for p in layer.parameters() if p.requires_grad])
                       for layer in _decoder_layers(model)]
        share = (lambda x: -(-x // devices)) if sharded else (lambda x: x)  # noqa: E731
        top = grads - share(sum(layer_grads)) + max(layer_grads) + n * hidden_state
        bottom = grads + hidden_state + max(layer_grads) - share(max(layer_grads))
        recompute = -(-inside // n) + hidden_state + max(top, bottom) - grads
    vocab = config.get_text_config().vocab_size
    size = torch.empty((), dtype=dtype).element_size()
    transient = batch * seq * vocab * (8 + (size if dtype != torch.float32 else 0))
    return Estimate(variant, weights, grads, optimizer, activations, transient, buffers,
                    sum(p.numel() for p in trainable), recompute)


def plan(name_or_path: str, batch: int = 4, seq: int = 256, devices: int = 1,
         strategy: str = "ddp", dtype: str = "fp32", sparsity: float = 0.75,
         variants: tuple[str, ...] = VARIANTS, checkpointing: bool = False) -> list[Estimate]:
    """Every variant's :func:`estimate` for the model ``name_or_path`` names; a variant the
    architecture does not support (sparse upcycling of GPT-2) is left out with a warning."""
    config = load_config(name_or_path)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    rows = []
    for v in variants:
        try:
            rows.append(estimate(config, v, batch, seq, devices, strategy, torch_dtype, sparsity,
                                 checkpointing=checkpointing))
        except ValueError as err:
            if v == "full" or len(variants) == 1:
                raise
            logger.warning("%s not planned: %s", v, err)
    return rows


def format_plan(rows: list[Estimate]) -> str:
    """A markdown table in GiB with each variant's ratio to full fine-tuning (peak = weights +
    Adam + buffers + max(activations + loss bwd, grads [+ one layer recomputed])); the
    ``recompute`` column appears under gradient checkpointing."""
    full = next((r.total for r in rows if r.variant == "full"), None)
    recompute = any(r.recompute for r in rows)
    header = ["variant", "weights", "grads", "Adam", "activations", "loss bwd",
              *(["recompute"] if recompute else []), "buffers", "peak GiB", "vs full"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for r in rows:
        ratio = f"{r.total / full:.2f}" if full else "-"
        values = (r.weights, r.gradients, r.optimizer, r.activations, r.loss_transient,
                  *((r.recompute,) if recompute else ()), r.buffers, r.total)
        cells = [f"{x / GIB:.2f}" for x in values]
        lines.append(f"| {r.variant} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)
