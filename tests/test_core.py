"""The SIMoE core: exactness at init, the two-matmul layer math, gradients, save/load, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.pytorch_utils import Conv1D

from conftest import TINY_CONFIGS, tiny_model
from simoe import SIMoEConfig, SIMoEModel
from simoe.gates import init_mean
from simoe.layers import RoutingState, SIMoELinear, SIMoENorm

ARCHS = sorted(TINY_CONFIGS)


def _batch(vocab: int, seed: int = 1, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # the second row is left-padded
    return ids, mask


def _gate_kw(num_experts: int) -> dict:
    return {"num_experts": num_experts, "init_mean": init_mean(0.05), "noise_std": 0.01}


def _randomize(model: SIMoEModel, seed: int = 0, scale: float = 0.05) -> None:
    """Non-zero deltas, gates with exact zeros and ones, a non-trivial router."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, gd in model.gated_deltas():
            gd.delta.copy_(scale * torch.randn(gd.delta.shape, generator=g))
            gd.log_alpha.copy_(3.0 * torch.randn(gd.log_alpha.shape, generator=g))
        for p in model.router.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---------------------------------------------------------------- 1, 2: exact at init
@pytest.mark.parametrize("arch", ARCHS)
def test_init_reproduces_base_model(arch):
    base = tiny_model(arch)
    ids, mask = _batch(base.config.vocab_size)
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask).logits
    ref_gen = base.generate(ids[:1], max_new_tokens=8, do_sample=False)
    model = SIMoEModel.from_base(base, SIMoEConfig())
    kinds = {type(layer).__name__ for _, layer in model.simoe_layers()}
    assert kinds == {"SIMoELinear", "SIMoENorm"}, kinds
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    assert (out.logits - ref).abs().max().item() <= 1e-6
    assert torch.equal(model.generate(ids[:1], max_new_tokens=8, do_sample=False), ref_gen)
    assert out.alpha.shape == (2, 8)
    assert torch.allclose(out.alpha.sum(-1), torch.ones(2))


