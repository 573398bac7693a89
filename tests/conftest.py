"""Shared fixtures: tiny random models of several architectures and the real ../shared assets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STORIES = SHARED / "models" / "stories260K"
SNI_MINI = SHARED / "data" / "sni-mini"

needs_shared = pytest.mark.skipif(
    not STORIES.is_dir(),
    reason=f"../shared is absent ({SHARED}); real model and data tests skipped",
)

_COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=64,
               bos_token_id=1, eos_token_id=2)

TINY_CONFIGS = {
    "llama": dict(model_type="llama", num_key_value_heads=2, **_COMMON),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, **_COMMON),
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=None, **_COMMON),
    "gpt_neox": dict(model_type="gpt_neox", **_COMMON),
    "gpt2": dict(model_type="gpt2", vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                 n_inner=48, bos_token_id=1, eos_token_id=2),
    "phi3": dict(model_type="phi3", num_key_value_heads=2, pad_token_id=0, **_COMMON),
    "gemma": dict(model_type="gemma", num_key_value_heads=2, head_dim=8, **_COMMON),
    "qwen3": dict(model_type="qwen3", num_key_value_heads=2, head_dim=8, **_COMMON),
}


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny causal LM of the given architecture, fp32, eval mode."""
    spec = dict(TINY_CONFIGS[arch])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # non-trivial norm scales and biases, so every path is exercised
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def stories():
    """The real pre-trained stories260K Llama and its tokenizer (pad = eos)."""
    if not STORIES.is_dir():
        pytest.skip(f"../shared is absent ({SHARED})")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(STORIES)
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
    return model, tok
