"""Sparse upcycling (Komatsuzaki et al., 2023): a dense Llama-family causal LM becomes a
``MixtralForCausalLM`` whose experts are copies of the dense FFNs.

Only dense architectures that map *exactly* onto Mixtral are accepted: bias-free q/k/v/o attention
with RoPE and GQA, RMSNorm before attention and FFN, and a bias-free SwiGLU FFN
``down(act(gate(x)) * up(x))``. In this transformers version that is ``llama`` (with
``attention_bias=False`` and ``mlp_bias=False``) and ``mistral``. ``MixtralAttention`` builds its
projections with ``bias=False`` unconditionally, so Qwen2 (q/k/v biases) cannot be converted
without changing its function; Qwen3 (q/k norms), Gemma (offset norms, scaled embeddings), Phi-3
(fused qkv, partial RoPE), GPT-2 and GPT-NeoX (LayerNorm, non-gated GELU MLP) are rejected too.

The conversion code (config, weight copy, router init) is shared with BTX (``btx.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedModel
from transformers.initialization import no_init_weights

SUPPORTED_FOR_UPCYCLING: tuple[str, ...] = ("llama", "mistral")
"""``config.model_type`` values whose dense model maps exactly onto ``MixtralForCausalLM``."""

LOAD_BALANCING_COEF = 1e-2
"""``router_aux_loss_coef`` of the converted model (paper appendix B.1)."""

_WHY_NOT = {
    "qwen2": "its q/k/v projections have biases, which MixtralAttention does not support",
    "qwen3": "its attention has q/k RMSNorms, which MixtralAttention does not have",
    "gemma": "it scales embeddings, uses (1 + w) RMSNorm and GELU, unlike Mixtral",
    "gemma2": "it scales embeddings, uses (1 + w) RMSNorm, soft-capping and extra norms",
    "phi3": "its fused qkv/gate_up projections and partial RoPE are not Mixtral's layout",
    "gpt2": "it uses LayerNorm, learned positions and a non-gated GELU MLP (c_fc/c_proj)",
    "gpt_neox": "it uses LayerNorm, parallel residual, partial RoPE and a non-gated GELU MLP",
    "mixtral": "it is already a sparse MoE",
}

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_FFN = ("gate_proj", "up_proj", "down_proj")


def _arch(model: PreTrainedModel) -> str:
    return f"{getattr(model.config, 'model_type', '?')!r} ({type(model).__name__})"


def check_upcyclable(model: PreTrainedModel) -> None:
    """Raise ``ValueError`` (naming the architecture) unless ``model`` is a dense causal LM that
    ``MixtralForCausalLM`` reproduces exactly; checks the config and every decoder layer."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_FOR_UPCYCLING:
        why = _WHY_NOT.get(model_type, "it is not a known Llama-family (Mixtral-compatible) model")
        raise ValueError(
            f"cannot upcycle architecture {_arch(model)} to Mixtral: {why}; "
            f"supported model_type values: {', '.join(SUPPORTED_FOR_UPCYCLING)}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(cfg, flag, False):
            raise ValueError(f"cannot upcycle architecture {_arch(model)} to Mixtral: "
                             f"config.{flag}=True but Mixtral's projections have no bias")
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    head = getattr(model, "lm_head", None)
    if layers is None or not isinstance(head, nn.Linear) or head.bias is not None:
        raise ValueError(f"cannot upcycle architecture {_arch(model)}: expected a *ForCausalLM "
                         "with .model.layers and a bias-free .lm_head")
    for i, layer in enumerate(layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        for owner, names in ((attn, _ATTN), (mlp, _FFN)):
            for name in names:
                lin = getattr(owner, name, None)
                if not isinstance(lin, nn.Linear) or lin.bias is not None:
                    raise ValueError(
                        f"cannot upcycle architecture {_arch(model)}: layer {i} has no bias-free "
                        f"nn.Linear {name!r} (Mixtral needs q/k/v/o and gate/up/down SwiGLU)")
        if any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
            raise ValueError(f"cannot upcycle architecture {_arch(model)}: layer {i} attention "
                             "has q/k norms, which Mixtral lacks")


def _check_experts(num_experts: int, top_k: int) -> None:
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")


def mixtral_config_from_dense(config, num_experts: int, top_k: int) -> MixtralConfig:  # noqa: ANN001
    """The ``MixtralConfig`` with the dense (Llama/Mistral) config's shapes, RoPE, norm epsilon,
    vocabulary, special ids and tying, ``num_experts`` experts with top-``top_k`` routing and
    ``router_aux_loss_coef=1e-2``. ``output_router_logits`` stays ``False`` in the config: with
    ``True`` every cached ``generate()`` step given an attention mask crashes inside transformers'
    ``load_balancing_loss_func`` (one new token vs a full-length mask), so training passes
    ``output_router_logits=True`` per forward call, which adds ``1e-2 *`` the load-balancing loss
    to ``loss``. ``sliding_window`` is the dense model's (Mistral) or ``None`` (Llama)."""
    _check_experts(num_experts, top_k)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None)
    if rope is None:  # very old configs only carry rope_theta
        rope = {"rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0)}
    return MixtralConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None)
        or config.num_attention_heads,
        head_dim=head_dim,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=getattr(config, "initializer_range", 0.02),
        rms_norm_eps=config.rms_norm_eps,
        use_cache=getattr(config, "use_cache", True),
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        sliding_window=getattr(config, "sliding_window", None),
        attention_dropout=getattr(config, "attention_dropout", 0.0),
        rope_parameters=copy.deepcopy(dict(rope)),
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        output_router_logits=False,  # True breaks cached generate() with an attention mask
        router_aux_loss_coef=LOAD_BALANCING_COEF,
        router_jitter_noise=0.0,
    )