def test_init_reproduces_stories260k(stories):
    base, tok = stories
    enc = tok(["Once upon a time, there was", "The dog"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = base(**enc).logits
    prompt = tok("Once upon a time", return_tensors="pt")
    ref_gen = base.generate(**prompt, max_new_tokens=24, do_sample=False)
    model = SIMoEModel.from_base(base)
    with torch.no_grad():
        logits = model(**enc).logits
    assert torch.equal(logits, ref), (logits - ref).abs().max()
    gen = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    assert torch.equal(gen, ref_gen)
    assert "little girl" in tok.decode(gen[0])  # Karpathy's documented sample


# ---------------------------------------------------------------- 3: the layer math
def _explicit_linear(x, w_pre, b_pre, alpha, z_w, d_w, z_b, d_b):
    """fp64, one merged weight matrix per example: W_b = W_pre + sum_i alpha_bi z_i * delta."""
    ys = []
    for b in range(x.shape[0]):
        w = w_pre + sum(alpha[b, i] * z_w[i][None, :] * d_w for i in range(alpha.shape[1]))
        bias = b_pre + sum(alpha[b, i] * z_b[i] * d_b for i in range(alpha.shape[1]))
        ys.append(x[b] @ w.T + bias)
    return torch.stack(ys)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_two_matmul_linear_equals_merged_weights(kind):
    torch.manual_seed(0)
    base = nn.Linear(6, 5) if kind == "linear" else Conv1D(5, 6)
    nn.init.normal_(base.bias)
    state = RoutingState()
    layer = SIMoELinear(base, state, _gate_kw(3))
    with torch.no_grad():
        layer.weight_delta.delta.normal_()
        layer.weight_delta.log_alpha.normal_(0, 3)
        layer.bias_delta.delta.normal_()
        layer.bias_delta.log_alpha.normal_(0, 3)
    z_w = layer.weight_delta.gates()
    assert (z_w == 0).any() and (z_w == 1).any() and ((z_w > 0) & (z_w < 1)).any()
    state.alpha = torch.softmax(torch.randn(4, 3), -1)
    x = torch.randn(4, 7, 6)
    y = layer(x)
    w_pre = base.weight.T if kind == "conv1d" else base.weight
    ref = _explicit_linear(x.double(), w_pre.double(), base.bias.double(), state.alpha.double(),
                           z_w.double(), layer.weight_delta.delta.double(),
                           layer.bias_delta.gates().double(), layer.bias_delta.delta.double())
    assert torch.allclose(y.double(), ref, atol=1e-5, rtol=0)

    # Pruning drops columns physically; the output of columns with z = 0 everywhere is unchanged.
    with torch.no_grad():
        layer.weight_delta.log_alpha[:, :2] = -10.0
    before = layer(x)
    keep = (layer.weight_delta.gates() > 0).any(0)
    layer.weight_delta.keep_columns(keep)
    assert layer.weight_delta.num_live == int(keep.sum()) < 6
    assert torch.equal(layer.weight_delta.live_idx, keep.nonzero().flatten())
    assert torch.allclose(layer(x), before, atol=1e-6)


@pytest.mark.parametrize("norm_kind", ["layernorm", "llama_rmsnorm"])
def test_norm_scale_and_bias_equal_merged_per_example(norm_kind):
    torch.manual_seed(0)
    size, m = 8, 4
    base = nn.LayerNorm(size) if norm_kind == "layernorm" else LlamaRMSNorm(size)
    with torch.no_grad():
        base.weight.normal_()
        if norm_kind == "layernorm":
            base.bias.normal_()
    state = RoutingState()
    layer = SIMoENorm(base, state, _gate_kw(m))
    for gd in layer.gated_deltas().values():
        with torch.no_grad():
            gd.delta.normal_()
            gd.log_alpha.normal_(0, 3)
    state.alpha = torch.softmax(torch.randn(3, m), -1)
    x = torch.randn(3, 5, size)
    y = layer(x).double()
    xd, a = x.double(), state.alpha.double()
    wd = layer.weight_delta
    g = base.weight.double() + a @ wd.gates().double() * wd.delta.double()  # [B, size]
    if norm_kind == "layernorm":
        bd = layer.bias_delta
        bias = base.bias.double() + a @ bd.gates().double() * bd.delta.double()
        normed = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(
            xd.var(-1, unbiased=False, keepdim=True) + base.eps)
        ref = normed * g[:, None] + bias[:, None]
    else:
        normed = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + base.variance_epsilon)
        ref = normed * g[:, None]
    assert torch.allclose(y, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma"])
def test_merge_and_unload_equals_forward_at_alpha(arch, tmp_path):
    base = tiny_model(arch)
    ids, mask = _batch(base.config.vocab_size)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=4))
    _randomize(model)
    alpha = torch.tensor([0.1, 0.5, 0.15, 0.25])
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, alpha=alpha).logits
    dense = model.merge_and_unload(alpha)
    assert not any("delta" in n for n, _ in dense.named_parameters())
    with torch.no_grad():
        merged = dense(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(merged, ref, rtol=1e-5, atol=1e-5)
    dense.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(again, merged)


def test_merge_unties_a_targeted_tied_lm_head(stories):
    base, tok = stories
    assert base.get_input_embeddings().weight is base.get_output_embeddings().weight
    enc = tok(["Once upon a time"], return_tensors="pt")
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=2, target_lm_head=True,
                                                   target_embeddings=True))
    _randomize(model, scale=0.01)
    alpha = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        ref = model(**enc, alpha=alpha).logits
    dense = model.merge_and_unload(alpha)
    assert dense.config.tie_word_embeddings is False
    with torch.no_grad():
        assert torch.allclose(dense(**enc).logits, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- 4: gradients, frozen base
def test_gradients_reach_deltas_gates_router_and_base_stays_frozen():
    base = tiny_model("llama")
    ids, mask = _batch(base.config.vocab_size)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=4)).train()
    _randomize(model, scale=0.01)
    before = {n: p.detach().clone() for n, p in base.named_parameters() if "_delta." not in n}
    assert all(not p.requires_grad for n, p in base.named_parameters() if n in before)
    groups = model.parameter_groups(delta_lr=1e-3, gate_lr=1e-2, router_lr=1e-3)
    assert [g["name"] for g in groups] == ["deltas", "gates", "router"]
    opt = torch.optim.Adam(groups)
    out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    for g in groups:
        grads = [p.grad for p in g["params"]]
        assert all(gr is not None for gr in grads), g["name"]
        assert sum(gr.abs().sum().item() for gr in grads) > 0, g["name"]
    opt.step()
    for n, p in base.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), n
            assert p.grad is None, n


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        base = tiny_model("llama")
        ids, mask = _batch(base.config.vocab_size)
        model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=3)).train()
        _randomize(model, scale=0.01)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for g in model.parameter_groups(1, 1, 1)
                                for p in g["params"]]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------- 6: save / load
