"""Generic layer types for raw module/parameter names of any architecture.

    layer_type("model.layers.3.self_attn.q_proj.weight")      -> "q"
    layer_type("transformer.h.0.attn.c_attn.weight")           -> "qkv"    (GPT-2, fused)
    layer_type("transformer.h.0.attn.c_proj.weight")           -> "o"
    layer_type("transformer.h.0.mlp.c_proj.weight")            -> "down"
    layer_type("gpt_neox.layers.0.mlp.dense_h_to_4h.bias")     -> "up"
    layer_type("model.layers.0.mlp.gate_up_proj.weight")       -> "gate_up" (Phi-3, fused)
    layer_type("model.norm.weight")                            -> "norm"

The rules look at the last module name (``leaf``) and, where a leaf means different things in
different blocks (GPT-2 ``c_proj``, T5-style ``wo``, a bare ``dense``), at the enclosing blocks
(attention vs MLP). :func:`classify` keeps the raw name, the leaf, the parameter ('weight',
'bias') and the block index, so nothing is lost by the grouping.

A bare leaf without context (e.g. the keys of ``final_stats.json``'s ``kept_capacity.by_type``,
which are leaf names) is classified as well as it can be; the one leaf that is genuinely
ambiguous without context, GPT-2's ``c_proj``, maps to ``"o+down"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Generic types in display order: attention, MLP, the rest.
GENERIC_TYPES: tuple[str, ...] = (
    "q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down", "o+down", "router", "norm",
    "embed", "lm_head", "other",
)

_PARAM_NAMES = ("weight", "bias")
_DEPTH = re.compile(r"\.(\d+)(?:\.|$)")

# Leaves whose meaning never depends on the enclosing block.
_EXACT: dict[str, str] = {}
for _type, _leaves in {
    "q": ("q_proj", "query", "q", "wq", "q_lin", "query_proj"),
    "k": ("k_proj", "key", "k", "wk", "k_lin", "key_proj"),
    "v": ("v_proj", "value", "v", "wv", "v_lin", "value_proj"),
    "qkv": ("qkv_proj", "c_attn", "query_key_value", "wqkv", "qkv", "in_proj", "att_proj",
            "qkv_lin"),
    "o": ("o_proj", "out_proj", "attn_out", "out_lin", "dense"),
    "gate": ("gate_proj", "w1", "wi_0", "gate_lin"),
    "up": ("up_proj", "c_fc", "fc1", "fc_in", "dense_h_to_4h", "w3", "wi_1", "wi", "w_in",
           "lin1"),
    "gate_up": ("gate_up_proj", "w12"),
    "down": ("down_proj", "fc2", "fc_out", "dense_4h_to_h", "w2", "w_out", "lin2"),
    "router": ("router", "router_proj"),
    "embed": ("embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "tok_embeddings",
              "position_embeddings", "embed_positions", "embeddings", "token_embedding"),
    "lm_head": ("lm_head", "embed_out"),
}.items():
    for _leaf in _leaves:
        _EXACT[_leaf] = _type

_LOOSE = {"gate_up": "gate_up", "qkv": "qkv", "q_proj": "q", "k_proj": "k", "v_proj": "v",
          "o_proj": "o", "out_proj": "o", "gate_proj": "gate", "up_proj": "up",
          "down_proj": "down"}
_ATTN_CONTEXT = re.compile(r"attn|attention")
_MLP_CONTEXT = re.compile(r"mlp|ffn|feed_forward|feedforward|densereludense|moe|experts")
_NORM_LEAF = re.compile(r"norm|^ln(_|\d|$)|layernorm|^rms")


@dataclass(frozen=True)
class LayerName:
    """A raw parameter (or module) name and what it is."""

    name: str
    """The raw name as given, e.g. 'model.layers.3.self_attn.q_proj.weight'."""
    module: str
    """The module part, e.g. 'model.layers.3.self_attn.q_proj'."""
    leaf: str
    """The last module name, e.g. 'q_proj'."""
    param: str | None
    """'weight', 'bias' or None when a module name was given."""
    depth: int | None
    """The block index (first integer component), None outside the blocks."""
    generic: str
    """The generic type, one of :data:`GENERIC_TYPES`."""


def split_name(name: str) -> tuple[str, str | None]:
    """'a.b.q_proj.weight' -> ('a.b.q_proj', 'weight'); a module name -> (name, None).
    Also accepts the leaf-with-suffix keys of final_stats.json ('c_attn.bias')."""
    module, _, last = name.rpartition(".")
    if module and last in _PARAM_NAMES:
        return module, last
    return name, None


def layer_depth(name: str) -> int | None:
    """The block index in the name (its first integer component), None outside the blocks."""
    match = _DEPTH.search(name)
    return int(match.group(1)) if match else None


def _generic(parts: list[str]) -> str:
    leaf = parts[-1].lower() if parts else ""
    context = ".".join(parts[:-1]).lower()
    in_attn = bool(_ATTN_CONTEXT.search(context))
    in_mlp = bool(_MLP_CONTEXT.search(context))
    if _NORM_LEAF.search(leaf):
        return "norm"
    if leaf in ("c_proj", "proj", "wo", "out", "output"):
        if in_mlp:
            return "down"
        if in_attn:
            return "o"
        if leaf == "output" and not context.strip("."):  # original Llama's top-level LM head
            return "lm_head"
        return "o+down" if leaf == "c_proj" else ("o" if leaf == "wo" else "other")
    if leaf == "gate":  # an MoE router ('block_sparse_moe.gate') or a gate projection
        return "router" if re.search(r"moe|sparse|experts", context) else "gate"
    if leaf == "dense" and in_mlp:
        return "other"  # an MLP's bare 'dense' is up or down depending on the model
    if leaf in _EXACT:
        return _EXACT[leaf]
    # Looser matches: a known leaf inside a longer name ('self_q_proj', 'attn_qkv_proj', ...).
    for key, generic in _LOOSE.items():
        if key in leaf:
            return generic
    if "embed" in leaf:
        return "embed"
    if "head" in leaf and not in_attn:
        return "lm_head"
    return "other"


def classify(name: str) -> LayerName:
    """Everything :mod:`simoe.analysis` needs to know about a raw parameter/module name."""
    module, param = split_name(name)
    parts = [p for p in module.split(".") if p and not p.isdigit()]
    return LayerName(name=name, module=module, leaf=parts[-1] if parts else module, param=param,
                     depth=layer_depth(module), generic=_generic(parts))


def layer_type(name: str) -> str:
    """The generic type of a raw parameter or module name (see the module docstring)."""
    return classify(name).generic


def type_order(types: list[str] | set[str] | tuple[str, ...]) -> list[str]:
    """``types`` sorted in :data:`GENERIC_TYPES` order (unknown ones last, alphabetically)."""
    rank = {t: i for i, t in enumerate(GENERIC_TYPES)}
    return sorted(set(types), key=lambda t: (rank.get(t, len(rank)), t))