def dense_ffn(model: PreTrainedModel, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """The dense FFN weights ``(gate [I,H], up [I,H], down [H,I])`` of decoder layer ``layer``."""
    mlp = model.model.layers[layer].mlp
    return mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight


def non_ffn_state(model: PreTrainedModel) -> dict[str, Tensor]:
    """Every parameter outside the FFNs (embeddings, attention, norms, lm_head), by name; the
    names are the same in the dense model and in Mixtral."""
    return {k: v for k, v in model.state_dict().items() if ".mlp." not in k}


def build_mixtral(
    template: PreTrainedModel,
    non_ffn: Mapping[str, Tensor],
    expert_sources: Sequence[PreTrainedModel],
    top_k: int,
    router_std: float = 0.02,
    seed: int = 0,
) -> MixtralForCausalLM:
    """A Mixtral model shaped like ``template`` whose expert ``e`` of every layer is the FFN of
    ``expert_sources[e]`` and whose other weights come from ``non_ffn`` (dense parameter names).

    Expert layout (transformers 5 ``MixtralExperts``): ``gate_up_proj[e] = cat(gate, up)`` along
    the output dim (``[2I, H]``), ``down_proj[e] = down`` (``[H, I]``); ``MixtralExperts`` splits
    ``gate_up`` with ``chunk(2)`` into gate then up. Router weights ``[E, H]`` are drawn from
    N(0, router_std^2) with a generator seeded by ``seed``, layer by layer. The result has the
    template's dtype, device and attention implementation, and every weight is written (checked).
    When the hidden or intermediate row size is not a multiple of 16 bytes, the experts run the
    eager loop (grouped_mm would fail); a reloaded copy needs ``experts_implementation="eager"``.
    """
    for src in {id(s): s for s in expert_sources}.values():
        check_upcyclable(src)
    config = mixtral_config_from_dense(template.config, len(expert_sources), top_k)
    dtype = template.dtype
    device = next(template.parameters()).device
    with no_init_weights():  # every tensor is overwritten below
        moe = MixtralForCausalLM._from_config(
            config, dtype=dtype, attn_implementation=template.config._attn_implementation)
    moe.tie_weights()
    moe.to(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if (config.hidden_size * itemsize) % 16 or (config.intermediate_size * itemsize) % 16:
        # torch grouped_mm (transformers' default experts kernel) needs 16-byte aligned strides,
        # which odd toy sizes (e.g. stories260K's I=172 in bf16) violate
        moe.set_experts_implementation("eager")
    gen = torch.Generator().manual_seed(seed)
    written: set[str] = set()
    params = dict(moe.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for i in range(config.num_hidden_layers):
            prefix = f"model.layers.{i}.mlp"
            ffns = [dense_ffn(src, i) for src in expert_sources]
            params[f"{prefix}.experts.gate_up_proj"].copy_(
                torch.stack([torch.cat([g, u], dim=0) for g, u, _ in ffns]))
            params[f"{prefix}.experts.down_proj"].copy_(torch.stack([d for _, _, d in ffns]))
            router = torch.randn(config.num_local_experts, config.hidden_size, generator=gen)
            params[f"{prefix}.gate.weight"].copy_(router * router_std)
            written |= {f"{prefix}.experts.gate_up_proj", f"{prefix}.experts.down_proj",
                        f"{prefix}.gate.weight"}
        for name, param in params.items():
            if name in written:
                continue
            if name not in non_ffn:
                raise ValueError(f"no source weight for Mixtral parameter {name!r}")
            param.copy_(non_ffn[name])
            written.add(name)
    unused = set(non_ffn) - set(params)
    if unused:
        raise ValueError(f"dense weights without a Mixtral counterpart: {sorted(unused)[:5]}")
    moe.generation_config = copy.deepcopy(template.generation_config)
    return moe.train(template.training)


def upcycle_to_mixtral(
    model: PreTrainedModel,
    num_experts: int = 4,
    top_k: int = 2,
    router_std: float = 0.02,
    seed: int = 0,
) -> MixtralForCausalLM:
    """Sparse upcycling: a ``MixtralForCausalLM`` whose ``num_experts`` experts per layer are
    copies of the dense FFN, with top-``top_k`` routing and all non-FFN weights copied.

    Mixtral renormalises the top-k routing weights to sum to 1, so with identical experts the
    output equals the dense model's whatever the router does; ``router_std`` (default 0.02, the
    usual initializer range) only keeps the initial router logits small so routing starts near
    uniform and the experts can diverge smoothly. Called with ``labels`` and
    ``output_router_logits=True`` the model loss includes 1e-2 x the load-balancing loss; the
    router z-loss it does not (see ``moe_losses``).
    Raises ``ValueError`` for architectures that do not map exactly (see ``check_upcyclable``).
    """
    check_upcyclable(model)
    _check_experts(num_experts, top_k)
    return build_mixtral(model, non_ffn_state(model), [model] * num_experts, top_k,
                         router_std=router_std, seed=seed)


__all__ = [
    "LOAD_BALANCING_COEF",
    "SUPPORTED_FOR_UPCYCLING",
    "build_mixtral",
    "check_upcyclable",
    "dense_ffn",
    "mixtral_config_from_dense",
    "non_ffn_state",
    "upcycle_to_mixtral",
]