def test_save_load_round_trip_is_exact_and_pickle_free(tmp_path):
    base = tiny_model("qwen2")
    ids, mask = _batch(base.config.vocab_size)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=4))
    _randomize(model)
    model.prune()
    assert any(not gd.is_full for _, gd in model.gated_deltas())
    with torch.no_grad():
        ref = model(ids, attention_mask=mask)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["simoe_config.json",
                                                          "simoe_model.safetensors"]
    raw = (tmp_path / "simoe_model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])  # safetensors: a JSON header, then raw tensors
    assert all(k == "__metadata__" or set(v) == {"dtype", "shape", "data_offsets"}
               for k, v in header.items())
    with safe_open(tmp_path / "simoe_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert not any(".base_layer." in k for k in keys)  # SIMoE state only, never the base
    assert sum(f.numel() for f in model.simoe_state_dict().values()) < 2 * sum(
        p.numel() for p in base.parameters())
    loaded = SIMoEModel.from_pretrained(tmp_path, base_model=tiny_model("qwen2"))
    with torch.no_grad():
        out = loaded(ids, attention_mask=mask)
    assert torch.equal(out.logits, ref.logits)
    assert torch.equal(out.alpha, ref.alpha)


def test_from_pretrained_loads_the_named_base_model(stories, tmp_path):
    base, tok = stories
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=2))
    _randomize(model, scale=0.01)
    enc = tok(["Once upon a time"], return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "simoe_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(base.config._name_or_path)
    loaded = SIMoEModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, ref)


# ---------------------------------------------------------------- 7: routing position
def test_routing_positions_from_labels_and_masks():
    from simoe.router import routing_positions

    ids = torch.arange(12).reshape(2, 6)
    labels = torch.full((2, 6), -100)
    labels[0, 3:] = 7
    labels[1, 5] = 7
    assert routing_positions(ids, labels=labels).tolist() == [2, 4]
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert routing_positions(ids, attention_mask=right).tolist() == [3, 5]
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    assert routing_positions(ids, attention_mask=left).tolist() == [5, 5]
    no_labels = torch.full((2, 6), -100)
    assert routing_positions(ids, right, no_labels).tolist() == [3, 5]


