"""Frozen inference (eval, no grad) memoises each layer's m = alpha @ Z and delta per alpha:
the same numbers as the autograd path and as each row's explicitly merged fp64 model; a new
alpha or an updated parameter is never served from the memo; batched decoding with a
different alpha per row equals decoding each row alone with its merged model."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_model
from simoe import SIMoEConfig, SIMoEModel


def _trained_like(arch: str, seed: int = 0) -> SIMoEModel:
    """A SIMoE model with non-zero deltas, gates with exact zeros and ones, pruned columns."""
    model = SIMoEModel.from_base(tiny_model(arch), SIMoEConfig(num_experts=4)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, gd in model.gated_deltas():
            gd.delta.copy_(0.05 * torch.randn(gd.delta.shape, generator=g))
            gd.log_alpha.copy_(3.0 * torch.randn(gd.log_alpha.shape, generator=g))
            gd.log_alpha[:, ::3] = -20.0  # a third of the columns dead for every expert
    model.prune()
    assert any(not gd.is_full for _, gd in model.gated_deltas())
    return model


def _alphas(batch: int, experts: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2.0 * torch.randn(batch, experts, generator=g), dim=-1)


def _ids(vocab: int, batch: int = 3, length: int = 7) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(2))


def _merged_fp64_logits(model: SIMoEModel, ids: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(ids.shape[0]):
        dense = model.merged_model(alpha[i]).double()
        with torch.no_grad():
            rows.append(dense(input_ids=ids[i:i + 1]).logits)
    return torch.cat(rows).float()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_inference_path_equals_autograd_path_and_merged_weights(arch):
    model = _trained_like(arch)
    ids = _ids(model.config.vocab_size)
    alpha = _alphas(ids.shape[0], 4)
    with torch.no_grad():
        memo = model(ids, alpha=alpha).logits
        again = model(ids, alpha=alpha).logits  # served from the memo
    assert model.state._memo, "frozen inference did not memoise"
    with torch.enable_grad():
        ref = model(ids, alpha=alpha).logits  # the autograd path (GatedDeltaLinear)
    assert not model.state._memo  # setting alpha cleared it
    assert torch.allclose(memo, ref, atol=1e-5, rtol=0)
    assert torch.equal(memo, again)
    assert torch.allclose(memo, _merged_fp64_logits(model, ids, alpha), atol=1e-4, rtol=0)


def test_new_alpha_or_updated_parameter_is_not_served_from_the_memo():
    model = _trained_like("llama")
    ids = _ids(model.config.vocab_size)
    a1, a2 = _alphas(3, 4, seed=1), _alphas(3, 4, seed=5)
    with torch.no_grad():
        model(ids, alpha=a1)
        out2 = model(ids, alpha=a2).logits
        fresh = copy.deepcopy(model)
        assert torch.allclose(out2, fresh(ids, alpha=a2).logits, atol=1e-6, rtol=0)
        # Same alpha, parameters updated in place (an optimiser step between two evaluations).
        model.state.alpha = a2
        before = model.base_model(input_ids=ids).logits
        for _, gd in model.gated_deltas():
            gd.delta.mul_(3.0)
        after = model.base_model(input_ids=ids).logits
        assert not torch.allclose(before, after, atol=1e-4)
        fresh = copy.deepcopy(model)
        assert torch.allclose(after, fresh(ids, alpha=a2).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_generate_with_an_alpha_per_row_equals_each_row_merged_alone(arch):
    model = _trained_like(arch, seed=3)
    rows, experts = 4, 4
    ids = _ids(model.config.vocab_size, batch=rows, length=6)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in one row
    mask[3, :1] = 0
    alpha = torch.eye(experts)[:rows] * 0.7 + 0.3 / experts  # distinct per row
    kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    batched = model.generate(ids, attention_mask=mask, alpha=alpha, **kw)
    for i in range(rows):
        keep = mask[i].bool()
        dense = model.merged_model(alpha[i])
        alone = dense.generate(ids[i:i + 1, keep], attention_mask=mask[i:i + 1, keep], **kw)
        assert torch.equal(batched[i, -kw["max_new_tokens"]:], alone[0, -kw["max_new_tokens"]:]), i
