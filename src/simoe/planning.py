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
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, PretrainedConfig

from .baselines.upcycle import mixtral_config_from_dense
from .config import SIMoEConfig
from .model import SIMoEModel

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

    @property
    def total(self) -> int:
        """The peak: gradients replace the activations (and the loss's backward) as backward
        runs, so the larger of the two counts."""
        return (self.weights + self.optimizer + self.buffers
                + max(self.activations + self.loss_transient, self.gradients))

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
def _saved_tensors(model: nn.Module, inside: tuple[type, ...] = ()) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves during the block (each tensor once, parameters not);
    ``inside``: also count what modules of these types save (key ``"inside"``)."""
    params = {id(p) for p in model.parameters()}
    seen: dict[int, torch.Tensor] = {}
    counts = {"total": 0, "inside": 0}
    depth = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        root = t if t._base is None else t._base
        if id(root) not in params and id(root) not in seen:
            seen[id(root)] = root  # kept alive, so ids stay unique
            size = root.numel() * root.element_size()
            counts["total"] += size
            if depth[0]:
                counts["inside"] += size
        return t

    handles = []
    for module in model.modules():
        if inside and isinstance(module, inside):
            handles.append(module.register_forward_pre_hook(
                lambda *_: depth.__setitem__(0, depth[0] + 1)))
            handles.append(module.register_forward_hook(
                lambda *_: depth.__setitem__(0, depth[0] - 1)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield counts
    finally:
        for h in handles:
            h.remove()


def _forward(model: nn.Module, batch: int, seq: int, **kwargs: Any) -> None:
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    model(input_ids=ids, labels=ids, **kwargs)


def _mlp_type(model: nn.Module) -> tuple[type, ...]:
    layer = model.base_model.layers[0] if hasattr(model.base_model, "layers") else None
    mlp = getattr(layer, "mlp", None)
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
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module):
            return max(_bytes(list(layer.parameters())) for layer in module)
    return 0


def estimate(config: PretrainedConfig, variant: str, batch: int, seq: int, devices: int = 1,
             strategy: str = "ddp", dtype: torch.dtype = torch.float32, sparsity: float = 0.75,
             experts: int = 8, moe_experts: int = 4, top_k: int = 2, lora_r: int = 16
             ) -> Estimate:
    """Peak training memory per device of one variant at ``batch`` rows x ``seq`` tokens per
    device, Adam, ``devices`` data-parallel devices under ``strategy``."""
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
    if variant == "upcycle":
        for p in model.parameters():
            p.requires_grad_(True)
        with _saved_tensors(model, _mlp_type(model)) as saved:
            _forward(model, batch, seq)
        router = batch * seq * moe_experts * 4 * 3  # logits, softmax, top-k weights (fp32)
        activations = saved["total"] + (top_k - 1) * saved["inside"] + router
        with torch.device("meta"):
            from transformers import MixtralForCausalLM

            model = MixtralForCausalLM(mixtral_config_from_dense(config, moe_experts, top_k))
            model.to(dtype)
    else:
        with _saved_tensors(model) as saved:
            _forward(model, batch, seq, **kwargs)
        activations = saved["total"]
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights, grads = _bytes(params), _bytes(trainable)
    optimizer = 2 * grads
    buffers = 0
    if devices > 1 and strategy == "ddp":
        buffers = grads  # DDP's gradient buckets
    elif devices > 1:  # FSDP: shards, plus one layer's weights gathered at a time
        weights, grads, optimizer = (-(-x // devices) for x in (weights, grads, optimizer))
        buffers = 2 * _largest_layer(model)
    vocab = config.get_text_config().vocab_size
    size = torch.empty((), dtype=dtype).element_size()
    transient = batch * seq * vocab * (8 + (size if dtype != torch.float32 else 0))
    return Estimate(variant, weights, grads, optimizer, activations, transient, buffers,
                    sum(p.numel() for p in trainable))


def plan(name_or_path: str, batch: int = 4, seq: int = 256, devices: int = 1,
         strategy: str = "ddp", dtype: str = "fp32", sparsity: float = 0.75,
         variants: tuple[str, ...] = VARIANTS) -> list[Estimate]:
    """Every variant's :func:`estimate` for the model ``name_or_path`` names."""
    config = load_config(name_or_path)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return [estimate(config, v, batch, seq, devices, strategy, torch_dtype, sparsity)
            for v in variants]


def format_plan(rows: list[Estimate]) -> str:
    """A markdown table in GiB with each variant's ratio to full fine-tuning (peak = weights +
    Adam + buffers + max(activations + loss bwd, grads))."""
    full = next((r.total for r in rows if r.variant == "full"), None)
    lines = ["| variant | weights | grads | Adam | activations | loss bwd | buffers | peak GiB "
             "| vs full |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r.total / full:.2f}" if full else "-"
        cells = [f"{x / GIB:.2f}" for x in (r.weights, r.gradients, r.optimizer, r.activations,
                                             r.loss_transient, r.buffers, r.total)]
        lines.append(f"| {r.variant} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)