def test_left_padded_prompt_routes_like_unpadded(stories):
    base, tok = stories
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=3))
    _randomize(model, scale=0.01)
    prompts = ["Once upon a time, there was a", "The cat"]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0
    batched = model.route(**enc)
    single = torch.cat([model.route(**tok([p], return_tensors="pt")) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-5)
    # With labels, the routing token is the last prompt token: routing the prompt alone agrees.
    tok.padding_side = "right"
    full = tok(["Once upon a time, there was a dog"], return_tensors="pt")
    n_prompt = len(tok("Once upon a time, there was a")["input_ids"])
    labels = full["input_ids"].clone()
    labels[:, :n_prompt] = -100
    assert torch.allclose(model.route(full["input_ids"], labels=labels), single[:1], atol=1e-5)


def test_routing_pass_stops_at_the_last_prompt_token(stories):
    """Training batches: right-padded prompt + completion. The routing pass runs only up to the
    longest prompt and still equals the base's hidden state at each routing token read from a
    pass over the whole sequence."""
    base, _ = stories
    reference = copy.deepcopy(base)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=3))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, base.config.vocab_size, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 10:] = 0  # right padding
    labels = ids.clone()
    labels[0, :5], labels[1, :7], labels[2, :4] = -100, -100, -100  # prompts of 5, 7, 4 tokens
    labels[mask == 0] = -100
    lengths = []
    hook = model.base_model.base_model.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        got = model.routing_embedding(ids, mask, labels=labels)
    finally:
        hook.remove()
    assert lengths == [7]  # the longest prompt, not the 12-token sequence
    with torch.no_grad():
        hidden = reference.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(got, hidden[torch.arange(3), torch.tensor([4, 6, 3])], atol=1e-5)


# ---------------------------------------------------------------- parameter counts
def test_parameter_counts_for_llama_3b_on_meta_device():
    cfg = LlamaConfig(vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                      num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                      head_dim=128, tie_word_embeddings=True)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(cfg)
    model = SIMoEModel.from_base(base, SIMoEConfig())
    counts = model.parameter_counts()
    h, i, layers, kv = 3072, 8192, 28, 8 * 128
    linear = layers * (h * h + 2 * h * kv + h * h + 3 * h * i)
    norms = layers * 2 * h + h
    assert counts["base"] == sum(p.numel() for p in base.parameters() if p.dim() > 0) - counts[
        "delta"] - counts["gates"]
    assert counts["delta"] == counts["targeted_base"] == linear + norms
    in_features = layers * (6 * h + i)  # q, k, v, o, gate, up read h; down reads i
    assert counts["gates"] == 8 * (in_features + norms)


# ---------------------------------------------------------------- 8: errors
@pytest.mark.parametrize("kwargs, field", [
    ({"num_experts": 0}, "num_experts"),
    ({"target_sparsity": 1.0}, "target_sparsity"),
    ({"target_sparsity": -0.1}, "target_sparsity"),
    ({"routing": "sentence"}, "routing"),
    ({"gate_mode": "soft"}, "gate_mode"),
    ({"init_drop_prob": 0.0}, "init_drop_prob"),
    ({"routing": "task"}, "num_tasks"),
    ({"exclude": ["("]}, "exclude"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SIMoEConfig(**kwargs)


def test_config_json_round_trip_and_unknown_field(tmp_path):
    cfg = SIMoEConfig(num_experts=4, target_sparsity=0.5, exclude=["lm_head"])
    cfg.save(tmp_path)
    assert SIMoEConfig.load(tmp_path) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        SIMoEConfig.from_dict({**cfg.to_dict(), "experts": 3})


def test_nothing_to_target_is_a_clear_error():
    with pytest.raises(ValueError, match="nothing to target"):
        SIMoEModel.from_base(tiny_model("llama"), SIMoEConfig(include=["no_such_module"]))


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported architecture"):
        SIMoEModel.from_base(nn.Sequential(nn.Linear(4, 4)), SIMoEConfig())


def test_loading_onto_a_base_model_of_another_shape_fails_clearly(tmp_path):
    model = SIMoEModel.from_base(tiny_model("llama"), SIMoEConfig(num_experts=2))
    model.save_pretrained(tmp_path)
    spec = dict(TINY_CONFIGS["llama"])
    spec.pop("model_type")
    spec["intermediate_size"] = 40
    other = AutoModelForCausalLM.from_config(LlamaConfig(**spec))
    with pytest.raises(ValueError, match="another shape"):
        SIMoEModel.from_pretrained(tmp_path, base_model=other)
    deeper = AutoModelForCausalLM.from_config(LlamaConfig(**{**spec, "intermediate_size": 48,
                                                             "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="another"):
        SIMoEModel.from_pretrained(tmp_path, base_model=deeper)


# ---------------------------------------------------------------- routing levels, dtypes
def test_token_routing_forward_and_generate_agree():
    base = tiny_model("llama")
    ids, _ = _batch(base.config.vocab_size)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=3, routing="token"))
    _randomize(model, scale=0.05)
    with torch.no_grad():
        out = model(ids[:1])
    assert out.alpha.shape == (1, ids.shape[1], 3)
    gen = model.generate(ids[:1], max_new_tokens=5, do_sample=False)
    # Greedy decoding must pick, at every step, the argmax of a full forward over the prefix.
    for t in range(ids.shape[1], gen.shape[1]):
        with torch.no_grad():
            logits = model(gen[:, :t]).logits
        assert logits[0, -1].argmax() == gen[0, t]


def test_token_routing_decodes_with_a_kv_cache_exactly():
    """Token routing with KV caches (the SIMoE model's and the routing pass's) gives the same
    scores as re-running both passes over the whole prefix at every step (left padding)."""
    base = tiny_model("llama")
    ids, mask = _batch(base.config.vocab_size)
    mask[0, :3] = 0  # left padding in the first row
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=3, routing="token"))
    _randomize(model, scale=0.05)
    seen = []
    model.base_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, output_scores=True,
              return_dict_in_generate=True)
    cached = model.generate(ids, **kw)
    assert seen[1:] == [1] * 5  # incremental: one new token per step
    full = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, full.sequences)
    for a, b in zip(cached.scores, full.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # Beam search reorders the model's cache: it decodes without one, as re-running does.
    kw.update(num_beams=2, output_scores=False)
    beams = model.generate(ids, **kw).sequences
    assert torch.equal(beams, model.generate(ids, use_cache=False, **kw).sequences)


def test_task_routing_uses_task_ids():
    base = tiny_model("llama")
    ids, mask = _batch(base.config.vocab_size)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=4, routing="task", num_tasks=5))
    out = model(ids, attention_mask=mask, task_ids=torch.tensor([0, 3]))
    assert torch.allclose(out.alpha, torch.softmax(model.router.logits.weight[[0, 3]], -1))
    with pytest.raises(ValueError, match="task_ids"):
        model(ids)


def test_stochastic_gates_sample_in_training_only():
    base = tiny_model("llama")
    ids, _ = _batch(base.config.vocab_size)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=2, gate_mode="stochastic"))
    _randomize(model, scale=0.05)
    with torch.no_grad():
        a, b = model(ids).logits, model(ids).logits
        assert torch.equal(a, b)  # eval: the deterministic median gate
        model.train()
        c, d = model(ids).logits, model(ids).logits
    assert not torch.equal(c, d)


def test_bf16_model_keeps_fp32_gates_and_tracks_fp32_forward():
    base = tiny_model("llama")
    ids, _ = _batch(base.config.vocab_size)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=2))
    _randomize(model, scale=0.05)
    with torch.no_grad():
        ref = model(ids).logits
        model.to(torch.bfloat16)
        low = model(ids).logits.float()
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for g in model.parameter_groups(1, 1, 1)
               for p in g["params"])
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_norm_delta_survives_a_bf16_model():
    base = LlamaRMSNorm(16).to(torch.bfloat16)
    state = RoutingState()
    layer = SIMoENorm(base, state, _gate_kw(2))
    state.alpha = torch.tensor([[0.5, 0.5]])
    x = torch.randn(1, 4, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        before = layer(x)
        layer.weight_delta.delta.fill_(1e-2)  # below bf16's resolution around a scale of 1
        after = layer(x)
    assert before.dtype == torch.bfloat16
    assert (after.float() - before.float()).abs().max() > 0


def test_norms_with_a_second_input_are_not_targeted():
    from simoe.layers import is_norm

    class GatedRMSNorm(nn.Module):  # the shape of Mamba2/Qwen3-Next gated norms
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

        def forward(self, x, gate):
            return x * self.weight * gate

    assert not is_norm(GatedRMSNorm())
    assert is_norm(LlamaRMSNorm(4)) and is_norm(nn.LayerNorm(4))
